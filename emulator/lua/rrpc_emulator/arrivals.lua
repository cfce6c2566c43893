-- How many times each RRpc request reached the emulator, counted at the HTTP level when
-- its parameters have been read and BEFORE any signature or nonce check: a byte-identical
-- copy (libcurl's silent resend, same nonce) is refused as SignatureNonceUsed, but it did
-- arrive, and a spec proving that nothing is sent twice must see it.
-- Counted by RequestBase64Byte (one longer than KEY_LIMIT by "sha256:<hex of it>") in the
-- shared dict rrpc_arrivals, shared by all workers and kept across reloads; when it is full
-- the least recently counted keys are dropped, so memory stays bounded.
local cjson = require "cjson"
local crypto = require "rrpc_emulator.crypto"

local arrivals = {}

local KEY_LIMIT = 1024

local function dict()
  return ngx.shared.rrpc_arrivals
end

function arrivals.key_of(request_base64)
  if #request_base64 > KEY_LIMIT then
    return "sha256:" .. crypto.sha256_hex(request_base64)
  end
  return request_base64
end

-- `request` as handler.lua reads it. Returns the count so far (1 on the first arrival),
-- or nil when it is not an RRpc request with a RequestBase64Byte.
function arrivals.count(request)
  local action = request.params.Action or request.headers["x-acs-action"]
  local content = request.params.RequestBase64Byte
  if action ~= "RRpc" or type(content) ~= "string" or content == "" then
    return nil
  end
  local count, err = dict():incr(arrivals.key_of(content), 1, 0)
  if not count then
    ngx.log(ngx.ERR, "arrivals: cannot count: ", err)
  end
  return count
end

-- GET /__emulator/arrivals: {"<RequestBase64Byte>": count, ...}.
-- POST /__emulator/arrivals/reset: 204, forgets every count.
function arrivals.serve(reset)
  local method = ngx.req.get_method()
  if reset then
    if method ~= "POST" then
      return ngx.exit(ngx.HTTP_NOT_ALLOWED)
    end
    dict():flush_all()
    dict():flush_expired()
    return ngx.exit(ngx.HTTP_NO_CONTENT)
  end
  if method ~= "GET" then
    return ngx.exit(ngx.HTTP_NOT_ALLOWED)
  end
  local report = {}
  for _, key in ipairs(dict():get_keys(0)) do
    report[key] = dict():get(key)
  end
  ngx.header["Content-Type"] = "application/json"
  -- an empty table would be encoded as [], not {}
  ngx.print(next(report) and cjson.encode(report) or "{}")
end

return arrivals
