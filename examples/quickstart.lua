-- One RRpc call: send bytes to a device and print its reply.
--
-- Against the local emulator:   make demo
-- Against the real platform:
--   ALIBABA_CLOUD_ACCESS_KEY_ID=... ALIBABA_CLOUD_ACCESS_KEY_SECRET=... RRPC_REGION=cn-shanghai \
--   [RRPC_IOT_INSTANCE_ID=iot-...] lua5.4 examples/quickstart.lua <product_key> <device_name> [payload]
local rrpc = require "rrpc"

local product_key, device_name = arg[1], arg[2]
local payload = arg[3] or "hello, device"
local key_id = os.getenv("ALIBABA_CLOUD_ACCESS_KEY_ID")
local secret = os.getenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
if not (product_key and device_name and key_id and secret) then
  io.stderr:write("usage: ALIBABA_CLOUD_ACCESS_KEY_ID=... ALIBABA_CLOUD_ACCESS_KEY_SECRET=... ",
                  "lua5.4 examples/quickstart.lua <product_key> <device_name> [payload]\n")
  os.exit(2)
end

local client = rrpc.new {
  access_key_id = key_id,
  access_key_secret = secret,
  region = os.getenv("RRPC_REGION"),           -- default cn-shanghai
  endpoint = os.getenv("RRPC_ENDPOINT"),       -- e.g. http://127.0.0.1:8080 (the emulator)
  iot_instance_id = os.getenv("RRPC_IOT_INSTANCE_ID"),
}

local res, err = client:rrpc {
  product_key = product_key,
  device_name = device_name,
  payload = payload,
  timeout = 5000,
}
client:close()

if not res then
  io.stderr:write(tostring(err), "\n")
  if err.kind == "device" then
    io.stderr:write("the device did not answer (", err.rrpc_code, "); delivered: ", err.delivered, "\n")
  elseif err.retryable then
    io.stderr:write("nothing reached the device; the call can be sent again\n")
  end
  os.exit(1)
end

print(("%s/%s replied: %s"):format(product_key, device_name, res.payload))
print(("MessageId %s  RequestId %s"):format(res.message_id, res.request_id))
