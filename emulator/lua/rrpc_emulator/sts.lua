-- STS credentials: an AccessKeyId "STS.<...>", its secret, a SecurityToken that
-- must come with every call, and an expiry. They are either static (the
-- registry's sts_keys) or issued by the metadata service (metadata.lua) and
-- kept in the rrpc_credentials shared dict, so that every worker accepts them.
local cjson = require "cjson"
local crypto = require "rrpc_emulator.crypto"
local reply = require "rrpc_emulator.reply"

local reject = reply.reject

-- An issued key is remembered this long after it expires, so that a late call
-- gets InvalidSecurityToken.Expired rather than InvalidAccessKeyId.NotFound.
local KEPT_AFTER_EXPIRY_S = 3600

local ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

local store = ngx.shared.rrpc_credentials

local sts = {}

-- `length` random letters and digits (the slight modulo bias does not matter here).
function sts.random_alphanumeric(length)
  local bytes = crypto.random_bytes(length)
  return (bytes:gsub(".", function(byte)
    local i = byte:byte() % #ALPHANUMERIC + 1
    return ALPHANUMERIC:sub(i, i)
  end))
end

local function stored_name(key_id)
  return "sts\n" .. key_id
end

-- Issues a fresh credential set valid `ttl_s` seconds from now and remembers it.
-- Returns {id, secret, token, issued, expires} (times in epoch seconds).
-- The token is long and standard Base64 with "+", "/" and "=", like the
-- platform's, so a client that does not percent-encode it fails to sign.
function sts.issue(ttl_s)
  local issued = ngx.time()
  local credential = {
    id = "STS." .. sts.random_alphanumeric(28),
    secret = sts.random_alphanumeric(44),
    token = "CAIS" .. ngx.encode_base64(crypto.random_bytes(451)),
    issued = issued,
    expires = issued + ttl_s,
  }
  local ok, err = store:set(stored_name(credential.id),
    cjson.encode { secret = credential.secret, token = credential.token, expires = credential.expires },
    ttl_s + KEPT_AFTER_EXPIRY_S)
  if not ok then
    error("credential store: " .. err)
  end
  return credential
end

-- The STS key `key_id` ({secret, token, expires}) from the registry or issued
-- earlier, or nil when there is none.
function sts.find(registry, key_id)
  local static = registry.sts_keys[key_id]
  if static then
    return static
  end
  local stored = store:get(stored_name(key_id))
  return stored and cjson.decode(stored)
end

-- Refuses a call with the STS key `key` unless it carries that key's token
-- (`security_token`, nil when absent) before the key's expiry.
function sts.check_token(key, security_token)
  if security_token == nil or security_token == "" then
    reject(400, "MissingSecurityToken", "SecurityToken is mandatory for this action.")
  end
  if security_token ~= key.token then
    reject(400, "InvalidSecurityToken.MismatchWithAccessKey", "Specified SecurityToken mismatch with the AccessKey.")
  end
  if ngx.time() >= key.expires then
    reject(400, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired.")
  end
end

return sts
