-- The client: options, secrets, and one call's life (prepare, sign, send, interpret).
-- rrpc.batch drives the same steps on a pool of connections.
local core = require "rrpc.core"
local args = require "rrpc.args"
local credentials = require "rrpc.credentials"
local errors = require "rrpc.errors"
local limiter = require "rrpc.limiter"
local retry = require "rrpc.retry"

local json_null = require("cjson").null

local client = {}

-- How calls travel. This one is libcurl: a session (one easy handle) for single calls,
-- a pool (the multi interface) for batches. rrpc.ngx brings one made of nginx subrequests.
local curl = {}

-- nil and the name of an option libcurl refuses (a string longer than it takes).
function curl.open(settings)
  settings.response_budget = core.budget(settings.max_response_memory)
  local session, refused = core.session(settings)
  if not session then return nil, refused end
  return { settings = settings, session = session }
end

function curl.send(state, url, headers, body, timeout_ms)
  return state.session:perform("POST", url, headers, body, timeout_ms)
end

curl.sleep = core.sleep

function curl.pool(state, concurrency)
  if state.pool and (state.pool_size < concurrency or state.pool:count() > 0) then
    state.pool:close() -- too small, or holding calls of an abandoned stream
    state.pool = nil
  end
  if not state.pool then
    local options = { max_connections = concurrency }
    for k, v in pairs(state.settings) do options[k] = v end
    state.pool, state.pool_size = core.pool(options), concurrency
  end
  return state.pool
end

curl.limiter = limiter.new

function curl.close(state)
  state.session:close()
  if state.pool then state.pool:close() end
end

client.curl = curl

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

local NEW_OPTIONS = {
  access_key_id = "string", access_key_secret = "string", security_token = "string",
  region = "string", endpoint = "string", iot_instance_id = "string", signature = "string",
  placement = "string", connect_timeout = "integer", timeout_margin = "integer",
  idle_timeout = "integer", max_response_bytes = "integer", max_response_memory = "integer",
  ca_file = "string",
  ca_path = "string", user_agent = "string", credentials = "table", profile = "string",
  metadata_endpoint = "string", proxy = "string", no_proxy = "string",
  insecure_skip_tls_verify = "boolean",
}

client.RRPC_OPTIONS = {
  product_key = "string", device_name = "string", payload = "string", timeout = "integer",
  topic = "string", iot_instance_id = "string", retry = "any",
}

local REQUEST_OPTIONS = { timeout = "integer", retry = "any" }

local Client = {}
Client.__index = Client

-- Secrets and the libcurl handles stay out of the client table, so neither pairs()
-- nor tostring() nor a debugging dump can show them.
local private = setmetatable({}, { __mode = "k" })

local function parse_endpoint(fname, endpoint, level)
  local scheme, host = endpoint:match("^(https?)://([^/?#%s]+)/?$")
  if not scheme then
    args.error(fname, ("option 'endpoint' must look like \"https://host[:port]\", got %s"):format(
      args.describe(endpoint)), level + 1)
  end
  return (endpoint:gsub("/$", "")), host
end

local PROXY_SCHEMES = { http = true, https = true, socks4 = true, socks4a = true, socks5 = true,
                        socks5h = true }

-- Settings that would make every call fail are refused here, not at each call.
local function check_connection_options(opts, level)
  if opts.ca_file then
    local f, why = io.open(opts.ca_file, "rb")
    local first
    if f then
      first, why = f:read(1)
      f:close()
    end
    if not first then
      args.error("new", ("option 'ca_file': cannot read certificates from %s (%s)"):format(
        args.describe(opts.ca_file), why and why:gsub("^.*: ", "") or "empty file"), level + 1)
    end
  end
  if opts.ca_path then
    local f, errno = io.open(opts.ca_path, "rb"), nil
    if f then
      errno = select(3, f:read(0))
      f:close()
    end
    if errno ~= 21 then -- EISDIR: it is a directory we may open
      args.error("new", ("option 'ca_path': %s is not a readable directory"):format(
        args.describe(opts.ca_path)), level + 1)
    end
  end
  if opts.proxy and opts.proxy ~= "" then -- "": no proxy, whatever the environment says
    local scheme, host = core.parse_url(opts.proxy)
    local why = not scheme and host
    if scheme and not PROXY_SCHEMES[scheme:lower()] then
      why = ("scheme '%s' is not a proxy's (http, https, socks4, socks4a, socks5, socks5h)"):format(scheme)
    end
    if why then
      args.error("new", ("option 'proxy' is not a proxy URL: %s"):format(why), level + 1)
    end
  end
  if opts.access_key_id and opts.access_key_id:find("%c") then -- it travels in a header
    args.error("new", "option 'access_key_id' must not contain control characters", level + 1)
  end
  if opts.security_token and opts.security_token:find("%c") then
    args.error("new", "option 'security_token' must not contain control characters", level + 1)
  end
end

local function default_user_agent()
  local os_name, machine = core.platform()
  local lua = jit and jit.version:gsub("^LuaJIT ", "LuaJIT/") or _VERSION:gsub("^Lua ", "Lua/")
  return ("AlibabaCloud (%s; %s) %s rrpc/%s"):format(os_name, machine, lua, core._VERSION)
end

-- Explicit keys, a provider of the caller's, or the official chain (which raises, listing
-- where it looked, when it finds nothing).
local function resolve_credentials(opts, level)
  if opts.access_key_id or opts.access_key_secret then
    args.check_required("new", opts, "access_key_id", level + 1)
    args.check_required("new", opts, "access_key_secret", level + 1)
    return credentials.static(opts)
  end
  if opts.credentials ~= nil then
    if not credentials.is_provider(opts.credentials) then
      args.error("new", "option 'credentials' must be a provider from rrpc.credentials", level + 1)
    end
    return opts.credentials
  end
  local provider, err = credentials.chain { profile = opts.profile, metadata_endpoint = opts.metadata_endpoint }
  if not provider then error("rrpc.new: " .. err, level + 1) end
  return provider
end

--- client.new{ access_key_id=, access_key_secret=, ... } --> client (libcurl)
function client.new(opts)
  return client.new_with(opts, curl, {}, 3)
end

--- client.new_with(opts, transport, transport_settings, level) --> client
function client.new_with(opts, transport, settings, level)
  args.check_options("new", opts, NEW_OPTIONS, level)
  args.check_choice("new", opts, "signature", { v1 = true, v3 = true }, level)
  args.check_choice("new", opts, "placement", { body = true, query = true }, level)
  args.check_range("new", opts, "connect_timeout", 1, 600000, level)
  args.check_range("new", opts, "timeout_margin", 0, 600000, level)
  args.check_range("new", opts, "idle_timeout", 1, 3600, level)
  args.check_range("new", opts, "max_response_bytes", 1024, 2^30, level)
  args.check_range("new", opts, "max_response_memory", 1024, 2^40, level)
  check_connection_options(opts, level)

  local region = opts.region or "cn-shanghai"
  if not region:match("^[a-z]+%-[a-z]+%-?%d*$") then
    args.error("new", ("option 'region' must look like \"cn-shanghai\", got %s"):format(
      args.describe(region)), level)
  end
  local endpoint, host = parse_endpoint("new",
    opts.endpoint or ("https://iot." .. region .. ".aliyuncs.com"), level)
  local user_agent = default_user_agent()
  if opts.user_agent then
    if opts.user_agent:find("%c") then -- a CR or LF would start a header of its own
      args.error("new", "option 'user_agent' must not contain control characters", level)
    end
    user_agent = user_agent .. " " .. opts.user_agent
  end

  local provider = resolve_credentials(opts, level + 1)
  local connect_timeout = opts.connect_timeout or 5000
  settings.connect_timeout = connect_timeout
  settings.idle_timeout = opts.idle_timeout
  settings.max_response_bytes = opts.max_response_bytes
  settings.max_response_memory = opts.max_response_memory
  settings.ca_file = opts.ca_file
  settings.ca_path = opts.ca_path
  settings.user_agent = user_agent
  settings.proxy = opts.proxy
  settings.no_proxy = opts.no_proxy
  settings.verify = not opts.insecure_skip_tls_verify
  local self = setmetatable({
    endpoint = endpoint,
    host = host,
    region = region,
    credentials_source = provider.source,
    iot_instance_id = opts.iot_instance_id,
    signature = opts.signature or "v3",
    placement = opts.placement or "body",
    connect_timeout = connect_timeout,
    timeout_margin = opts.timeout_margin or 2000,
    user_agent = user_agent,
  }, Client)
  local state, refused = transport.open(settings)
  if not state then
    args.error("new", ("option '%s' was refused by the HTTP library (too long?)"):format(refused), level)
  end
  private[self] = {
    credentials = provider,
    transport = transport,
    state = state,
    open = true,
  }
  return self
end

function client.is_client(value)
  return getmetatable(value) == Client
end

--- client.open_state(self, fname, level) --> the private state of an open client, or raises
function client.open_state(self, fname, level)
  local p = getmetatable(self) == Client and private[self]
  if not p then
    error(("bad self to '%s' (use client:%s(...))"):format(fname, fname), level + 1)
  end
  if not p.open then
    error(("attempt to use a closed client in '%s'"):format(fname), level + 1)
  end
  return p
end

local function check_retry(fname, value, default, level)
  if value == nil then return default end
  if value == false then return nil end
  if retry.is_policy(value) then return value end
  if type(value) == "table" then return retry.new(value) end
  args.error(fname, "option 'retry' must be a policy (rrpc.retry.new{...}), a table of its options or false, got "
    .. type(value), level + 1)
end

-- What the fields of the platform's answers must be. A field of another type means the
-- answer is not the platform's, whatever else it says; JSON null counts as absent.
local FIELD_KINDS = {
  string = { named = "a string", check = function(v) return type(v) == "string" end },
  boolean = { named = "a boolean", check = function(v) return type(v) == "boolean" end },
  -- decode_response has turned an integer into its exact digits, so a number left here is
  -- a fraction or an exponent, which no MessageId is; the platform's field is a Long
  digits = { named = "a 64-bit integer", check = function(v)
    return type(v) == "string" and v:find("^%d+$") ~= nil
      and (#v < 19 or (#v == 19 and v <= "9223372036854775807"))
  end },
}
local function described(value)
  if type(value) == "string" and value:find("^%d+$") then return #value .. " digits" end
  return type(value)
end
local COMMON_FIELDS = {
  { "RequestId", "string" }, { "Success", "boolean" }, { "Code", "string" },
  { "Message", "string" }, { "ErrorMessage", "string" }, { "MessageId", "digits" },
}
local RRPC_FIELDS = { { "RrpcCode", "string" }, { "PayloadBase64Byte", "string" } }

-- Says what is wrong with the first field of `fields` that doc has of the wrong kind, or nil.
local function field_problem(doc, fields)
  for _, field in ipairs(fields) do
    local name, kind = field[1], FIELD_KINDS[field[2]]
    local value = doc[name]
    if value == json_null then
      doc[name] = nil
    elseif value ~= nil and not kind.check(value) then
      return ("field '%s' must be %s, got %s"):format(name, kind.named, described(value))
    end
  end
end

-- The RRpc answer: the device's reply, or its state as an error.
local function rrpc_outcome(doc)
  local problem = field_problem(doc, RRPC_FIELDS)
  if problem then
    return nil, errors.invalid_response(200, problem, doc.RequestId, doc.MessageId)
  end
  local code = doc.RrpcCode
  if code == "SUCCESS" then
    local payload, why = core.b64decode(doc.PayloadBase64Byte or "")
    if not payload then
      return nil, errors.invalid_response(200, "reply payload is not Base64 (" .. why .. ")",
        doc.RequestId, doc.MessageId)
    end
    return { payload = payload, message_id = doc.MessageId, request_id = doc.RequestId,
             rrpc_code = code }
  end
  if code then
    return nil, errors.device(code, code, { status = 200, request_id = doc.RequestId,
                                            message_id = doc.MessageId })
  end
  return nil, errors.invalid_response(200, "response has no RrpcCode", doc.RequestId)
end

-- client:request answers with the decoded document itself, its fields checked.
local function request_outcome(doc)
  return doc
end

--- client.prepare_rrpc(self, fname, request, default_retry, level) --> call
-- Checks a request (the arguments of client:rrpc) and returns what every attempt needs.
function client.prepare_rrpc(self, fname, request, default_retry, level)
  args.check_options(fname, request, client.RRPC_OPTIONS, level + 1)
  args.check_required(fname, request, "product_key", level + 1)
  args.check_required(fname, request, "device_name", level + 1)
  if request.payload == nil then args.error(fname, "option 'payload' is required", level + 1) end
  if #request.payload > MAX_PAYLOAD then
    args.error(fname, ("option 'payload' is %d bytes, more than the platform's %d"):format(
      #request.payload, MAX_PAYLOAD), level + 1)
  end
  args.check_range(fname, request, "timeout", MIN_TIMEOUT, MAX_TIMEOUT, level + 1)
  local timeout = request.timeout or DEFAULT_TIMEOUT
  return {
    action = "RRpc",
    params = {
      ProductKey = request.product_key,
      DeviceName = request.device_name,
      RequestBase64Byte = core.b64encode(request.payload),
      Timeout = timeout,
      Topic = request.topic,
      IotInstanceId = request.iot_instance_id or self.iot_instance_id,
    },
    -- outlasts the device's Timeout, so a silent device arrives as TIMEOUT
    http_timeout = self.connect_timeout + timeout + self.timeout_margin,
    retry = check_retry(fname, request.retry, default_retry, level + 1),
    outcome = rrpc_outcome,
  }
end

--- client.sign(self, p, call) --> url, headers, body | nil, err
-- A fresh nonce and timestamp each time, with the provider's current credentials.
function client.sign(self, p, call)
  local c, why = p.credentials:get()
  local function has_control(v) return type(v) == "string" and v:find("%c") ~= nil end
  if c and (has_control(c.access_key_id) or has_control(c.security_token)) then
    -- both travel in headers (V3): a CR or LF would start a header of its own
    c, why = nil, "the AccessKey ID or security token contains control characters"
  end
  if not c then
    return nil, errors.new { kind = "credentials", code = "CredentialsUnavailable", message = why,
                             delivered = "no", retryable = true }
  end
  if p.signed_with ~= c then
    -- What errors are scrubbed of: the secret and token of these credentials and of the
    -- ones before them (a batch reads answers to requests signed before a refresh).
    local before = p.signed_with or {}
    p.secrets = { c.access_key_secret, c.security_token, before.access_key_secret, before.security_token }
    p.signed_with = c
  end
  p.access_key_id = c.access_key_id
  return core.build_request {
    endpoint = self.endpoint, host = self.host, action = call.action, version = API_VERSION,
    params = call.params, access_key_id = c.access_key_id, access_key_secret = c.access_key_secret,
    security_token = c.security_token, region_id = self.region, signature = self.signature,
    placement = self.placement,
  }
end

local function retry_after_ms(headers)
  local v = tonumber(headers["x-acs-retry-after"] or "")
  return v and math.floor(v) or nil
end

local function interpret(p, call, status, headers, body)
  local doc, why = core.decode_response(body)
  local request_id = doc and type(doc.RequestId) == "string" and doc.RequestId
                     or headers["x-acs-request-id"]
  if not doc then
    return nil, errors.http(status, ("HTTP %d with a body that is not the platform's JSON: %s"):format(
      status, why), request_id)
  end
  local problem = field_problem(doc, COMMON_FIELDS)
  if problem then
    return nil, errors.invalid_response(status, problem, request_id)
  end
  if type(doc.Code) == "string" and (doc.Success ~= true or status >= 400) then
    local message = doc.Message or doc.ErrorMessage
    return nil, errors.api(doc.Code, {
      status = status,
      message = type(message) == "string" and message or nil,
      request_id = request_id,
      retry_after = retry_after_ms(headers),
    })
  end
  if status ~= 200 or doc.Success == false then
    return nil, errors.http(status, ("HTTP %d without an error code"):format(status), request_id)
  end
  return call.outcome(doc)
end

--- client.interpret(p, call, status, headers, body) --> result | nil, err
-- No error holds the secret or the security token the request was signed with, in
-- any field: the platform echoes them (a V1 SignatureDoesNotMatch shows its string to
-- sign, which holds the token).
function client.interpret(p, call, status, headers, body)
  return errors.scrubbing(p.secrets, interpret, p, call, status, headers, body)
end

-- One attempt on the client's own connection.
local function attempt(self, p, call)
  if p.transport.admit then p.transport.admit(p.state) end
  local url, headers, body = client.sign(self, p, call)
  if not url then return nil, headers end
  local status, resp_headers, resp_body, sent = p.transport.send(p.state, url, headers, body,
                                                                 call.http_timeout)
  if not status then -- nil, curl code name, message, whether the request may have left
    return nil, errors.network(resp_headers, resp_body, sent)
  end
  return client.interpret(p, call, status, resp_headers, resp_body)
end

-- Attempts until success or the policy says stop; the outcome says how many it took.
local function perform(self, p, call)
  local attempts = 0
  while true do
    attempts = attempts + 1
    local res, err = attempt(self, p, call)
    local delay = err and call.retry and call.retry:delay(err, attempts)
    if not delay then
      (res or err).attempts = attempts
      return res, err
    end
    p.transport.sleep(delay)
  end
end

--- client:rrpc{ product_key=, device_name=, payload=, timeout=5000, topic=, iot_instance_id=,
--               retry=nil } --> { payload, message_id, request_id, rrpc_code, attempts } | nil, err
function Client:rrpc(request)
  local p = client.open_state(self, "rrpc", 2)
  return perform(self, p, client.prepare_rrpc(self, "rrpc", request, nil, 2))
end

--- client:request(action, params, { timeout = ms, retry = nil }) --> decoded response | nil, err
-- Any Iot action, with the same signing, transport and errors as client:rrpc.
function Client:request(action, params, opts)
  local p = client.open_state(self, "request", 2)
  if type(action) ~= "string" or not action:match("^%a[%w]*$") then
    error(("bad argument #1 to 'request' (action name expected, got %s)"):format(args.describe(action)), 2)
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
      error(("bad argument #2 to 'request' (parameter %s: %s)"):format(args.describe(name),
        RESERVED_PARAMS[name] and "set by the client" or "string, number or boolean value expected"), 2)
    end
    copy[name] = value
  end
  copy.IotInstanceId = copy.IotInstanceId or self.iot_instance_id
  opts = opts or {}
  args.check_options("request", opts, REQUEST_OPTIONS, 2)
  args.check_range("request", opts, "timeout", 1, 600000, 2)
  return perform(self, p, {
    action = action,
    params = copy,
    http_timeout = self.connect_timeout + (opts.timeout or DEFAULT_REQUEST_TIMEOUT),
    retry = check_retry("request", opts.retry, nil, 2),
    outcome = request_outcome,
  })
end

--- client.pool(p, concurrency) --> the transport's pool for batches, with room for concurrency
function client.pool(p, concurrency)
  return p.transport.pool(p.state, concurrency)
end

--- client:close() -- frees the connections; idempotent. Also on GC and <close>.
function Client:close()
  local p = private[self]
  if p and p.open then
    p.open = false
    p.transport.close(p.state)
  end
end
Client.__close = Client.close

function Client:__tostring()
  local p = private[self]
  local c = p and p.credentials.cached
  local id = c and c.access_key_id or ""
  local shown = #id > 8 and (id:sub(1, 4) .. "****" .. id:sub(-3)) or "****"
  return ("rrpc.client (%s, key %s, %s%s)"):format(self.endpoint, shown, self.signature,
    p and p.open and "" or ", closed")
end

return client
