-- What the simulated devices do with an RRpc request once the platform has
-- accepted it: one function per registry `behaviour`, optionally delayed by a
-- `latency` distribution and replaced at random by a fault (`fault_rate`). A device with
-- behaviour `mqtt` is a real client of the emulator's broker (broker.lua).
local broker = require "rrpc_emulator.broker"
local hostile = require "rrpc_emulator.hostile"
local latency = require "rrpc_emulator.latency"
local reply = require "rrpc_emulator.reply"

local reject = reply.reject

local devices = {}

devices.transforms = {
  upper = string.upper,
  reverse = string.reverse,
}

-- Behaviours whose answer is a device state, which `error_style` can turn
-- into the platform's other form (Success:false, Code iot.messagebroker.<STATE>).
devices.state_behaviours = { slow = true, offline = true, halfconn = true, silent = true, mqtt = true }

-- Behaviours that set their own timing, so a `latency` would only add to it.
devices.timed_behaviours = { slow = true, silent = true, hang = true }

-- Platform-side failures a device's `faults` list may name, the hostile ones included.
devices.fault_behaviours = {
  internal_error = true, unavailable = true, throttled = true, ratelimit = true,
  reset = true, html502 = true, system_error = true,
}
for name in pairs(hostile.faults) do
  devices.fault_behaviours[name] = true
end
devices.default_faults = { "internal_error", "unavailable", "reset" }

local STATE_MESSAGES = {
  OFFLINE = "The device is offline.",
  HALFCONN = "The device is offline within a heartbeat interval.",
  TIMEOUT = "The device did not answer within the timeout.",
  UNKNOWN = "A system error occurred while sending the request to the device.",
}

local HTML_502 = [[<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>Tengine</center>
</body>
</html>
]]

local function sleep_ms(ms)
  ngx.sleep(ms / 1000) -- yields to nginx: other requests go on meanwhile
end

local success = reply.success

-- A device state; `message_id` nil for none (OFFLINE).
local function state(device, rrpc_code, message_id)
  if device.error_style then
    reject(200, "iot.messagebroker." .. rrpc_code, STATE_MESSAGES[rrpc_code])
  end
  return reply.json({ Success = true, RrpcCode = rrpc_code }, rrpc_code, message_id)
end

-- Waits `delay_ms`; a device later than the request's Timeout gets the
-- platform's TIMEOUT answer after Timeout ms instead (returned, else nil).
local function wait(device, delay_ms, timeout_ms)
  if delay_ms >= timeout_ms then
    sleep_ms(timeout_ms)
    return state(device, "TIMEOUT", reply.next_message_id())
  end
  sleep_ms(delay_ms)
end

-- Each behaviour gets (device, request_bytes, timeout_ms, call) and returns an outcome or
-- throws a rejection; `call` is { product_key, device_name, topic (the custom Topic or nil) }.
devices.behaviours = {
  echo = function(_, request)
    return success(request)
  end,
  transform = function(device, request)
    return success(devices.transforms[device.transform](request))
  end,
  slow = function(device, request, timeout_ms)
    return wait(device, device.latency_ms, timeout_ms) or success(request)
  end,
  offline = function(device)
    return state(device, "OFFLINE")
  end,
  halfconn = function(device)
    return state(device, "HALFCONN", reply.next_message_id())
  end,
  silent = function(device, _, timeout_ms)
    sleep_ms(timeout_ms)
    return state(device, "TIMEOUT", reply.next_message_id())
  end,
  unknown = function(device)
    return state(device, "UNKNOWN", reply.next_message_id())
  end,
  -- Whatever client is connected as the device answers; without --mqtt-port none can be.
  mqtt = function(device, request, timeout_ms, call)
    if not broker.enabled() then
      return state(device, "OFFLINE")
    end
    local code, message_id, answer = broker.rrpc(call.product_key, call.device_name, call.topic, request, timeout_ms)
    if code == "SUCCESS" then
      return success(answer, message_id)
    end
    return state(device, code, message_id)
  end,
  throttled = function()
    reply.reject_throttled(1000)
  end,
  ratelimit = function()
    reject(200, "iot.messagebroker.RateLimit", "The request rate exceeds the limit.")
  end,
  system_error = function()
    reject(200, "iot.system.SystemException", "A system exception occurred.")
  end,
  internal_error = function()
    reject(500, "InternalError", "The request processing has failed due to some unknown error.")
  end,
  unavailable = function()
    reject(503, "ServiceUnavailable", "The request has failed due to a temporary failure of the server.")
  end,
  html502 = function()
    return reply.html(502, HTML_502, "html502")
  end,
  reset = function()
    return reply.close("reset")
  end,
  hang = function(_, _, timeout_ms)
    -- Longer than any sane client timeout; the client is expected to give up first.
    sleep_ms(timeout_ms + 60000)
    return reply.close("hang")
  end,
}
for name, behaviour in pairs(hostile.behaviours) do
  devices.behaviours[name] = behaviour
end

-- The latency comes first, so a fault arrives after it too.
function devices.answer(device, request, timeout_ms, call)
  if device.latency then
    local timed_out = wait(device, latency.draw(device.latency), timeout_ms)
    if timed_out then
      return timed_out
    end
  end
  local behaviour = device.behaviour
  if device.fault_rate and math.random() < device.fault_rate then
    local faults = device.faults or devices.default_faults
    behaviour = faults[math.random(#faults)]
  end
  return devices.behaviours[behaviour](device, request, timeout_ms, call)
end

return devices
