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

-- Secrets (AccessKey secrets, security tokens) must not show in any error, in any form
-- the platform's text can give them: raw (a V3 header), percent-encoded once (a V1
-- query) or twice (the V1 string to sign encodes the canonical query again), in upper- or
-- lower-case hex, or JSON-escaped (\/, \u002F). Each byte of a secret may come in any of
-- these forms, so "CAIS%252Bx%2Fy=" is found as "CAIS+x/y=".

-- whether the two characters at `i` of `text` are the hex digits of the byte `b`
local function hex_is(text, i, b)
  local h = text:sub(i, i + 1)
  return h:find("^%x%x$") ~= nil and tonumber(h, 16) == b
end

-- the index after the byte `b` at `i` of `text`, in one of those forms, or nil
local function byte_end(text, i, b)
  local c = text:byte(i)
  if c == 37 then -- %
    if text:sub(i + 1, i + 2) == "25" and hex_is(text, i + 3, b) then return i + 5 end
    if hex_is(text, i + 1, b) then return i + 3 end
  elseif c == 92 then -- \
    local after = text:byte(i + 1)
    if after == b and (b == 47 or b == 34 or b == 92) then return i + 2 end -- \/ \" \\
    if after == 117 and text:sub(i + 2, i + 3) == "00" and hex_is(text, i + 4, b) then return i + 6 end
  end
  if c == b then return i + 1 end
end

-- the index after `secret` at `i` of `text`, in any mix of the forms, or nil
local function secret_end(text, i, secret)
  for k = 1, #secret do
    i = byte_end(text, i, secret:byte(k))
    if not i then return nil end
  end
  return i
end

-- The non-empty strings of `secrets` (a string, a table of them, holes allowed, or nil),
-- longest first.
local function secret_list(secrets)
  local list = {}
  for _, s in pairs(type(secrets) == "table" and secrets or { secrets }) do
    if type(s) == "string" and s ~= "" then list[#list + 1] = s end
  end
  table.sort(list, function(a, b) return #a > #b end)
  return list
end

local function replace_plain(text, secret)
  local parts, from = {}, 1
  while true do
    local i, j = text:find(secret, from, true)
    if not i then break end
    parts[#parts + 1] = text:sub(from, i - 1)
    from = j + 1
  end
  parts[#parts + 1] = text:sub(from)
  return table.concat(parts, "***")
end

local function mask_list(text, list)
  if not text:find("[%%\\]") then -- only raw forms can be there
    for _, secret in ipairs(list) do
      if text:find(secret, 1, true) then text = replace_plain(text, secret) end
    end
    return text
  end
  local parts, from, i = {}, 1, 1
  while i <= #text do
    local j
    for _, secret in ipairs(list) do
      j = secret_end(text, i, secret)
      if j then break end
    end
    if j then
      parts[#parts + 1] = text:sub(from, i - 1)
      parts[#parts + 1] = "***"
      from, i = j, j
    else
      i = i + 1
    end
  end
  parts[#parts + 1] = text:sub(from)
  return table.concat(parts)
end

--- errors.mask(text, secrets) --> text with every occurrence of each secret, in any of the
-- forms above, replaced by "***". `secrets`: a string, a list of strings, or nil.
function errors.mask(text, secrets)
  local list = secret_list(secrets)
  if #list == 0 then return text end
  return mask_list(text, list)
end

local Prepared = {}

--- errors.prepared_secrets(secrets) --> what errors.new takes as it is: `secrets` (a
-- string, a list, or nil) sorted once, for a client to make when its credentials change
-- rather than for every answer it reads.
function errors.prepared_secrets(secrets)
  return setmetatable(secret_list(secrets), Prepared)
end

-- Our own fields, from fixed sets: every other string may carry the platform's text.
local NOT_SCRUBBED = { kind = true, delivered = true }

--- errors.new(fields, secrets) --> the error, every string field of it but its kind and
-- delivered masked of `secrets` (prepared, a string, a list, or nil) from the start: an
-- error never holds a secret, not even before it is returned
function errors.new(fields, secrets)
  fields.message = fields.message or fields.code
  local list = secrets and (getmetatable(secrets) == Prepared and secrets or secret_list(secrets))
  if list and #list > 0 then
    for name, value in pairs(fields) do
      if type(value) == "string" and not NOT_SCRUBBED[name] then fields[name] = mask_list(value, list) end
    end
  end
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

-- Refused before sending because no slot of the quota came within the call's budget:
-- throttling like the platform's (retry policies wait retry_after ms), nothing sent.
function errors.quota_refused(message, retry_after)
  return errors.new {
    kind = "api", code = "Throttling.Quota", status = 429, message = message,
    delivered = "no", retryable = true, retry_after = retry_after,
  }
end

-- Not sent because the client the call was made for has gone: nobody waits for it.
function errors.client_gone(message)
  return errors.new { kind = "network", code = "ClientClosedRequest", message = message,
                      delivered = "no", retryable = false }
end

-- The errors an answer makes are given the secrets of its call (`secrets`, as errors.new
-- takes them): the platform echoes them (a V1 SignatureDoesNotMatch shows its string to
-- sign, which holds the token), in any field.

-- An answer that is not the platform's: judged by its status alone.
local function http_error(code, status, message, request_id, message_id, secrets)
  local rejected = status >= 400 and status < 500 -- turned away before any processing
  return errors.new({
    kind = "http", code = code, status = status, message = message,
    request_id = request_id, message_id = message_id,
    delivered = (rejected or status == 503) and "no" or "maybe",
    retryable = status == 503 or status == 429,
  }, secrets)
end

-- A response that is not the platform's JSON (an HTML 502 from a proxy, a truncated body).
function errors.http(status, message, request_id, secrets)
  return http_error("HTTP" .. status, status, message, request_id, nil, secrets)
end

-- JSON that is not what the platform sends: a field of the wrong type, a reply payload
-- that is not Base64, an RRpc answer without RrpcCode.
function errors.invalid_response(status, message, request_id, message_id, secrets)
  return http_error("InvalidResponse", status, message, request_id, message_id, secrets)
end

-- A device state other than SUCCESS; `code` is the RrpcCode or the platform's error code.
function errors.device(rrpc_code, code, fields, secrets)
  fields.kind = "device"
  fields.rrpc_code = rrpc_code
  fields.code = code
  fields.message = fields.message or DEVICE_MESSAGES[rrpc_code] or ("device state " .. rrpc_code)
  fields.delivered = DEVICE_DELIVERED[rrpc_code] or "maybe"
  fields.retryable = false
  return errors.new(fields, secrets)
end

-- An error code from the platform. fields: status, message, request_id, retry_after.
function errors.api(code, fields, secrets)
  local state = DEVICE_STATE_CODES[code]
  if state then
    return errors.device(state, code, fields, secrets)
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
  return errors.new(fields, secrets)
end

return errors
