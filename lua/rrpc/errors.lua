-- One error shape for every failure a call can return (bad arguments raise instead):
--   { kind = "invalid" | "network" | "http" | "api" | "device", code, message, request_id,
--     status, rrpc_code, message_id, retryable, delivered = "no" | "maybe", retry_after }
-- `delivered` says whether the device may have received the message; `retryable` says
-- whether the same call can be sent again without risking a second delivery.

local errors = {}

local Error = {}
Error.__index = Error

function Error.__tostring(e)
  local where = {}
  if e.status then where[#where + 1] = "HTTP " .. e.status end
  if e.request_id then where[#where + 1] = "RequestId " .. e.request_id end
  if e.message_id then where[#where + 1] = "MessageId " .. e.message_id end
  where[#where + 1] = "delivered: " .. e.delivered
  if e.retryable then where[#where + 1] = "retryable" end
  return ("rrpc %s error %s: %s (%s)"):format(e.kind, e.code, e.message, table.concat(where, ", "))
end

-- Device states the platform reports either as RrpcCode or as an error code.
local DEVICE_STATE_CODES = {
  ["iot.messagebroker.OFFLINE"] = "OFFLINE",
  ["iot.messagebroker.HALFCONN"] = "HALFCONN",
  ["iot.messagebroker.TIMEOUT"] = "TIMEOUT",
}

-- OFFLINE: the platform had nowhere to send it. HALFCONN, TIMEOUT, UNKNOWN: it may have
-- been written to the device's connection.
local DEVICE_DELIVERED = { OFFLINE = "no", HALFCONN = "maybe", TIMEOUT = "maybe", UNKNOWN = "maybe" }

local DEVICE_MESSAGES = {
  OFFLINE = "device is offline",
  HALFCONN = "device connection is half-open (disconnected within a heartbeat period)",
  TIMEOUT = "device did not reply within the timeout",
  UNKNOWN = "platform reported an unknown error for the device",
}

-- Rejected before anything was sent to the device, and worth sending again later.
local RETRYABLE_CODES = {
  ServiceUnavailable = true,
  ["iot.messagebroker.RateLimit"] = true,
}

-- Failures inside the platform after it may have forwarded the message.
-- SignatureNonceUsed is among them: every request of ours draws a fresh nonce, so the
-- platform has seen this very request before. That happens when libcurl resends a request
-- whose kept-alive connection closed without an answer, and the first copy may have
-- been processed.
local MAYBE_DELIVERED_CODES = {
  SignatureNonceUsed = true,
  InternalError = true,
  UnknownError = true,
  ["iot.system.SystemException"] = true,
  ["iot.messagebroker.RrpcException"] = true,
  ["iot.messagebroker.RrpcFailed"] = true,
}

-- The platform found the request's parameters malformed.
local INVALID_CODES = {
  ["iot.messagebroker.InvalidTimeoutValue"] = true,
  ["iot.messagebroker.MessageContentIsNotBase64Encode"] = true,
  ["iot.messagebroker.NullMessageContent"] = true,
  ["iot.messagebroker.InvalidFormattedTopicName"] = true,
  ["iot.common.InvalidParameter"] = true,
}

local function is_invalid_code(code)
  return INVALID_CODES[code] or code:find("^Missing") ~= nil or code:find("^InvalidParameter") ~= nil
end

local function scrub(text, secret)
  if secret and secret ~= "" and text:find(secret, 1, true) then
    local parts, from = {}, 1
    while true do
      local i, j = text:find(secret, from, true)
      if not i then break end
      parts[#parts + 1] = text:sub(from, i - 1)
      from = j + 1
    end
    parts[#parts + 1] = text:sub(from)
    text = table.concat(parts, "***")
  end
  return text
end

function errors.new(fields, secret)
  fields.message = scrub(fields.message or fields.code, secret)
  fields.retryable = fields.retryable == true
  fields.delivered = fields.delivered or "maybe"
  return setmetatable(fields, Error)
end

function errors.is_error(value)
  return getmetatable(value) == Error
end

-- A failure of the transport (libcurl). `sent`: the request may have left this machine.
function errors.network(code, message, sent)
  return errors.new {
    kind = "network", code = code, message = message,
    delivered = sent and "maybe" or "no",
    retryable = not sent,
  }
end

-- An answer that is not the platform's: judged by its status alone.
local function http_error(code, status, message, request_id, message_id)
  local rejected = status >= 400 and status < 500 -- turned away before any processing
  return errors.new {
    kind = "http", code = code, status = status, message = message,
    request_id = request_id, message_id = message_id,
    delivered = (rejected or status == 503) and "no" or "maybe",
    retryable = status == 503 or status == 429,
  }
end

-- A response that is not the platform's JSON (an HTML 502 from a proxy, a truncated body).
function errors.http(status, message, request_id)
  return http_error("HTTP" .. status, status, message, request_id)
end

-- JSON that is not what the platform sends: a field of the wrong type, a reply payload
-- that is not Base64, an RRpc answer without RrpcCode.
function errors.invalid_response(status, message, request_id, message_id)
  return http_error("InvalidResponse", status, message, request_id, message_id)
end

-- A device state other than SUCCESS; `code` is the RrpcCode or the platform's error code.
function errors.device(rrpc_code, code, fields)
  fields.kind = "device"
  fields.rrpc_code = rrpc_code
  fields.code = code
  fields.message = fields.message or DEVICE_MESSAGES[rrpc_code] or ("device state " .. rrpc_code)
  fields.delivered = DEVICE_DELIVERED[rrpc_code] or "maybe"
  fields.retryable = false
  return errors.new(fields)
end

-- An error code from the platform. fields: status, message, request_id, retry_after.
function errors.api(code, fields, secret)
  local state = DEVICE_STATE_CODES[code]
  if state then
    return errors.device(state, code, fields)
  end
  fields.code = code
  if is_invalid_code(code) then
    fields.kind, fields.delivered = "invalid", "no"
  else
    fields.kind = "api"
    if code:find("^Throttling") or RETRYABLE_CODES[code] then
      fields.delivered, fields.retryable = "no", true
    elseif MAYBE_DELIVERED_CODES[code] or (fields.status or 200) >= 500 then
      fields.delivered = "maybe"
    elseif (fields.status or 200) >= 400 or code:find("^iot%.") then
      -- auth, signature, unknown product or device: refused before delivery
      fields.delivered = "no"
    end
  end
  return errors.new(fields, secret)
end

return errors
