-- The API actions the emulator implements, keyed by Action name. Each gets the
-- merged API parameters and the registry and returns an outcome (reply.lua).
local broker = require "rrpc_emulator.broker"
local devices = require "rrpc_emulator.devices"
local reply = require "rrpc_emulator.reply"

local reject = reply.reject

-- Business errors come with HTTP 200 and Success:false on the platform.
local function refuse(code, message)
  reject(200, code, message)
end

local function require_params(params, names)
  for _, name in ipairs(names) do
    if params[name] == nil then
      reply.reject_missing(name)
    end
  end
end

local function parse_timeout(text)
  local timeout_ms = text:find("^%d+$") and tonumber(text)
  if not timeout_ms or timeout_ms < 1000 or timeout_ms > 8000 then
    refuse("iot.messagebroker.InvalidTimeoutValue", "The timeout must be an integer from 1000 to 8000 milliseconds.")
  end
  return timeout_ms
end

-- The platform's MQTT message limit, on the decoded bytes.
local MAX_CONTENT_BYTES = 256 * 1024

-- Strict standard Base64: the alphabet, a length that is a multiple of 4 and
-- "=" padding only at the end.
local function decode_content(text)
  if text == "" then
    refuse("iot.messagebroker.NullMessageContent", "The message content is empty.")
  end
  local bytes = #text % 4 == 0 and text:find("^[A-Za-z0-9+/]*=?=?$") and ngx.decode_base64(text)
  if not bytes then
    refuse("iot.messagebroker.MessageContentIsNotBase64Encode", "The message content is not Base64-encoded.")
  end
  if #bytes > MAX_CONTENT_BYTES then
    refuse("iot.messagebroker.MessageContentIsTooLarge",
      "The message content is " .. #bytes .. " bytes once decoded, more than 262144 (256 KB).")
  end
  return bytes
end

-- A topic is printable ASCII without the MQTT wildcards + and #, at most 1024 bytes (it
-- goes to the broker as it is).
local MAX_TOPIC_BYTES = 1024

local function check_topic(topic, prefix, format)
  if #topic <= #prefix or #topic > MAX_TOPIC_BYTES or topic:sub(1, #prefix) ~= prefix
     or topic:find("[^\33-\126]") or topic:find("[+#]") then
    refuse("iot.messagebroker.InvalidFormattedTopicName", "The topic must be " .. format
      .. ": printable ASCII without + and #, at most " .. MAX_TOPIC_BYTES .. " bytes.")
  end
end

-- Products of an instance are only found with its IotInstanceId; products of
-- the legacy public instance only without one.
local function find_product(registry, params)
  local instance_id = params.IotInstanceId
  if instance_id == "" then
    instance_id = nil
  end
  if instance_id and not registry.instances[instance_id] then
    refuse("iot.system.InstanceNotFound", "The specified instance does not exist.")
  end
  local product = registry.products[params.ProductKey]
  if not product or product.instance_id ~= instance_id then
    refuse("iot.prod.NotExistedProduct", "The specified product does not exist.")
  end
  return product
end

local actions = {}

function actions.RRpc(params, registry)
  require_params(params, { "ProductKey", "DeviceName", "RequestBase64Byte", "Timeout" })
  local product_key, device_name = params.ProductKey, params.DeviceName
  local timeout_ms = parse_timeout(params.Timeout)
  local request = decode_content(params.RequestBase64Byte)
  local topic = params.Topic
  if topic == "" then
    topic = nil
  end
  if topic then
    check_topic(topic, "/" .. product_key .. "/" .. device_name .. "/user/", "/<ProductKey>/<DeviceName>/user/<name>")
  end
  local device = find_product(registry, params).devices[device_name]
  if not device then
    refuse("iot.device.NotExistedDevice", "The specified device does not exist.")
  end
  if device.active == false then
    refuse("iot.device.InactiveDevice", "The specified device is inactive.")
  end
  return devices.answer(device, request, timeout_ms,
    { product_key = product_key, device_name = device_name, topic = topic })
end

-- With --mqtt-port the message goes to the broker on TopicFullName, with the Qos asked
-- for (1, else 0), to whichever client subscribes to it.
function actions.Pub(params, registry)
  require_params(params, { "ProductKey", "TopicFullName", "MessageContent" })
  local bytes = decode_content(params.MessageContent)
  check_topic(params.TopicFullName, "/" .. params.ProductKey .. "/", "/<ProductKey>/...")
  find_product(registry, params)
  if broker.enabled() then
    local sent = broker.publish(params.TopicFullName, bytes, params.Qos == "1" and 1 or 0)
    if not sent then
      refuse("iot.messagebroker.PublishMessageFailed", "Failed to publish the message: the broker is not reachable.")
    end
  end
  return reply.json({ Success = true }, "SUCCESS", reply.next_message_id())
end

return actions
