// Real devices for the specs: the official Alibaba Cloud IoT device SDK for Node.js
// (emulator/device-sdk, installed by its install.sh), connected to the emulator's broker.
//
//   node spec/support/node_device.js '<JSON>'
//   { "brokerUrl": "mqtt://127.0.0.1:<port>", "keepalive": 60,
//     "devices": [ { "productKey", "deviceName", "deviceSecret", "clientId" (optional),
//                    "answer": "echo" | "upper" | "none" | "exit",
//                    "topic": "/<pk>/<dn>/user/<name>" (optional: the custom RRpc topic),
//                    "subscribe": [ "<topic for Pub>", ... ] } ] }
//
// Each RRpc request is answered on its response topic ("echo": the same bytes, "upper":
// ASCII upper case, "none": never, "exit": the process exits at once, unanswered). Lines on
// standard output, one per event: "ready <dn>" once its own subscriptions are acknowledged,
// "request <dn> <topic> <hex>", "message <dn> <topic> <hex>" (anything else), "refused <dn>
// <error>" (the broker refused the connection), "close <dn>". It runs until it is stopped
// (spec/support/mqtt_devices.lua sends SIGTERM by its PID).
'use strict';

const path = require('path');
const iot = require(path.join(__dirname, '../../emulator/device-sdk/node_modules/alibabacloud-iot-device-sdk'));

const config = JSON.parse(process.argv[2]);

function say(...words) {
  process.stdout.write(words.join(' ') + '\n');
}

function start(spec) {
  const dn = spec.deviceName;
  const device = iot.device({
    productKey: spec.productKey,
    deviceName: dn,
    deviceSecret: spec.deviceSecret,
    clientId: spec.clientId,
    brokerUrl: config.brokerUrl,
    keepalive: config.keepalive || 60,
  });
  const requests = '/sys/' + spec.productKey + '/' + dn + '/rrpc/request/';
  const custom = spec.topic ? new RegExp('^/ext/rrpc/\\d+' + spec.topic.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '$') : null;
  device._mqttClient.options.reconnectPeriod = 0; // a refused device stays refused
  device.on('connect', () => {
    // the SDK subscribes to its request topic itself; these come after it, so their
    // acknowledgement means the broker has that one too
    const filters = (spec.subscribe || []).slice();
    if (spec.topic) filters.push('/ext/rrpc/+' + spec.topic);
    filters.push(requests + '+');
    device.subscribe(filters, { qos: 1 }, (err, granted) => {
      if (err) return say('refused', dn, err.message);
      const refused = granted.filter((g) => g.qos === 128).map((g) => g.topic);
      say('ready', dn, refused.length ? 'refused:' + refused.join(',') : '');
    });
  });
  device.on('error', (err) => say('refused', dn, String(err && err.message).replace(/\s+/g, '_')));
  device.on('close', () => say('close', dn));
  device.on('message', (topic, payload) => {
    const isCustom = custom !== null && custom.test(topic);
    const isRequest = isCustom || topic.startsWith(requests);
    say(isRequest ? 'request' : 'message', dn, topic, payload.toString('hex'));
    if (!isRequest) return;
    if (spec.answer === 'exit') process.exit(3);
    if (spec.answer === 'none') return;
    const answer = spec.answer === 'upper' ? Buffer.from(payload.toString('latin1').toUpperCase(), 'latin1') : payload;
    // a custom topic's answer goes on the request's own topic
    device.publish(isCustom ? topic : topic.replace('/rrpc/request/', '/rrpc/response/'), answer);
  });
}

config.devices.forEach(start);
