-- The client: its options, its credentials, and one call's life (prepare, sign, send
-- through the transport, interpret). rrpc.batch drives the same steps on the transport's
-- pool. The transport (lua/rrpc/transport/*.lua) is the only part that does I/O.
local core = require "rrpc.core"
local args = require "rrpc.args"
local credentials = require "rrpc.credentials"
local errors = require "rrpc.errors"
local limits = require "rrpc.limits"
local quota = require "rrpc.quota"
local response = require "rrpc.response"
local retry = require "rrpc.retry"
local curl = require "rrpc.transport.curl"

local client = {}

-- Parameters the client sets itself; a caller's copy would break the signature.
local RESERVED_PARAMS = {
  AccessKeyId = true, Action = true, Format = true, Signature = true, SignatureMethod = true,
  SignatureNonce = true, SignatureVersion = true, Timestamp = true, Version = true,
  SecurityToken = true, RegionId = true,
}

local PROXY_SCHEMES = { http = true, https = true, socks4 = true, socks4a = true, socks5 = true,
                        socks5h = true }

local function no_control(name)
  return function(value)
    if value:find("%c") then return ("option '%s' must not contain control characters"):format(name) end
  end
end

-- Settings that would make every call fail are refused at rrpc.new, not at each call.
local function readable_ca_file(path)
  local f, why = io.open(path, "rb")
  local first
  if f then
    first, why = f:read(1)
    f:close()
  end
  if not first then
    return ("option 'ca_file': cannot read certificates from %s (%s)"):format(
      args.describe(path), why and why:gsub("^.*: ", "") or "empty file")
  end
end

local function readable_ca_path(path)
  local f, errno = io.open(path, "rb"), nil
  if f then
    errno = select(3, f:read(0))
    f:close()
  end
  if errno ~= 21 then -- EISDIR: a directory we may open
    return ("option 'ca_path': %s is not a readable directory"):format(args.describe(path))
  end
end

local function proxy_url(proxy)
  if proxy == "" then return end -- libcurl's "no proxy, whatever the environment says"
  local scheme, host = core.parse_url(proxy)
  local why = not scheme and host
  if scheme and not PROXY_SCHEMES[scheme:lower()] then
    why = ("scheme '%s' is not a proxy's (http, https, socks4, socks4a, socks5, socks5h)"):format(scheme)
  end
  if why then return "option 'proxy' is not a proxy URL: " .. why end
end

local function region_name(region)
  if not region:match("^[a-z]+%-[a-z]+%-?%d*$") then
    return ("option 'region' must look like \"cn-shanghai\", got %s"):format(args.describe(region))
  end
end

local function endpoint_url(endpoint)
  if not endpoint:match("^https?://[^/?#%s]+/?$") then
    return ("option 'endpoint' must look like \"https://host[:port]\", got %s"):format(args.describe(endpoint))
  end
end

local function is_provider(value)
  if not credentials.is_provider(value) then
    return "option 'credentials' must be a provider from rrpc.credentials"
  end
end

local function is_quota(value)
  if not quota.is_quota(value) then
    return "option 'quota' must be a quota from rrpc.quota (rrpc.quota.process, rrpc.quota.redis, ...)"
  end
end

local function retry_option(value)
  local _, why = retry.option(value)
  return why
end

client.NEW_OPTIONS = {
  access_key_id = { type = "string", check = no_control("access_key_id") },
  access_key_secret = { type = "string" },
  security_token = { type = "string", check = no_control("security_token") },
  credentials = { type = "table", check = is_provider },
  profile = { type = "string" }, metadata_endpoint = { type = "string" },
  region = { type = "string", check = region_name },
  endpoint = { type = "string", check = endpoint_url },
  iot_instance_id = { type = "string" },
  signature = { type = "string", choices = { "v1", "v3" } },
  placement = { type = "string", choices = { "body", "query" } },
  connect_timeout = { type = "integer", range = limits.CONNECT_TIMEOUT },
  timeout_margin = { type = "integer", range = limits.TIMEOUT_MARGIN },
  idle_timeout = { type = "integer", range = limits.IDLE_TIMEOUT },
  max_response_bytes = { type = "integer", range = limits.MAX_RESPONSE_BYTES },
  max_response_memory = { type = "integer", range = limits.MAX_RESPONSE_MEMORY },
  ca_file = { type = "string", check = readable_ca_file },
  ca_path = { type = "string", check = readable_ca_path },
  proxy = { type = "string", check = proxy_url },
  no_proxy = { type = "string" },
  -- a CR or LF would start a header of its own
  user_agent = { type = "string", check = no_control("user_agent") },
  insecure_skip_tls_verify = { type = "boolean" },
  -- "2": h2 when the TLS handshake agrees on it; only over https:// (see new_with)
  http_version = { type = "string", choices = { "1.1", "2" } },
  -- a limit shared by every call of the client (and, through Redis, of other hosts)
  quota = { type = "table", check = is_quota },
  max_quota_wait = { type = "integer", range = limits.MAX_QUOTA_WAIT },
  -- called once for each call after its last attempt, and as it starts (rrpc.metrics)
  on_call = { type = "function" },
  on_call_start = { type = "function" },
}

local function payload_size(payload)
  if #payload > limits.MAX_PAYLOAD then
    return ("option 'payload' is %d bytes, more than the platform's %d"):format(#payload, limits.MAX_PAYLOAD)
  end
end

client.RRPC_OPTIONS = {
  product_key = { type = "string", required = true },
  device_name = { type = "string", required = true },
  payload = { type = "string", required = true, empty = true, check = payload_size },
  timeout = { type = "integer", range = limits.RRPC_TIMEOUT },
  topic = { type = "string" }, iot_instance_id = { type = "string" },
  retry = { type = "any", check = retry_option },
}

local REQUEST_OPTIONS = {
  timeout = { type = "integer", range = limits.REQUEST_TIMEOUT },
  retry = { type = "any", check = retry_option },
}

local Client = {}
Client.__index = Client

-- Secrets and the transport's state stay out of the client table, so neither pairs()
-- nor tostring() nor a debugging dump can show them.
local private = setmetatable({}, { __mode = "k" })

local function default_user_agent()
  local os_name, machine = core.platform()
  local lua = jit and jit.version:gsub("^LuaJIT ", "LuaJIT/") or _VERSION:gsub("^Lua ", "Lua/")
  return ("AlibabaCloud (%s; %s) %s rrpc/%s"):format(os_name, machine, lua, core._VERSION)
end

-- Explicit keys, or a provider of the caller's; nil for the official chain.
local function given_credentials(opts, level)
  if opts.access_key_id or opts.access_key_secret then
    for _, name in ipairs { "access_key_id", "access_key_secret" } do
      if opts[name] == nil or opts[name] == "" then
        args.raise("new", 1, ("option '%s' is required"):format(name), level + 1)
      end
    end
    return credentials.static(opts)
  end
  return opts.credentials
end

--- client.new{ access_key_id=, access_key_secret=, ... } --> client (libcurl)
function client.new(opts)
  return client.new_with(opts, curl, {}, 3)
end

--- client.new_with(opts, transport, settings, level) --> client
-- settings: the transport's own (rrpc.ngx's location, quota, ...); the connection
-- settings join them here.
function client.new_with(opts, transport, settings, level)
  args.check("new", 1, opts, client.NEW_OPTIONS, level)
  local region = opts.region or limits.DEFAULT_REGION
  local endpoint = (opts.endpoint or ("https://iot." .. region .. ".aliyuncs.com")):gsub("/$", "")
  local user_agent = default_user_agent()
  if opts.user_agent then user_agent = user_agent .. " " .. opts.user_agent end
  local connect_timeout = opts.connect_timeout or limits.CONNECT_TIMEOUT.default
  settings.connect_timeout = connect_timeout
  settings.idle_timeout = opts.idle_timeout or limits.IDLE_TIMEOUT.default
  settings.max_response_bytes = opts.max_response_bytes or limits.MAX_RESPONSE_BYTES.default
  settings.max_response_memory = opts.max_response_memory or limits.MAX_RESPONSE_MEMORY.default
  settings.receive_buffer_bytes = limits.RECEIVE_BUFFER_BYTES
  settings.ca_file = opts.ca_file
  settings.ca_path = opts.ca_path
  settings.user_agent = user_agent
  settings.proxy = opts.proxy
  settings.no_proxy = opts.no_proxy
  settings.verify = not opts.insecure_skip_tls_verify
  settings.http_version = opts.http_version or "1.1"
  -- over plain http, h2 would need prior knowledge that the server speaks it: an
  -- HTTP/1.1 server would fail every call, so the option fails here instead
  if settings.http_version == "2" and not endpoint:find("^https://") then
    args.raise("new", 1, "option 'http_version' \"2\" needs an https:// endpoint " ..
               "(h2 is agreed on in the TLS handshake)", level)
  end
  settings.quota = opts.quota
  settings.max_quota_wait = opts.max_quota_wait or limits.MAX_QUOTA_WAIT.default

  local provider = given_credentials(opts, level)
  local state, refused = transport.open(settings)
  if not state then
    local why = refused == "http_version" and "libcurl without HTTP/2" or "too long?"
    args.raise("new", 1, ("option '%s' was refused by the HTTP library (%s)"):format(refused, why), level)
  end
  -- the metadata service is reached through the client's transport
  local function fetch(method, url, headers, body, timeout_ms)
    return transport.fetch(state, method, url, headers, body, timeout_ms)
  end
  if not provider then -- the official chain, which lists where it looked when it finds nothing
    local err
    provider, err = credentials.chain { profile = opts.profile, metadata_endpoint = opts.metadata_endpoint,
                                        fetch = fetch }
    if not provider then
      transport.close(state)
      error("rrpc.new: " .. err, 0)
    end
  end
  local self = setmetatable({
    endpoint = endpoint,
    host = endpoint:match("^https?://(.*)$"),
    region = region,
    credentials_source = provider.source,
    iot_instance_id = opts.iot_instance_id,
    signature = opts.signature or "v3",
    placement = opts.placement or "body",
    connect_timeout = connect_timeout,
    timeout_margin = opts.timeout_margin or limits.TIMEOUT_MARGIN.default,
    user_agent = user_agent,
  }, Client)
  private[self] = {
    credentials = provider,
    fetch = fetch,
    transport = transport,
    state = state,
    open = true,
    on_call = opts.on_call,
    on_call_start = opts.on_call_start,
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

-- What every RRpc call has alike, kept out of each call's own table: a batch holds
-- thousands of calls at once.
local RRpcCall = { __index = { action = "RRpc", outcome = response.rrpc } }
-- what every call reads, as upvalues
local RRPC_OPTIONS, DEFAULT_RRPC_TIMEOUT = client.RRPC_OPTIONS, limits.RRPC_TIMEOUT.default
local problem_of, b64encode, setmetatable = args.problem, core.b64encode, setmetatable

--- client.rrpc_call(self, request, index) --> call | nil, problem
-- Checks a request (the argument of client:rrpc, or a batch's request) without raising,
-- and returns what every attempt needs; problem: { option =, message = }. index: the
-- request's place in a batch (nil for a single call).
function client.rrpc_call(self, request, index)
  local problem = problem_of(request, RRPC_OPTIONS)
  if problem then return nil, problem end
  local timeout = request.timeout or DEFAULT_RRPC_TIMEOUT
  -- the optional parameters added only when there: a table sized for them all would be
  -- twice the size (a batch holds thousands)
  local params = { ProductKey = request.product_key, DeviceName = request.device_name,
                   RequestBase64Byte = b64encode(request.payload), Timeout = timeout }
  if request.topic then params.Topic = request.topic end
  local instance = request.iot_instance_id or self.iot_instance_id
  if instance then params.IotInstanceId = instance end
  -- index and attempts (a batch's) in the constructor: the table is made at its size once,
  -- not grown when the batch adds them
  local call = setmetatable({
    params = params,
    -- outlasts the device's Timeout, so a silent device arrives as TIMEOUT
    http_timeout = self.connect_timeout + timeout + self.timeout_margin,
    index = index, attempts = 0,
  }, RRpcCall)
  -- the request's own policy; without one, a batch's applies (a single call has none)
  if request.retry ~= nil then call.retry = retry.option(request.retry) end
  return call
end

--- client.prepare_rrpc(self, fname, request, level) --> call, or raises
function client.prepare_rrpc(self, fname, request, level)
  local call, problem = client.rrpc_call(self, request)
  if not call then args.raise(fname, 1, problem.message, level + 1) end
  return call
end

--- client.sign(self, p, call, given) --> url, headers, body, steps | nil, err
-- A fresh nonce and timestamp each time (given.timestamp and given.nonce instead, when
-- there), with the provider's current credentials.
local function has_control(v) return type(v) == "string" and v:find("%c") ~= nil end

local function unavailable(why)
  return nil, errors.new { kind = "credentials", code = "CredentialsUnavailable", message = why,
                           delivered = "no", retryable = true }
end

-- The provider's current credentials --> c | nil, err. What follows from their values (the
-- check for control characters, the secrets errors are scrubbed of, the signer) is made
-- again only when they change: a provider may return a new table, or change the one it
-- returned before.
local function current_credentials(p)
  local c, why = p.credentials:get(p.fetch)
  if not c then return unavailable(why) end
  local made = p.made -- the credentials all that was made of, and their values then
  if made and made.of == c and made.id == c.access_key_id and made.secret == c.access_key_secret
     and made.token == c.security_token then
    return c
  end
  if has_control(c.access_key_id) or has_control(c.security_token) then
    -- both travel in headers (V3): a CR or LF would start a header of its own
    return unavailable("the AccessKey ID or security token contains control characters")
  end
  -- What errors are scrubbed of: the secret and token of these credentials and of the
  -- ones before them (a batch reads answers to requests signed before a refresh).
  local before = made or {}
  p.secrets = errors.prepared_secrets { c.access_key_secret, c.security_token, before.secret, before.token }
  p.made = { of = c, id = c.access_key_id, secret = c.access_key_secret, token = c.security_token }
  p.signer = nil -- made of these when next asked for
  return c
end

function client.sign(self, p, call, given)
  local c, err = current_credentials(p)
  if not c then return nil, err end
  return core.build_request {
    endpoint = self.endpoint, host = self.host, action = call.action, version = limits.API_VERSION,
    params = call.params, access_key_id = c.access_key_id, access_key_secret = c.access_key_secret,
    security_token = c.security_token, region_id = self.region, signature = self.signature,
    placement = self.placement, timestamp = given and given.timestamp, nonce = given and given.nonce,
  }
end

--- client.signer(self, p) --> signer | nil, err
-- rrpc.core.signer for the provider's current credentials (made again when they change):
-- what a transport with send_signed signs with, as client.sign would, a fresh nonce and
-- time each.
function client.signer(self, p)
  local c, err = current_credentials(p)
  if not c then return nil, err end
  if not p.signer then
    p.signer = core.signer {
      endpoint = self.endpoint, host = self.host, version = limits.API_VERSION,
      access_key_id = c.access_key_id, access_key_secret = c.access_key_secret,
      security_token = c.security_token, region_id = self.region, signature = self.signature,
      placement = self.placement,
    }
  end
  return p.signer
end

--- client.interpret(p, call, status, headers, body) --> result | nil, err
function client.interpret(p, call, status, headers, body)
  return response.interpret(call.outcome, status, headers, body, p.secrets)
end

-- A hook that raises never changes a call's outcome: it is reported once per client.
local function run_hook(p, name, info)
  local ok, why = pcall(p[name], info)
  if not ok and not p.hook_failed then
    p.hook_failed = true
    p.transport.warn(p.state, ("rrpc: the %s hook raised (reported once per client): %s"):format(name, tostring(why)))
  end
end

--- client.call_started(p, call) -- the on_call_start hook, as a call begins
function client.call_started(p, call)
  if not p.on_call_start then return end
  call.reported_start = true
  local params = call.params
  run_hook(p, "on_call_start", { action = call.action, product_key = params.ProductKey,
                                 device_name = params.DeviceName })
end

--- client.call_over(p, call, res, err, attempts, seconds, quota_seconds) -- the on_call hook
-- info: what the outcome says of the call, never its payload or a secret.
function client.call_over(p, call, res, err, attempts, seconds, quota_seconds)
  if not p.on_call then return end
  local params = call and call.params or {}
  local info = {
    action = call and call.action or "RRpc", product_key = params.ProductKey, device_name = params.DeviceName,
    ok = res ~= nil, attempts = attempts, duration_ms = seconds * 1000, quota_wait_ms = quota_seconds * 1000,
    started = call ~= nil and call.reported_start == true,
  }
  if res then
    info.rrpc_code = res.rrpc_code
    info.code = res.rrpc_code
    info.status = 200
    info.request_id = res.request_id or res.RequestId
    info.message_id = res.message_id or res.MessageId
  else
    info.kind, info.code, info.rrpc_code = err.kind, err.code, err.rrpc_code
    info.delivered, info.retryable, info.status = err.delivered, err.retryable, err.status
    info.request_id, info.message_id = err.request_id, err.message_id
  end
  run_hook(p, "on_call", info)
end

-- One attempt on the client's own connection; the seconds it waited for the quota (timed
-- only for the on_call hook, the one reader of durations).
local function attempt(self, p, call)
  local transport = p.transport
  local asked = p.on_call and core.monotime()
  local refused = transport.admit(p.state, call)
  local quota_seconds = asked and core.monotime() - asked or 0
  if refused then return nil, refused, quota_seconds end
  local status, resp_headers, resp_body
  if transport.send_signed then
    local signer, err = client.signer(self, p)
    if not signer then return nil, err, quota_seconds end
    status, resp_headers, resp_body = transport.send_signed(p.state, signer, call.action, call.params,
                                                            call.http_timeout)
  else
    local url, headers, body = client.sign(self, p, call)
    if not url then return nil, headers, quota_seconds end
    status, resp_headers, resp_body = transport.send(p.state, url, headers, body, call.http_timeout)
  end
  if not status then return nil, resp_headers, quota_seconds end
  local res, err = client.interpret(p, call, status, resp_headers, resp_body)
  return res, err, quota_seconds
end

-- Attempts until success or the policy says stop; the outcome says how many it took.
local function perform(self, p, call)
  local attempts, started, quota_seconds = 0, p.on_call and core.monotime(), 0
  if p.on_call_start then client.call_started(p, call) end
  while true do
    attempts = attempts + 1
    local res, err, waited = attempt(self, p, call)
    quota_seconds = quota_seconds + waited
    local delay = err and call.retry and call.retry:delay(err, attempts)
    if not delay then
      (res or err).attempts = attempts
      if started then client.call_over(p, call, res, err, attempts, core.monotime() - started, quota_seconds) end
      return res, err
    end
    p.transport.sleep(p.state, delay)
  end
end

--- client:check(request) --> nil | { option =, message = }: what client:rrpc would raise
-- for, without raising (for a gateway that answers 400 with it)
function Client:check(request)
  client.open_state(self, "check", 2)
  local _, problem = client.rrpc_call(self, request)
  return problem
end

--- client:rrpc{ product_key=, device_name=, payload=, timeout=5000, topic=, iot_instance_id=,
--               retry=nil } --> { payload, message_id, request_id, rrpc_code, attempts } | nil, err
function Client:rrpc(request)
  local p = client.open_state(self, "rrpc", 2)
  return perform(self, p, client.prepare_rrpc(self, "rrpc", request, 2))
end

local DAYS_IN_MONTH = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function utc_timestamp(value)
  local y, mo, d, h, mi, s = value:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$")
  y, mo, d, h, mi, s = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(s)
  local leap = y and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0))
  if not y or mo < 1 or mo > 12 or d < 1 or d > DAYS_IN_MONTH[mo] or (mo == 2 and d == 29 and not leap)
     or h > 23 or mi > 59 or s > 59 then
    return ("option 'timestamp' must be a UTC time YYYY-MM-DDThh:mm:ssZ, got %s"):format(args.describe(value))
  end
end

local function nonce_text(value)
  local size = limits.SIGN_NONCE_BYTES
  if not value:find("^[%w_.-]+$") or #value < size.min or #value > size.max then
    return ("option 'nonce' must be %d..%d letters, digits, '-', '_' or '.', got %s"):format(
      size.min, size.max, args.describe(value))
  end
end

local SIGN_OPTIONS = {
  timestamp = { type = "string", check = utc_timestamp },
  nonce = { type = "string", check = nonce_text },
}

--- client.check_request(request) --> nil | { option =, message = }: what client:rrpc
-- would refuse in its argument, without raising
function client.check_request(request)
  return args.problem(request, client.RRPC_OPTIONS)
end

--- client:sign_rrpc(request, { timestamp =, nonce = }) --> parts | nil, err
-- What client:rrpc(request) would sign, built the same way, and nothing sent: for showing
-- it and comparing with the strings of a SignatureDoesNotMatch. parts: signature_version,
-- method, url, headers, body, and the steps: string_to_sign and signature (V1), or
-- canonical_request, string_to_sign and authorization (V3). A security token is ***
-- in every one of them; the secret is in none.
function Client:sign_rrpc(request, opts)
  local p = client.open_state(self, "sign_rrpc", 2)
  local call = client.prepare_rrpc(self, "sign_rrpc", request, 2)
  opts = opts or {}
  args.check("sign_rrpc", 2, opts, SIGN_OPTIONS, 2)
  local url, headers, body, steps = client.sign(self, p, call, opts)
  if not url then return nil, headers end
  local token = p.made.token
  local parts = { signature_version = self.signature, method = "POST", url = errors.mask(url, token),
                  body = errors.mask(body, token), headers = {} }
  for name, value in pairs(headers) do parts.headers[name] = errors.mask(value, token) end
  for name, value in pairs(steps) do parts[name] = errors.mask(value, token) end
  return parts
end

--- client:request(action, params, { timeout = ms, retry = nil }) --> decoded response | nil, err
-- Any Iot action, with the same signing, transport and errors as client:rrpc.
function Client:request(action, params, opts)
  local p = client.open_state(self, "request", 2)
  if type(action) ~= "string" or not action:match("^%a[%w]*$") then
    args.raise("request", 1, ("action name expected, got %s"):format(args.describe(action)), 2)
  end
  params = params or {}
  if type(params) ~= "table" then
    args.raise("request", 2, "table expected, got " .. type(params), 2)
  end
  local copy = {}
  for name, value in pairs(params) do
    local t = type(value)
    if type(name) ~= "string" or RESERVED_PARAMS[name] or
       (t ~= "string" and t ~= "number" and t ~= "boolean") then
      args.raise("request", 2, ("parameter %s: %s"):format(args.describe(name),
        RESERVED_PARAMS[name] and "set by the client" or "string, number or boolean value expected"), 2)
    end
    copy[name] = value
  end
  copy.IotInstanceId = copy.IotInstanceId or self.iot_instance_id
  opts = opts or {}
  args.check("request", 3, opts, REQUEST_OPTIONS, 2)
  return perform(self, p, {
    action = action,
    params = copy,
    http_timeout = self.connect_timeout + (opts.timeout or limits.REQUEST_TIMEOUT.default),
    retry = retry.option(opts.retry),
    outcome = response.document,
  })
end

--- client.transport_of(p) --> transport, state: what rrpc.batch drives
function client.transport_of(p)
  return p.transport, p.state
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
