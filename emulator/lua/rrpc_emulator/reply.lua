-- Responses: outcomes built by the handlers, rejections thrown as errors, and
-- the code that writes either to the client the way the platform does.
local cjson = require "cjson"
local ffi = require "ffi"
local crypto = require "rrpc_emulator.crypto"

local JSON_TYPE = "application/json;charset=utf-8"
local XML_TYPE = "text/xml;charset=utf-8"
local EPOCH_2010_MS = 1262304000000

local reply = {}

reply.JSON_TYPE = JSON_TYPE

local Rejection = {}

-- Stops the request with an error body {Success:false, Code, Message, ErrorMessage}.
-- `headers` (optional) are extra response headers.
function reply.reject(status, code, message, headers)
  error(setmetatable({ status = status, code = code, message = message, headers = headers }, Rejection), 0)
end

function reply.is_rejection(value)
  return getmetatable(value) == Rejection
end

function reply.reject_missing(name)
  reply.reject(400, "Missing" .. name, 'The input parameter "' .. name
    .. '" that is mandatory for processing this request is not supplied.')
end

-- The platform's answer to a caller over its quota; `retry_after_ms` goes to
-- the x-acs-retry-after header.
function reply.reject_throttled(retry_after_ms)
  reply.reject(400, "Throttling.User", "Request was denied due to user flow control.",
    { ["x-acs-retry-after"] = tostring(retry_after_ms) })
end

-- Visible ASCII only (anything else, space included, becomes "?"), at most
-- 64 bytes: for echoing client input into messages and access-log fields.
function reply.printable(text)
  local clean = text:sub(1, 64):gsub("[^\33-\126]", "?")
  return clean
end

function reply.request_id()
  local hex = crypto.to_hex(crypto.random_bytes(16)):upper()
  return table.concat({ hex:sub(1, 8), hex:sub(9, 12), hex:sub(13, 16), hex:sub(17, 20), hex:sub(21) }, "-")
end

-- MessageIds look like the platform's snowflake ids: milliseconds since 2010
-- shifted left by 22 bits (about 2e18, far above 2^53, so a double cannot
-- hold them), plus a counter shared by all workers so none repeats. The base is
-- computed once when nginx loads this module.
local message_id_base = ffi.new("uint64_t", math.floor(ngx.now() * 1000) - EPOCH_2010_MS) * 4194304

function reply.next_message_id()
  local sequence = assert(ngx.shared.rrpc_emulator:incr("message_sequence", 1, 0))
  return tostring(message_id_base + sequence):match("^%d+")
end

-- Outcomes. `code` is what the access log shows in code=.

function reply.json(fields, code, message_id)
  return { status = 200, fields = fields, code = code, message_id = message_id }
end

-- The device's SUCCESS answer carrying `reply_bytes`, with the next MessageId unless one
-- is given.
function reply.success(reply_bytes, message_id)
  return reply.json({
    Success = true,
    RrpcCode = "SUCCESS",
    PayloadBase64Byte = ngx.encode_base64(reply_bytes),
  }, "SUCCESS", message_id or reply.next_message_id())
end

function reply.html(status, body, code)
  return { status = status, html = body, code = code }
end

-- Closes the connection without any response, with an orderly FIN.
function reply.close(code)
  return { close = true, code = code }
end

-- An answer that `write(request_id)` gives by itself (the hostile behaviours).
function reply.custom(code, write)
  return { code = code, write = write }
end

function reply.from_rejection(rejection)
  return {
    status = rejection.status,
    headers = rejection.headers,
    code = rejection.code,
    fields = {
      Success = false,
      Code = rejection.code,
      Message = rejection.message,
      ErrorMessage = rejection.message,
    },
  }
end

-- The status and headers of the platform's JSON answers (XML ones with `content_type`). The
-- access log pairs the ids the client got (rid=, mid=), to check that it kept the MessageId exact.
function reply.json_headers(status, request_id, message_id, content_type)
  ngx.status = status
  ngx.header["Content-Type"] = content_type or JSON_TYPE
  ngx.header["x-acs-request-id"] = request_id
  ngx.var.rrpc_rid = request_id
  if message_id then
    ngx.var.rrpc_mid = message_id
  end
end

local XML_ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&apos;" }

local function xml_text(value)
  -- control characters other than tab and newlines are not allowed in XML 1.0
  return (tostring(value):gsub("[&<>\"']", XML_ESCAPES):gsub("[%z\1-\8\11\12\14-\31]", "?"))
end

-- The platform's XML form of an answer: <{Action}Response> for HTTP 200 (Success true or
-- false), <Error> with RequestId, HostId, Code and Message otherwise.
local function xml_body(outcome, request_id)
  local fields, parts = outcome.fields, { "<?xml version='1.0' encoding='UTF-8'?>" }
  local action = ngx.var.rrpc_action
  local root = outcome.status == 200 and (action ~= "-" and action or "") .. "Response" or "Error"
  local function element(name, value)
    parts[#parts + 1] = "<" .. name .. ">" .. xml_text(value) .. "</" .. name .. ">"
  end
  parts[#parts + 1] = "<" .. root .. ">"
  element("RequestId", request_id)
  if root == "Error" then
    element("HostId", ngx.var.host or "")
    element("Code", fields.Code)
    element("Message", fields.Message)
  else
    if outcome.message_id then
      element("MessageId", outcome.message_id)
    end
    local names = {}
    for name in pairs(fields) do
      names[#names + 1] = name
    end
    table.sort(names)
    for _, name in ipairs(names) do
      element(name, fields[name])
    end
  end
  parts[#parts + 1] = "</" .. root .. ">"
  return table.concat(parts)
end

function reply.send(outcome, request_id)
  if outcome.write then
    return outcome.write(request_id)
  end
  if outcome.close then
    -- nginx's code for closing without a response, in a location that closes with a FIN
    -- (location = / resets the connection instead: see nginx.conf.in)
    return ngx.exec("@close")
  end
  if outcome.html then
    ngx.status = outcome.status
    ngx.header["Content-Type"] = "text/html"
    ngx.print(outcome.html)
    return
  end
  local xml = ngx.ctx.rrpc_xml
  reply.json_headers(outcome.status, request_id, outcome.message_id, xml and XML_TYPE)
  for name, value in pairs(outcome.headers or {}) do
    ngx.header[name] = value
  end
  if xml then
    return ngx.print(xml_body(outcome, request_id))
  end
  outcome.fields.RequestId = request_id
  local body = cjson.encode(outcome.fields)
  if outcome.message_id then
    -- Spliced in as text: cjson would encode the number as a rounded double.
    body = '{"MessageId":' .. outcome.message_id .. "," .. body:sub(2)
  end
  ngx.print(body)
end

return reply
