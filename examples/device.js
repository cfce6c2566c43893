// A device of the official Alibaba Cloud IoT device SDK for Node.js that answers RRpc
// requests (in upper case) on the emulator's MQTT broker (emulator/run --mqtt-port PORT).
//   emulator/device-sdk/install.sh     # once: the SDK, pinned, into emulator/device-sdk
//   node examples/device.js <ProductKey> <DeviceName> <DeviceSecret> [mqtt://127.0.0.1:1883]
'use strict';
const path = require('path');
const iot = require(path.join(__dirname, '../emulator/device-sdk/node_modules/alibabacloud-iot-device-sdk'));

const [productKey, deviceName, deviceSecret, brokerUrl = 'mqtt://127.0.0.1:1883'] = process.argv.slice(2);
const device = iot.device({ productKey, deviceName, deviceSecret, brokerUrl });

device.on('connect', () => console.log(`${deviceName} connected to ${brokerUrl}`));
device.on('error', (err) => console.error(`${deviceName}: ${err.message}`));
// the SDK subscribes to /sys/<pk>/<dn>/rrpc/request/+ itself; answer on .../rrpc/response/<id>
device.on('message', (topic, payload) => {
  if (!/\/rrpc\/request\/\d+$/.test(topic)) return;
  console.log(`request ${topic.split('/').pop()}: ${payload}`);
  device.publish(topic.replace('/rrpc/request/', '/rrpc/response/'), payload.toString('latin1').toUpperCase());
});
