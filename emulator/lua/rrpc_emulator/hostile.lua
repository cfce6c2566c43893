-- The hostile far side: answers that break HTTP, or the platform's JSON, in the ways a
-- client must survive (emulator/README.md, "Hostile behaviours"). Each behaviour gets
-- (device, request_bytes, timeout_ms) like the others in devices.lua and returns an
-- outcome that writes itself. The raw ones take the connection over from nginx
-- (ngx.req.socket(true)) to write bytes that nginx would otherwise correct.
local ffi = require "ffi"
local reply = require "rrpc_emulator.reply"
local vanish = require "rrpc_emulator.vanish"

ffi.cdef [[
unsigned long compressBound(unsigned long source_len);
int compress2(unsigned char *dest, unsigned long *dest_len, const char *source,
              unsigned long source_len, int level);
]]

local hostile = {}

local HUGE_BYTES = 64 * 1024 * 1024
local CHUNK_BYTES = 64 * 1024
local NESTING_DEPTH = 100000
-- Above 2^64 (about 1.8e19): no integer type of any client holds it.
local OVERFLOWING_MESSAGE_ID = "123456789012345678901234567890"
-- A lone continuation byte, an overlong "/", a UTF-16 surrogate, 0xFF, a sequence cut short.
local INVALID_UTF8 = "bad bytes: \128 \192\175 \237\160\128 \255 \226\130"
-- Beyond any client's timeout: the client is expected to give up first.
local STALL_MS = 60000

-- The JSON text of each wrong-typed value a `wrong_type` device sends, by field; with
-- `Code`, the answer is an error (Success false) instead of a SUCCESS.
hostile.wrong_types = {
  RrpcCode = { RrpcCode = "5" },
  PayloadBase64Byte = { PayloadBase64Byte = "{}" },
  MessageId = { MessageId = '"abc"' },
  Success = { Success = '"yes"' },
  Code = { Success = "false", Code = "[]" },
}

local MEMBER_ORDER = { "RequestId", "Success", "Code", "RrpcCode", "MessageId", "PayloadBase64Byte" }

-- A SUCCESS answer echoing `request`, as JSON text, with `overrides` (field -> JSON text).
local function success_text(request_id, request, message_id, overrides)
  local values = {
    RequestId = '"' .. request_id .. '"',
    Success = "true",
    RrpcCode = '"SUCCESS"',
    MessageId = message_id,
    PayloadBase64Byte = '"' .. ngx.encode_base64(request) .. '"',
  }
  for name, value in pairs(overrides or {}) do
    values[name] = value
  end
  local members = {}
  for _, name in ipairs(MEMBER_ORDER) do
    if values[name] then
      members[#members + 1] = '"' .. name .. '":' .. values[name]
    end
  end
  return "{" .. table.concat(members, ",") .. "}"
end

-- HTTP 200 with the platform's JSON headers and the body that body_of(request_id) returns,
-- whatever it holds (and the MessageId in it, for the access log).
local function json_answer(code, body_of)
  return reply.custom(code, function(request_id)
    local body, message_id = body_of(request_id)
    reply.json_headers(200, request_id, message_id)
    ngx.header["Content-Length"] = #body
    ngx.print(body)
  end)
end

-- Takes the connection over and writes `bytes` on it as they are. When the handler
-- returns, nginx closes it with a FIN; ngx.exit(444) resets it instead (nginx.conf.in).
-- Nothing to do when the client has gone meanwhile, so send errors are not checked.
local function write_raw(bytes)
  local socket = assert(ngx.req.socket(true))
  socket:send(bytes)
  return socket
end

-- The status line and headers of a 200 JSON answer, then `framing` (a header line).
local function raw_head(request_id, framing)
  ngx.var.rrpc_rid = request_id
  return "HTTP/1.1 200 OK\r\nContent-Type: " .. reply.JSON_TYPE .. "\r\nx-acs-request-id: "
    .. request_id .. "\r\n" .. framing .. "\r\n\r\n"
end

-- A Content-Length for a whole SUCCESS answer and only its first half.
local function half_answer(request_id, request)
  local body = success_text(request_id, request, reply.next_message_id())
  return raw_head(request_id, "Content-Length: " .. #body) .. body:sub(1, math.floor(#body / 2))
end

-- 200 and a JSON body of HUGE_BYTES, streamed (as it is sent, not built first), with or
-- without a Content-Length. Stops when the client stops reading.
local function huge_answer(code, declared)
  return reply.custom(code, function(request_id)
    reply.json_headers(200, request_id)
    if declared then
      ngx.header["Content-Length"] = HUGE_BYTES
    end
    local head, tail = '{"RequestId":"' .. request_id .. '","Padding":"', '"}'
    local chunk = ("x"):rep(CHUNK_BYTES)
    ngx.print(head)
    local left = HUGE_BYTES - #head - #tail
    while left > 0 do
      local piece = left >= CHUNK_BYTES and chunk or chunk:sub(1, left)
      ngx.print(piece)
      if not ngx.flush(true) then
        return
      end
      left = left - #piece
    end
    ngx.print(tail)
  end)
end

-- HUGE_BYTES of JSON deflated (zlib, as HTTP's "deflate" is) to about 64 KB: made once per
-- worker, on first use, with the zlib nginx is linked against.
local deflated_bomb
local function deflate_bomb()
  if not deflated_bomb then
    local text = '{"Padding":"' .. ("0"):rep(HUGE_BYTES - 14) .. '"}'
    local bound = ffi.C.compressBound(#text)
    local out, out_len = ffi.new("unsigned char[?]", bound), ffi.new("unsigned long[1]", bound)
    if ffi.C.compress2(out, out_len, text, #text, 9) ~= 0 then
      error("zlib's compress2 failed")
    end
    deflated_bomb = ffi.string(out, out_len[0])
  end
  return deflated_bomb
end

hostile.behaviours = {
  -- JSON cut off in the middle of a member
  bad_json = function()
    return json_answer("bad_json", function(request_id)
      return '{"RequestId":"' .. request_id .. '","Success":tr'
    end)
  end,
  -- complete, but a comma is missing
  malformed_json = function()
    return json_answer("malformed_json", function(request_id)
      return '{"RequestId":"' .. request_id .. '","Success":true "RrpcCode":"SUCCESS"}'
    end)
  end,
  empty_200 = function()
    return json_answer("empty_200", function()
      return ""
    end)
  end,
  -- well-formed JSON nested far deeper than any decoder's limit
  deep_nesting = function()
    return json_answer("deep_nesting", function(request_id)
      return '{"RequestId":"' .. request_id .. '","Success":true,"RrpcCode":"SUCCESS","PayloadBase64Byte":'
        .. ("["):rep(NESTING_DEPTH) .. ("]"):rep(NESTING_DEPTH) .. "}"
    end)
  end,
  wrong_type = function(device, request)
    return json_answer("wrong_type", function(request_id)
      local message_id = reply.next_message_id()
      local overrides = hostile.wrong_types[device.field]
      return success_text(request_id, request, message_id, overrides),
        overrides.MessageId == nil and message_id or nil
    end)
  end,
  message_id_overflow = function(_, request)
    return reply.success(request, OVERFLOWING_MESSAGE_ID)
  end,
  invalid_utf8 = function()
    reply.reject(200, "iot.messagebroker.RrpcFailed", INVALID_UTF8)
  end,
  huge_body = function()
    return huge_answer("huge_body", false)
  end,
  huge_length = function()
    return huge_answer("huge_length", true)
  end,
  deflate_bomb = function()
    return reply.custom("deflate_bomb", function(request_id)
      local body = deflate_bomb()
      reply.json_headers(200, request_id)
      ngx.header["Content-Encoding"] = "deflate"
      ngx.header["Content-Length"] = #body
      ngx.print(body)
    end)
  end,
  -- a Content-Length larger than the body, then the connection closes
  truncated_body = function(_, request)
    return reply.custom("truncated_body", function(request_id)
      write_raw(half_answer(request_id, request))
    end)
  end,
  -- a TCP RST instead of any answer
  rst = function()
    return reply.custom("rst", function()
      return ngx.exit(444)
    end)
  end,
  -- a TCP RST halfway through the body
  rst_mid_body = function(_, request)
    return reply.custom("rst_mid_body", function(request_id)
      write_raw(half_answer(request_id, request))
      return ngx.exit(444)
    end)
  end,
  -- chunked encoding whose second chunk size is not hexadecimal
  broken_chunked = function()
    return reply.custom("broken_chunked", function(request_id)
      local first = '{"RequestId":"' .. request_id .. '",'
      write_raw(raw_head(request_id, "Transfer-Encoding: chunked")
        .. ("%x\r\n%s\r\nnot-a-size\r\n"):format(#first, first))
    end)
  end,
  -- an answer that is not HTTP at all
  garbage = function()
    return reply.custom("garbage", function()
      write_raw("SSH-2.0-OpenSSH_9.2p1\r\n\0\1\2\255 this is not HTTP\r\n")
    end)
  end,
  -- a status line and a header, then nothing until the client gives up (or STALL_MS
  -- after the request's Timeout)
  partial_headers = function(_, _, timeout_ms)
    return reply.custom("partial_headers", function()
      local socket = write_raw("HTTP/1.1 200 OK\r\nContent-Type: " .. reply.JSON_TYPE .. "\r\n")
      socket:settimeout(timeout_ms + STALL_MS)
      socket:receive(1) -- returns when the client closes the connection
    end)
  end,
  -- the request read whole, then the node goes away: its vanish listener refuses connects
  -- for `refuse_ms` (vanish.lua), and this connection closes with a FIN, unanswered
  vanish = function(device)
    return reply.custom("vanish", function()
      assert(ngx.req.socket(true)) -- taken over, so that nginx sends nothing either
      vanish.go_away(device.refuse_ms)
    end)
  end,
}

-- Those a device's `faults` list may name: all but `wrong_type` (which needs `field`),
-- `partial_headers` (which, like `hang`, would stall a batch for its whole timeout) and
-- `vanish` (which needs `refuse_ms` and reloads nginx).
hostile.faults = {}
for name in pairs(hostile.behaviours) do
  if name ~= "wrong_type" and name ~= "partial_headers" and name ~= "vanish" then
    hostile.faults[name] = true
  end
end

return hostile
