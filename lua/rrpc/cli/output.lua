-- What the command line writes on standard output: JSON lines (fields in a fixed order,
-- every string valid UTF-8), each written whole with one write and flushed, and the
-- outcome classes that lines and exit statuses share.
local cjson = require "cjson.safe"
local rrpc = require "rrpc"

local output = {}

---------------------------------------------------------------------------------------
-- Outcome classes

-- Every call ends in one of these; `call` exits with its status, `batch` counts them.
-- Listed in exit-status order, which is also the order of the batch summary. A call
-- cancelled by a signal exits with the signal's status (128 + its number).
output.OUTCOMES = {
  { name = "ok", status = 0, meaning = "success: the device replied" },
  { name = "other", status = 1, meaning = "any other failure: platform errors, unexpected answers, UNKNOWN" },
  { name = "invalid", status = 2,
    meaning = "bad input: usage, options, files, lines, parameters the platform refused" },
  { name = "timeout", status = 3, meaning = "device TIMEOUT: no reply in time (the device may have the message)" },
  { name = "offline", status = 4, meaning = "device OFFLINE or HALFCONN" },
  { name = "throttled", status = 5, meaning = "throttled or unavailable: nothing delivered, try again later" },
  { name = "auth", status = 6, meaning = "credentials missing or refused: key, signature, clock, token, RAM policy" },
  { name = "network", status = 7, meaning = "network: connection, DNS, TLS, HTTP timeout" },
  { name = "not_found", status = 8, meaning = "unknown or inactive product, device or instance" },
  { name = "cancelled", meaning = "interrupted: cancelled in flight (the device may have it), or never sent" },
}
output.EXIT = {}
for _, outcome in ipairs(output.OUTCOMES) do output.EXIT[outcome.name] = outcome.status end
output.EXIT_BATCH_FAILURES = 10 -- a batch in which some device did not succeed

local DEVICE_STATE_OUTCOMES = { TIMEOUT = "timeout", OFFLINE = "offline", HALFCONN = "offline" }
-- The library files these under "api" (or "invalid", for MissingSecurityToken); for a
-- script they mean "fix the credentials", so they get a class of their own.
local AUTH_CODE_PATTERNS = {
  "^SignatureDoesNotMatch$", "^IncompleteSignature", "^InvalidAccessKeyId", "^InvalidTimeStamp",
  "SecurityToken", "^Forbidden",
}
local NOT_FOUND_CODE_PATTERNS = { "^iot%.prod%.", "^iot%.device%.", "InstanceNotFound$" }

local function matches_any(text, patterns)
  for _, pattern in ipairs(patterns) do
    if text:find(pattern) then return true end
  end
  return false
end

--- output.outcome_of(err) --> the class name of a library error
function output.outcome_of(err)
  if err.kind == "cancelled" then return "cancelled" end
  if err.kind == "device" then return DEVICE_STATE_OUTCOMES[err.rrpc_code] or "other" end
  if err.kind == "credentials" or matches_any(err.code, AUTH_CODE_PATTERNS) then return "auth" end
  if err.kind == "invalid" or err.kind == "network" then return err.kind end
  if err.retryable then return "throttled" end
  if matches_any(err.code, NOT_FOUND_CODE_PATTERNS) then return "not_found" end
  return "other"
end

---------------------------------------------------------------------------------------
-- UTF-8

local REPLACEMENT = "\239\191\189" -- U+FFFD

-- The second byte's range after each lead byte (the rest are 80..BF): no overlong forms,
-- no surrogates, nothing above U+10FFFF.
local function second_range(lead)
  if lead >= 0xC2 and lead <= 0xDF then return 1, 0x80, 0xBF end
  if lead == 0xE0 then return 2, 0xA0, 0xBF end
  if lead == 0xED then return 2, 0x80, 0x9F end
  if lead >= 0xE1 and lead <= 0xEF then return 2, 0x80, 0xBF end
  if lead == 0xF0 then return 3, 0x90, 0xBF end
  if lead >= 0xF1 and lead <= 0xF3 then return 3, 0x80, 0xBF end
  if lead == 0xF4 then return 3, 0x80, 0x8F end
  return nil
end

--- output.valid_utf8(text) --> text with every ill-formed UTF-8 sequence (each maximal
-- subpart, as Unicode recommends) replaced by U+FFFD, and whether any was
function output.valid_utf8(text)
  if not text:find("[\128-\255]") then return text, false end
  local parts, from, i, n, replaced = {}, 1, 1, #text, false
  while i <= n do
    local lead = text:byte(i)
    if lead < 0x80 then
      i = i + 1
    else
      local follow, low, high = second_range(lead)
      local good = 0 -- bytes after the lead that fit
      if follow then
        for k = 1, follow do
          local b = text:byte(i + k)
          if not b or b < low or b > high then break end
          good = k
          low, high = 0x80, 0xBF
        end
      end
      if follow and good == follow then
        i = i + follow + 1
      else
        parts[#parts + 1] = text:sub(from, i - 1)
        parts[#parts + 1] = REPLACEMENT
        i = i + good + 1
        from = i
        replaced = true
      end
    end
  end
  if not replaced then return text, false end
  parts[#parts + 1] = text:sub(from)
  return table.concat(parts), true
end

function output.is_utf8(text)
  return not select(2, output.valid_utf8(text))
end

-- UTF-8 without control characters (tab, CR and LF allowed) reads well as a JSON
-- string; anything else goes as Base64 so that every reader gets the exact bytes.
function output.is_text(bytes)
  return output.is_utf8(bytes) and not bytes:find("[%z\1-\8\11\12\14-\31\127]")
    and not bytes:find("\194[\128-\159]") -- C1 controls, U+0080..U+009F
end

---------------------------------------------------------------------------------------
-- JSON lines

--- output.json_object(names, values) --> one line of JSON with the fields in the order of
-- names (cjson would scramble them); nil values are left out. Every string is made valid
-- UTF-8 (the platform's code, message or request id may not be); a payload is only ever
-- here as text when it is valid already (is_text), else it is Base64.
function output.json_object(names, values)
  local parts = {}
  for _, name in ipairs(names) do
    local value = values[name]
    if type(value) == "string" then value = output.valid_utf8(value) end
    if value ~= nil then parts[#parts + 1] = cjson.encode(name) .. ":" .. cjson.encode(value) end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

output.OUTCOME_FIELDS = {
  "line", "product_key", "device_name", "ok", "outcome", "code", "payload", "payload_base64",
  "message_id", "request_id", "rrpc_code", "kind", "message", "delivered", "retryable", "status",
  "retry_after", "attempts",
}

local ERROR_FIELDS = { "message_id", "request_id", "rrpc_code", "kind", "message", "delivered",
                       "retryable", "status", "retry_after" }

--- output.outcome_fields(res, err, fields) --> fields, with those of the call's outcome added
function output.outcome_fields(res, err, fields)
  if res then
    fields.ok, fields.outcome, fields.code = true, "ok", res.rrpc_code
    if output.is_text(res.payload) then
      fields.payload = res.payload
    else
      fields.payload_base64 = rrpc.b64encode(res.payload)
    end
    fields.message_id, fields.request_id = res.message_id, res.request_id
  else
    fields.ok, fields.outcome, fields.code = false, output.outcome_of(err), err.code
    for _, name in ipairs(ERROR_FIELDS) do fields[name] = err[name] end
  end
  fields.attempts = (res or err).attempts
  return fields
end

--- output.writer(stream) --> function(text): the text and a newline in one write, flushed,
-- so that a line is out whole as soon as it is known (rrpc.signals defers interruptions,
-- so none is torn)
function output.writer(stream)
  return function(text)
    stream:write(text .. "\n")
    stream:flush()
  end
end

--- output.one_line(text) --> text on one line (a V3 string to sign has several)
function output.one_line(text)
  return (tostring(text):gsub("%s*\n%s*", " "))
end

return output
