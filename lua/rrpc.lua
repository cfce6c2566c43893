-- rrpc: call the Alibaba Cloud IoT Platform operation RRpc (send bytes to one device,
-- get its reply back) from Lua. Bytes and crypto live in rrpc.core (C); policy lives here.

local core = require "rrpc.core"
local errors = require "rrpc.errors"

local rrpc = {
  _NAME = "rrpc",
  _VERSION = core._VERSION,
  percent_encode = core.percent_encode,
  b64encode = core.b64encode,
  b64decode = core.b64decode,
  sign_v1 = core.sign_v1,
  sign_v3 = core.sign_v3,
  is_error = errors.is_error,
}

local API_VERSION = "2018-01-20"
local MAX_PAYLOAD = 256 * 1024 -- the platform's MQTT message limit
local MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 1000, 8000, 5000
local DEFAULT_REQUEST_TIMEOUT = 10000 -- HTTP timeout of client:request, as the Go and Java SDKs

-- Parameters the client sets itself; a caller's copy would break the signature.
local RESERVED_PARAMS = {
  AccessKeyId = true, Action = true, Format = true, Signature = true, SignatureMethod = true,
  SignatureNonce = true, SignatureVersion = true, Timestamp = true, Version = true,
  SecurityToken = true, RegionId = true,
}

local function argerror(fname, msg, level)
  error(("bad argument #1 to '%s' (%s)"):format(fname, msg), level + 1)
end

local function is_integer(v)
  return type(v) == "number" and v == v and v % 1 == 0 and v > -2^53 and v < 2^53
end

local function describe(v)
  return type(v) == "string" and ("%q"):format(v) or tostring(v)
end

local ARTICLE = { string = "a ", number = "a ", integer = "an ", boolean = "a ", table = "a " }

-- spec: name -> "string" | "number" | "integer" | "boolean" | "table"
local function check_options(fname, opts, spec, level)
  if type(opts) ~= "table" then
    argerror(fname, "table expected, got " .. type(opts), level + 1)
  end
  for name, value in pairs(opts) do
    local want = spec[name]
    if not want then
      argerror(fname, ("unknown option '%s'"):format(tostring(name)), level + 1)
    end
    local ok
    if want == "integer" then ok = is_integer(value) else ok = type(value) == want end
    if not ok then
      argerror(fname, ("option '%s' must be %s, got %s"):format(name, ARTICLE[want] .. want, type(value)), level + 1)
    end
  end
end

local function check_range(fname, opts, name, lo, hi, level)
  local v = opts[name]
  if v ~= nil and (v < lo or v > hi) then
    argerror(fname, ("option '%s' must be in %d..%d, got %s"):format(name, lo, hi, describe(v)), level + 1)
  end
end

local function check_choice(fname, opts, name, choices, level)
  local v = opts[name]
  if v ~= nil and not choices[v] then
    argerror(fname, ("option '%s' has no choice %s"):format(name, describe(v)), level + 1)
  end
end

local function check_nonempty(fname, opts, name, level)
  local v = opts[name]
  if v == nil or v == "" then
    argerror(fname, ("option '%s' is required"):format(name), level + 1)
  end
end

local NEW_OPTIONS = {
  access_key_id = "string", access_key_secret = "string", security_token = "string",
  region = "string", endpoint = "string", iot_instance_id = "string", signature = "string",
  placement = "string", connect_timeout = "integer", timeout_margin = "integer",
  idle_timeout = "integer", max_response_bytes = "integer", ca_file = "string",
  ca_path = "string", user_agent = "string",
}

local RRPC_OPTIONS = {
  product_key = "string", device_name = "string", payload = "string", timeout = "integer",
  topic = "string", iot_instance_id = "string",
}

local REQUEST_OPTIONS = { timeout = "integer" }

local Client = {}
Client.__index = Client

-- Secrets and the libcurl session stay out of the client table, so neither pairs()
-- nor tostring() nor a debugging dump can show them.
local private = setmetatable({}, { __mode = "k" })

local function parse_endpoint(fname, endpoint, level)
  local scheme, host = endpoint:match("^(https?)://([^/?#%s]+)/?$")
  if not scheme then
    argerror(fname, ("option 'endpoint' must look like \"https://host[:port]\", got %s"):format(
      describe(endpoint)), level + 1)
  end
  return endpoint:gsub("/$", ""), host
end

local function default_user_agent()
  local os_name, machine = core.platform()
  return ("AlibabaCloud (%s; %s) Lua/%s rrpc/%s"):format(
    os_name, machine, _VERSION:gsub("^Lua ", ""), core._VERSION)
end

--- rrpc.new{ access_key_id=, access_key_secret=, ... } --> client
function rrpc.new(opts)
  check_options("new", opts, NEW_OPTIONS, 2)
  check_nonempty("new", opts, "access_key_id", 2)
  check_nonempty("new", opts, "access_key_secret", 2)
  check_choice("new", opts, "signature", { v1 = true, v3 = true }, 2)
  check_choice("new", opts, "placement", { body = true, query = true }, 2)
  check_range("new", opts, "connect_timeout", 1, 600000, 2)
  check_range("new", opts, "timeout_margin", 0, 600000, 2)
  check_range("new", opts, "idle_timeout", 1, 3600, 2)
  check_range("new", opts, "max_response_bytes", 1024, 2^30, 2)

  local region = opts.region or "cn-shanghai"
  if not region:match("^[a-z]+%-[a-z]+%-?%d*$") then
    argerror("new", ("option 'region' must look like \"cn-shanghai\", got %s"):format(describe(region)), 2)
  end
  local endpoint, host = parse_endpoint("new",
    opts.endpoint or ("https://iot." .. region .. ".aliyuncs.com"), 2)
  local user_agent = default_user_agent()
  if opts.user_agent then user_agent = user_agent .. " " .. opts.user_agent end

  local connect_timeout = opts.connect_timeout or 5000
  local self = setmetatable({
    endpoint = endpoint,
    host = host,
    region = region,
    access_key_id = opts.access_key_id,
    iot_instance_id = opts.iot_instance_id,
    signature = opts.signature or "v3",
    placement = opts.placement or "body",
    connect_timeout = connect_timeout,
    timeout_margin = opts.timeout_margin or 2000,
    user_agent = user_agent,
  }, Client)
  private[self] = {
    secret = opts.access_key_secret,
    token = opts.security_token,
    session = core.session {
      connect_timeout = connect_timeout,
      idle_timeout = opts.idle_timeout,
      max_response_bytes = opts.max_response_bytes,
      ca_file = opts.ca_file,
      ca_path = opts.ca_path,
      user_agent = user_agent,
    },
  }
  return self
end

local function check_client(self, fname, level)
  local p = getmetatable(self) == Client and private[self]
  if not p then
    error(("bad self to '%s' (use client:%s(...))"):format(fname, fname), level + 1)
  end
  if not p.session then
    error(("attempt to use a closed client in '%s'"):format(fname), level + 1)
  end
  return p
end

local function retry_after_ms(headers)
  local v = tonumber(headers["x-acs-retry-after"] or "")
  return v and math.floor(v) or nil
end

-- Sends one signed request. Returns the decoded JSON document, or nil and an error.
local function send(self, p, action, params, http_timeout)
  local url, headers, body = core.build_request {
    endpoint = self.endpoint, host = self.host, action = action, version = API_VERSION,
    params = params, access_key_id = self.access_key_id, access_key_secret = p.secret,
    security_token = p.token, region_id = self.region, signature = self.signature,
    placement = self.placement,
  }
  local status, resp_headers, resp_body, sent = p.session:perform("POST", url, headers, body, http_timeout)
  if not status then -- nil, curl code name, message, whether the request may have left
    return nil, errors.network(resp_headers, resp_body, sent)
  end
  local doc, why = core.decode_response(resp_body)
  local request_id = doc and type(doc.RequestId) == "string" and doc.RequestId
                     or resp_headers["x-acs-request-id"]
  if not doc then
    return nil, errors.http(status, ("HTTP %d with a body that is not the platform's JSON: %s"):format(
      status, why), request_id)
  end
  if type(doc.Code) == "string" and (doc.Success ~= true or status >= 400) then
    local message = doc.Message or doc.ErrorMessage
    return nil, errors.api(doc.Code, {
      status = status,
      message = type(message) == "string" and message or nil,
      request_id = request_id,
      retry_after = retry_after_ms(resp_headers),
    }, p.secret)
  end
  if status ~= 200 or doc.Success == false then
    return nil, errors.http(status, ("HTTP %d without an error code"):format(status), request_id)
  end
  return doc
end

local function message_id(doc)
  local id = doc.MessageId
  if type(id) == "number" then return ("%.0f"):format(id) end
  return type(id) == "string" and id or nil
end

--- client:rrpc{ product_key=, device_name=, payload=, timeout=5000, topic=, iot_instance_id= }
--  --> { payload, message_id, request_id, rrpc_code } | nil, err
function Client:rrpc(args)
  local p = check_client(self, "rrpc", 2)
  check_options("rrpc", args, RRPC_OPTIONS, 2)
  check_nonempty("rrpc", args, "product_key", 2)
  check_nonempty("rrpc", args, "device_name", 2)
  if args.payload == nil then argerror("rrpc", "option 'payload' is required", 2) end
  if #args.payload > MAX_PAYLOAD then
    argerror("rrpc", ("option 'payload' is %d bytes, more than the platform's %d"):format(
      #args.payload, MAX_PAYLOAD), 2)
  end
  check_range("rrpc", args, "timeout", MIN_TIMEOUT, MAX_TIMEOUT, 2)
  local timeout = args.timeout or DEFAULT_TIMEOUT

  local doc, err = send(self, p, "RRpc", {
    ProductKey = args.product_key,
    DeviceName = args.device_name,
    RequestBase64Byte = core.b64encode(args.payload),
    Timeout = timeout,
    Topic = args.topic,
    IotInstanceId = args.iot_instance_id or self.iot_instance_id,
  }, self.connect_timeout + timeout + self.timeout_margin) -- outlasts the device's Timeout
  if not doc then return nil, err end

  local code = doc.RrpcCode
  if code == "SUCCESS" then
    local encoded = type(doc.PayloadBase64Byte) == "string" and doc.PayloadBase64Byte or ""
    local payload, why = core.b64decode(encoded)
    if not payload then
      return nil, errors.new { kind = "http", code = "InvalidResponse", status = 200,
        message = "reply payload is not Base64 (" .. why .. ")", request_id = doc.RequestId,
        message_id = message_id(doc), delivered = "maybe" }
    end
    return { payload = payload, message_id = message_id(doc), request_id = doc.RequestId,
             rrpc_code = code }
  end
  if type(code) == "string" then
    return nil, errors.device(code, code, { status = 200, request_id = doc.RequestId,
                                            message_id = message_id(doc) })
  end
  return nil, errors.new { kind = "http", code = "InvalidResponse", status = 200,
    message = "response has no RrpcCode", request_id = doc.RequestId, delivered = "maybe" }
end

--- client:request(action, params, { timeout = ms }) --> decoded response | nil, err
-- Any Iot action, with the same signing, transport and errors as client:rrpc.
function Client:request(action, params, opts)
  local p = check_client(self, "request", 2)
  if type(action) ~= "string" or not action:match("^%a[%w]*$") then
    error(("bad argument #1 to 'request' (action name expected, got %s)"):format(describe(action)), 2)
  end
  params = params or {}
  if type(params) ~= "table" then
    error("bad argument #2 to 'request' (table expected, got " .. type(params) .. ")", 2)
  end
  local copy = {}
  for name, value in pairs(params) do
    local t = type(value)
    if type(name) ~= "string" or RESERVED_PARAMS[name] or
       (t ~= "string" and t ~= "number" and t ~= "boolean") then
      error(("bad argument #2 to 'request' (parameter %s: %s)"):format(describe(name),
        RESERVED_PARAMS[name] and "set by the client" or "string, number or boolean value expected"), 2)
    end
    copy[name] = value
  end
  copy.IotInstanceId = copy.IotInstanceId or self.iot_instance_id
  opts = opts or {}
  check_options("request", opts, REQUEST_OPTIONS, 2)
  check_range("request", opts, "timeout", 1, 600000, 2)
  local doc, err = send(self, p, action, copy,
    self.connect_timeout + (opts.timeout or DEFAULT_REQUEST_TIMEOUT))
  if not doc then return nil, err end
  doc.MessageId = message_id(doc)
  return doc
end

--- client:close() -- frees the connection; idempotent. Also on GC and <close>.
function Client:close()
  local p = private[self]
  if p and p.session then
    p.session:close()
    p.session = nil
  end
end
Client.__close = Client.close

function Client:__tostring()
  local id = self.access_key_id
  local shown = #id > 8 and (id:sub(1, 4) .. "****" .. id:sub(-3)) or "****"
  return ("rrpc.client (%s, key %s, %s%s)"):format(self.endpoint, shown, self.signature,
    private[self] and private[self].session and "" or ", closed")
end

return rrpc
