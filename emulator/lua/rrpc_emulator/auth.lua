-- Authenticates a request the way the platform's gateway does, with V1
-- (Signature parameter) or V3 (Authorization: ACS3-HMAC-SHA256 header).
-- Every failure is thrown as a rejection carrying the platform's code.
local crypto = require "rrpc_emulator.crypto"
local reply = require "rrpc_emulator.reply"
local sign = require "rrpc_emulator.sign"
local sts = require "rrpc_emulator.sts"

local reject = reply.reject

local API_VERSION = "2018-01-20"
local MAX_CLOCK_SKEW_S = 15 * 60
local NONCE_TTL_S = 15 * 60

-- Format is optional: without it the platform answers XML (handler.lua).
local V1_REQUIRED = {
  "AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce",
  "Timestamp", "Version", "Action",
}

local V3_REQUIRED = {
  "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256",
}

local auth = {}

local function reject_incomplete(detail)
  reject(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards. " .. detail)
end

local function reject_mismatch(string_to_sign)
  reject(400, "SignatureDoesNotMatch",
    "Specified signature is not matched with our calculation. server string to sign is:" .. string_to_sign)
end

-- "x-acs-signature-nonce" -> "XAcsSignatureNonce", for Missing<Name> codes.
local function camel_case(header_name)
  return (header_name:gsub("%-?(%w)(%w*)", function(first, rest)
    return first:upper() .. rest
  end))
end

local function check_api(version, action, known_actions)
  if version ~= API_VERSION then
    reject(400, "InvalidVersion", "Specified parameter Version is not valid.")
  end
  if not known_actions[action] then
    reject(404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method.")
  end
end

-- An access key of the registry (which ignores a security token, like the
-- platform), or an STS key, which is only valid with its own token.
local function find_key(registry, id, security_token)
  local key = registry.access_keys[id]
  if key then
    if key.inactive then
      reject(400, "InvalidAccessKeyId.Inactive", "Specified access key is disabled.")
    end
    return key
  end
  key = sts.find(registry, id)
  if not key then
    reject(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
  end
  sts.check_token(key, security_token)
  return key
end

-- The key's clock_offset_s shifts the server's clock, to test clients against skew.
local function check_time(key, text)
  local time = sign.parse_timestamp(text)
  if not time then
    reject(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
  end
  if math.abs(time - (ngx.time() + (key.clock_offset_s or 0))) > MAX_CLOCK_SKEW_S then
    reject(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
  end
end

-- Called as soon as the signature is verified, so a request with a bad signature does not
-- burn its nonce, and one with a good signature does even when a later check refuses it.
-- The dict key is a 16-byte MD5: with it an entry takes 128 bytes of the shared
-- dict, with the plain text 256. A full dict drops its oldest nonces.
local function claim_nonce(key_id, nonce)
  local ok, err = ngx.shared.rrpc_nonces:add(ngx.md5_bin(key_id .. "\n" .. nonce), true, NONCE_TTL_S)
  if not ok then
    if err == "exists" then
      reject(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
    end
    error("nonce store: " .. err)
  end
end

local function authenticate_v1(request, registry, known_actions, note)
  local params = request.params
  note("sig", "v1")
  note("key", params.AccessKeyId)
  note("action", params.Action)
  for _, name in ipairs(V1_REQUIRED) do
    if params[name] == nil or params[name] == "" then
      reply.reject_missing(name)
    end
  end
  if params.SignatureMethod ~= "HMAC-SHA1" then
    reject_incomplete("SignatureMethod must be HMAC-SHA1.")
  end
  if params.SignatureVersion ~= "1.0" then
    reject_incomplete("SignatureVersion must be 1.0.")
  end
  local key = find_key(registry, params.AccessKeyId, params.SecurityToken)
  check_time(key, params.Timestamp)
  local string_to_sign = sign.v1_string_to_sign(request.method, params)
  if sign.v1_signature(key.secret, string_to_sign) ~= params.Signature then
    reject_mismatch(string_to_sign)
  end
  claim_nonce(params.AccessKeyId, params.SignatureNonce)
  check_api(params.Version, params.Action, known_actions)
  return params.Action, params.AccessKeyId, key
end

local function single_header(request, name)
  local value = request.headers[name]
  if type(value) == "table" then
    reject(400, "InvalidParameter", "The header " .. name .. " is given more than once.")
  end
  return value
end

-- "ACS3-HMAC-SHA256 Credential=id,SignedHeaders=a;b,Signature=hex" -> fields.
local function parse_authorization(value)
  local list = value:match("^ACS3%-HMAC%-SHA256%s+(.*)$")
  if not list then
    reject_incomplete("The Authorization header must use ACS3-HMAC-SHA256.")
  end
  local fields = {}
  for item in list:gmatch("[^,]+") do
    local name, field_value = item:match("^%s*(%a+)=(%S*)%s*$")
    if name then
      fields[name] = field_value
    end
  end
  if not (fields.Credential and fields.SignedHeaders and fields.Signature) then
    reject_incomplete("The Authorization header needs Credential, SignedHeaders and Signature.")
  end
  return fields
end

-- Sorted, lower-cased signed header names; they must cover host, content-type
-- (when sent) and every x-acs-* header sent, or the request could be altered.
local function signed_header_names(request, signed_headers)
  local signed, listed = {}, {}
  for name in signed_headers:gmatch("[^;]+") do
    name = name:lower()
    signed[#signed + 1] = name
    listed[name] = true
  end
  table.sort(signed)
  local function must_sign(name)
    if not listed[name] then
      reject(400, "SignatureDoesNotMatch", "SignedHeaders must include host, content-type and every x-acs-* header; "
        .. reply.printable(name) .. " is missing.")
    end
  end
  must_sign("host")
  for name in pairs(request.headers) do
    if name == "content-type" or name:find("^x%-acs%-") then
      must_sign(name)
    end
  end
  return signed
end

-- `text` for the error log, with the security token the request presented (header or
-- parameter) masked in every form a canonical request or string to sign holds it: raw
-- (a header), percent-encoded once (a query) or twice (a V1 string to sign).
local function without_token(text, request)
  for _, token in ipairs { request.headers["x-acs-security-token"], request.params.SecurityToken } do
    if type(token) == "string" and token ~= "" then
      for _, form in ipairs { sign.percent_encode(sign.percent_encode(token)), sign.percent_encode(token), token } do
        text = text:gsub((form:gsub("%p", "%%%0")), "***")
      end
    end
  end
  return text
end

local function authenticate_v3(request, registry, known_actions, note)
  note("sig", "v3")
  local fields = parse_authorization(single_header(request, "authorization"))
  note("key", fields.Credential)
  note("action", single_header(request, "x-acs-action"))
  local headers = {}
  for _, name in ipairs(V3_REQUIRED) do
    headers[name] = single_header(request, name)
    if headers[name] == nil or headers[name] == "" then
      reply.reject_missing(camel_case(name))
    end
  end
  local key = find_key(registry, fields.Credential, single_header(request, "x-acs-security-token"))
  check_time(key, headers["x-acs-date"])
  local body_sha256 = crypto.sha256_hex(request.body)
  if headers["x-acs-content-sha256"] ~= body_sha256 then
    reject(400, "SignatureDoesNotMatch",
      "The x-acs-content-sha256 header does not match the SHA-256 of the request body, which is " .. body_sha256 .. ".")
  end
  local signed = signed_header_names(request, fields.SignedHeaders)
  for _, name in ipairs(signed) do
    headers[name] = single_header(request, name)
  end
  local canonical_request = sign.v3_canonical_request(request.method, request.query, headers, signed, body_sha256)
  local string_to_sign = sign.v3_string_to_sign(canonical_request)
  if sign.v3_signature(key.secret, string_to_sign) ~= fields.Signature then
    ngx.log(ngx.WARN, "V3 signature mismatch; server canonical request:\n", without_token(canonical_request, request))
    reject_mismatch(string_to_sign)
  end
  claim_nonce(fields.Credential, headers["x-acs-signature-nonce"])
  check_api(headers["x-acs-version"], headers["x-acs-action"], known_actions)
  return headers["x-acs-action"], fields.Credential, key
end

-- Returns the authenticated action name, AccessKeyId and key ({secret,
-- clock_offset_s, qps} from the registry, or an STS key). `request` is {method, query, params,
-- headers, body} (see handler.lua); `note(field, value)` records sig, key and
-- action for the access log as soon as they are known.
function auth.authenticate(request, registry, known_actions, note)
  if request.headers.authorization then
    return authenticate_v3(request, registry, known_actions, note)
  end
  return authenticate_v1(request, registry, known_actions, note)
end

return auth
