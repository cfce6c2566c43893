-- Every public function, called with every wrong type and boundary value: a table of cases
-- generated below, one spec each. A case passes when the call raises a clean error (a
-- string naming the argument or the option), returns the documented nil, err, or accepts
-- a boundary value it should accept; that the process survives them all is the rest.
local rrpc = require "rrpc"
local core = require "rrpc.core"
local http = require "http"

local DISCARD = "http://127.0.0.1:9" -- nothing listens: a valid call fails fast with nil, err
local KEYS = { access_key_id = "LTAI5tBadInput", access_key_secret = "Bad-Input-Secret" }
local MAX_PAYLOAD = 256 * 1024
-- Lua 5.3+ refuses a fraction where the C API wants an integer; 5.1 and LuaJIT truncate it.
local HAS_INTEGERS = math.type ~= nil
local unpack = table.unpack or unpack
local function pack(...) return { n = select("#", ...), ... } end
-- A method's results, called from a wrapper: not as a tail call, after which LuaJIT no
-- longer knows it was a method and numbers the arguments from self.
local function results(t) return unpack(t, 1, t.n) end

local HOSTILE = setmetatable({}, { __index = function(_, key) error("hostile __index: " .. tostring(key)) end })

-- A value of every Lua type, and the numbers and strings that trip conversions.
local SAMPLES = {
  { "nil", nil }, { "true", true }, { "false", false },
  { "0", 0 }, { "-1", -1 }, { "1.5", 1.5 }, { "2^53", 2 ^ 53 }, { "huge", math.huge },
  { "-huge", -math.huge }, { "NaN", 0 / 0 },
  { "empty string", "" }, { "a word", "x" }, { "a numeric string", "5" }, { "a NUL byte", "\0" },
  { "1 MiB string", ("x"):rep(1024 * 1024) },
  { "empty table", {} }, { "array", { 1, 2 } }, { "hostile table", HOSTILE },
  { "function", function() end }, { "coroutine", coroutine.create(function() end) }, { "userdata", io.stdout },
}

-- Whether a value is of a kind. `cnumber`: what the C core takes for a number (lua_isnumber).
local KINDS = {
  string = function(v) return type(v) == "string" end,
  integer = function(v) return type(v) == "number" end, -- fractions and ranges: see boundaries
  cnumber = function(v) return tonumber(v) ~= nil and type(v) ~= "boolean" end,
  userdata = function(v) return type(v) == "userdata" end,
  boolean = function(v) return type(v) == "boolean" end,
  table = function(v) return type(v) == "table" end,
  ["function"] = function(v) return type(v) == "function" end,
  any = function() return true end,
}

------------------------------------------------------------------------------------------
-- Outcomes: each takes pcall's results.

local function raises(text)
  return function(ok, err)
    assert.is_false(ok, "returned instead of raising " .. text)
    assert.is_string(err)
    assert.is_truthy(err:find(text, 1, true), ("%q does not say %q"):format(err, text))
  end
end

local function returns(ok, err)
  assert.is_true(ok, tostring(err))
end

local function returns_nil_err(ok, res, err)
  assert.is_true(ok, tostring(res))
  assert.is_nil(res)
  assert.is_true(type(err) == "string" or rrpc.is_error(err), tostring(err))
end

-- For code that does not check its arguments (rrpc.credentials): a Lua error or a return.
local function survives(ok, err)
  assert.is_true(ok or type(err) == "string", tostring(err))
end

-- A batch's only outcome: refused as invalid, naming the request and the field.
local function invalid(text)
  return function(ok, outcome)
    assert.is_true(ok, tostring(outcome))
    local err = outcome.err
    assert.equal("invalid", err and err.kind, tostring(err))
    assert.is_truthy(err.message:find("request #1: ", 1, true), err.message)
    assert.is_truthy(err.message:find(text, 1, true), ("%q does not say %q"):format(err.message, text))
  end
end

-- A batch's only outcome: sent, and refused by the closed port.
local function sent(ok, outcome)
  assert.is_true(ok, tostring(outcome))
  assert.equal("network", outcome.err and outcome.err.kind, tostring(outcome.err))
end

------------------------------------------------------------------------------------------
-- The cases.

local cases = {}

local function case(group, label, call, outcome)
  cases[#cases + 1] = { group = group, label = label, call = call, outcome = outcome }
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function copy(t, name, value)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  if name ~= nil then c[name] = value end
  return c
end

-- fn(args...) with argument `position` replaced by every sample not of `kind`;
-- outcome(position) is what that must give.
local function positional(group, fname, fn, args, position, kind, outcome)
  for _, sample in ipairs(SAMPLES) do
    local label, value = sample[1], sample[2]
    if not KINDS[kind](value) then
      case(group, ("%s argument #%d = %s"):format(fname, position, label), function()
        local a = copy(args, position, value)
        return fn(unpack(a, 1, #args))
      end, outcome(position))
    end
  end
end

-- call_with(opts) with each option of `spec` (name -> { kind, lo, hi, required, choices =
-- values refused, accepts = values taken }) set to every wrong value, to its boundaries and
-- to its choices; then an unknown option, opts itself of every wrong type, and a table that
-- raises when read. `expect.error(name)` is the outcome of a wrong value, `expect.valid`
-- that of an accepted one; `optional` (and `false_is_default`): opts may be nil (or false).
local function options(group, fname, call_with, base, spec, expect)
  local function try(label, opts, outcome)
    case(group, ("%s %s"):format(fname, label), function() return call_with(opts) end, outcome)
  end
  for _, name in ipairs(sorted_keys(spec)) do
    local o = spec[name]
    for _, sample in ipairs(SAMPLES) do
      local label, value = sample[1], sample[2]
      if value == nil then
        try(("without %s"):format(name), copy(base, name, nil),
          o.required and expect.error(name) or expect.valid)
      elseif not KINDS[o.kind](value) then
        try(("%s = %s"):format(name, label), copy(base, name, value), expect.error(name))
      end
    end
    if o.lo then
      for _, v in ipairs { o.lo - 1, o.hi + 1, 0 / 0, math.huge, -math.huge } do
        try(("%s = %s (out of range)"):format(name, tostring(v)), copy(base, name, v), expect.error(name))
      end
      for _, v in ipairs { o.lo, o.hi } do
        try(("%s = %s (in range)"):format(name, tostring(v)), copy(base, name, v), expect.valid)
      end
      if o.kind == "integer" then
        for _, v in ipairs { o.lo + 0.5, 2 ^ 53 } do
          try(("%s = %s (not an integer)"):format(name, tostring(v)), copy(base, name, v), expect.error(name))
        end
      end
    end
    for _, bad in ipairs(o.choices or {}) do
      try(("%s = %q (no such choice)"):format(name, bad), copy(base, name, bad), expect.error(name))
    end
    for _, good in ipairs(o.accepts or {}) do
      try(("%s = %q"):format(name, good:sub(1, 40)), copy(base, name, good), expect.valid)
    end
  end
  if expect.unknown then
    try("with an unknown option", copy(base, "no_such_option", 1), expect.unknown)
  end
  if expect.not_table then
    for _, sample in ipairs(SAMPLES) do
      local default = sample[2] == nil and expect.optional or sample[2] == false and expect.false_is_default
      if type(sample[2]) ~= "table" and not default then
        case(group, ("%s(%s)"):format(fname, sample[1]), function() return call_with(sample[2]) end, expect.not_table)
      end
    end
  end
  try("(a table whose __index raises)", HOSTILE, survives)
end

-- Outcome of a wrong argument to a C function: luaL's "bad argument #n to 'f'", where f
-- is how the caller named the function (in a tail call, whatever Lua finds).
local function c_argument(position)
  return raises(("bad argument #%d "):format(position))
end

------------------------------------------------------------------------------------------
-- rrpc.percent_encode, b64encode, b64decode, decode_response: one string each.

local ALL_BYTES = {}
for byte = 0, 255 do ALL_BYTES[#ALL_BYTES + 1] = string.char(byte) end
local STRINGS = { "", "\0", table.concat(ALL_BYTES), ("\0\255"):rep(70000) }
for _, f in ipairs {
  { "percent_encode", rrpc.percent_encode }, { "b64encode", rrpc.b64encode }, { "b64decode", rrpc.b64decode },
  { "decode_response", core.decode_response },
} do
  local fname, fn = f[1], f[2]
  positional("encoding", fname, fn, { "x" }, 1, "string", c_argument)
  if fname == "percent_encode" or fname == "b64encode" then
    for i, s in ipairs(STRINGS) do
      case("encoding", ("%s of odd bytes #%d"):format(fname, i), function() return fn(s) end, returns)
    end
  end
end

for _, text in ipairs { "=", "A", "AB", "ABC", "A===", "====", "AB=C", "QQ==\n", " QQ==", "QR==", "-_-_",
                        "QQ", "Q===", "QUJD\0", "QUJD====", "\255\255\255\255" } do
  case("encoding", ("b64decode(%q)"):format(text), function() return rrpc.b64decode(text) end, returns_nil_err)
end
for _, text in ipairs { "{", "", "[1", '{"a":}', '{"a":"\\ud800"}', ("["):rep(100000), "nul\0", "{}x", "NaN" } do
  case("encoding", ("decode_response(%q)"):format(text:sub(1, 20)), function() return core.decode_response(text) end,
    returns_nil_err)
end

------------------------------------------------------------------------------------------
-- Signing: sign_v1(method, params, secret), sign_v3{...}, core.build_request{...}.

local V1_ARGS = { "POST", { Action = "RRpc" }, "secret" }
for position, kind in ipairs { "string", "table", "string" } do
  positional("signing", "sign_v1", rrpc.sign_v1, V1_ARGS, position, kind, c_argument)
end

-- Parameter and header tables: names must be strings, values strings, numbers or booleans.
-- expect: { good = outcome of a good value, value = of a bad value, name = of a bad name }
local function table_contents(group, fname, call_with, expect)
  for _, sample in ipairs(SAMPLES) do
    local label, value = sample[1], sample[2]
    if value ~= nil then
      local t = type(value)
      local good = t == "string" or t == "number" or t == "boolean"
      case(group, ("%s value %s"):format(fname, label), function() return call_with { Name = value } end,
        good and expect.good or expect.value)
      if value == value and t ~= "string" then -- NaN cannot be a key
        case(group, ("%s name %s"):format(fname, label), function() return call_with { [value] = "v" } end,
          expect.name)
      end
    end
  end
end

-- What the C core says of a bad entry in a parameter or header table.
local function c_contents(what)
  return { good = returns, value = raises(("bad %s: value of 'Name' must be"):format(what)),
           name = raises(("bad %s: names must be strings"):format(what)) }
end

table_contents("signing", "sign_v1 params", function(params) return rrpc.sign_v1("POST", params, "s") end,
  c_contents("params"))

local V3_BASE = { method = "POST", host = "iot.cn-shanghai.aliyuncs.com", access_key_id = "id", access_key_secret = "s" }
local function field_error(name) return raises(("'%s'"):format(name)) end
options("signing", "sign_v3", rrpc.sign_v3, V3_BASE, {
  method = { kind = "string", required = true }, host = { kind = "string", required = true },
  access_key_id = { kind = "string", required = true }, access_key_secret = { kind = "string", required = true },
  path = { kind = "string" }, body = { kind = "string" }, query = { kind = "table" }, headers = { kind = "table" },
}, { error = field_error, valid = returns, not_table = c_argument(1) })
table_contents("signing", "sign_v3 query", function(query) return rrpc.sign_v3(copy(V3_BASE, "query", query)) end,
  c_contents("query"))
table_contents("signing", "sign_v3 headers", function(h) return rrpc.sign_v3(copy(V3_BASE, "headers", h)) end,
  c_contents("headers"))
case("signing", "sign_v3 with a 200-byte header name", function()
  return rrpc.sign_v3(copy(V3_BASE, "headers", { [("x"):rep(200)] = "v" }))
end, raises("bad headers: name"))

local BUILD_BASE = { endpoint = DISCARD, host = "h", action = "RRpc", version = "2018-01-20", params = {},
                     access_key_id = "id", access_key_secret = "s" }
options("signing", "build_request", core.build_request, BUILD_BASE, {
  endpoint = { kind = "string", required = true }, host = { kind = "string", required = true },
  action = { kind = "string", required = true }, version = { kind = "string", required = true },
  access_key_id = { kind = "string", required = true }, access_key_secret = { kind = "string", required = true },
  security_token = { kind = "string" }, region_id = { kind = "string" },
  signature = { kind = "string", choices = { "v2", "V3", "" } },
  placement = { kind = "string", choices = { "header", "" } },
  params = { kind = "table", required = true },
}, { error = field_error, valid = returns, not_table = c_argument(1) })
table_contents("signing", "build_request params",
  function(p) return core.build_request(copy(BUILD_BASE, "params", p)) end, c_contents("params"))

------------------------------------------------------------------------------------------
-- rrpc.new{...}

local NEW_BASE = copy(KEYS, "endpoint", DISCARD)
local STRING_OPTION = { kind = "string", accepts = { "", "\0", ("x"):rep(1024 * 1024) } }
options("new", "new", function(opts) rrpc.new(opts):close() end, NEW_BASE, {
  -- both travel in headers: a control character could start a header of its own
  access_key_id = { kind = "string", required = true, choices = { "", "\0", "id\r\nX-Injected: 1" } },
  access_key_secret = { kind = "string", required = true, choices = { "" } },
  security_token = { kind = "string", accepts = { "", ("x"):rep(1024 * 1024) }, choices = { "\0", "tok\n" } },
  iot_instance_id = STRING_OPTION,
  -- a CR or LF in it would start a header of its own
  user_agent = { kind = "string", accepts = { "", ("x"):rep(1024 * 1024) }, choices = { "\0", "tool\r\nX-Injected: 1" } },
  -- what could never work is refused at once: files that cannot be read, a proxy URL
  -- that libcurl's parser refuses ("" is libcurl's "no proxy at all")
  ca_file = { kind = "string", accepts = { "/etc/ssl/certs/ca-certificates.crt" },
              choices = { "", "\0", "/nonexistent", "/", "/dev/null" } },
  ca_path = { kind = "string", accepts = { "/etc/ssl/certs", "/" }, choices = { "", "\0", "/nonexistent", "/etc/passwd" } },
  proxy = { kind = "string", accepts = { "", "proxy:3128", "http://h:1", "socks5h://[::1]:1080" },
            choices = { "\0", "http://[::1", "ftp://h", "http://h:99999", ("x"):rep(9000000) } },
  no_proxy = STRING_OPTION,
  profile = STRING_OPTION, metadata_endpoint = STRING_OPTION,
  region = { kind = "string", choices = { "", "Shanghai", "cn_shanghai", "cn-shanghai\n" } },
  endpoint = { kind = "string", choices = { "", "ftp://x", "http://", "https://h/path", "http://h?x", "http://h#f",
                                            "http://a b", "https://h\n", "//h" },
               accepts = { "http://h/", "https://h:1", "http://[::1]:8080" } },
  signature = { kind = "string", choices = { "v2", "V3", "" } },
  placement = { kind = "string", choices = { "header", "" } },
  connect_timeout = { kind = "integer", lo = 1, hi = 600000 },
  timeout_margin = { kind = "integer", lo = 0, hi = 600000 },
  idle_timeout = { kind = "integer", lo = 1, hi = 3600 },
  max_response_bytes = { kind = "integer", lo = 1024, hi = 2 ^ 30 },
  credentials = { kind = "table" },
  insecure_skip_tls_verify = { kind = "boolean" },
}, { error = function(name) return raises(("option '%s'"):format(name)) end, valid = returns,
     unknown = raises("unknown option 'no_such_option'"), not_table = raises("bad argument #1 to 'new'") })
case("new", "new with a credentials table that is not a provider", function()
  return rrpc.new { endpoint = DISCARD, credentials = {} }
end, raises("option 'credentials' must be a provider"))
case("new", "new with a number as an option name", function()
  return rrpc.new(copy(NEW_BASE, 1, "x"))
end, raises("unknown option '1'"))

------------------------------------------------------------------------------------------
-- client:rrpc{...}, client:request(...), client:close(), and the same requests in a batch.

local client = rrpc.new(NEW_BASE)
local closed_client = rrpc.new(NEW_BASE)
closed_client:close()

local RRPC_BASE = { product_key = "pk", device_name = "dn", payload = "x" }
local RRPC_SPEC = {
  product_key = { kind = "string", required = true, choices = { "" } },
  device_name = { kind = "string", required = true, choices = { "" } },
  payload = { kind = "string", required = true, accepts = { "", ("\0"):rep(MAX_PAYLOAD) } },
  timeout = { kind = "integer", lo = 1000, hi = 8000 },
  topic = STRING_OPTION, iot_instance_id = STRING_OPTION,
  retry = { kind = "any" },
}
options("client:rrpc", "rrpc", function(request) return client:rrpc(request) end, RRPC_BASE, RRPC_SPEC, {
  error = function(name) return raises(("option '%s'"):format(name)) end, valid = returns_nil_err,
  unknown = raises("unknown option 'no_such_option'"), not_table = raises("bad argument #1 to 'rrpc'"),
})
case("client:rrpc", "rrpc with a payload one byte over the platform's limit", function()
  return client:rrpc(copy(RRPC_BASE, "payload", ("x"):rep(MAX_PAYLOAD + 1)))
end, raises("option 'payload' is 262145 bytes"))
for _, sample in ipairs(SAMPLES) do
  local label, value = sample[1], sample[2]
  local is_options = type(value) == "table" and value ~= HOSTILE and next(value) == nil
  if value ~= nil and value ~= false then
    case("client:rrpc", "rrpc with retry = " .. label, function()
      return client:rrpc(copy(RRPC_BASE, "retry", value))
    end, is_options and returns_nil_err or type(value) == "table" and survives or raises("option 'retry'"))
  end
end
for _, policy in ipairs { false, rrpc.retry.none, { max_attempts = 2, base_delay = 0 } } do
  case("client:rrpc", "rrpc with retry = " .. tostring(policy), function()
    return client:rrpc(copy(RRPC_BASE, "retry", policy))
  end, returns_nil_err)
end
case("client:rrpc", "rrpc with retry options out of range", function()
  return client:rrpc(copy(RRPC_BASE, "retry", { max_attempts = 0 }))
end, raises("option 'max_attempts'"))

-- Calls that are not on an open client, for every method.
local METHODS = {
  rrpc = function(self) return client.rrpc(self, RRPC_BASE) end,
  request = function(self) return client.request(self, "Pub", {}) end,
}
for _, mname in ipairs(sorted_keys(METHODS)) do
  for _, sample in ipairs(SAMPLES) do
    case("client:" .. mname, ("%s on self = %s"):format(mname, sample[1]), function()
      return METHODS[mname](sample[2])
    end, raises(("bad self to '%s'"):format(mname)))
  end
  case("client:" .. mname, mname .. " on a closed client", function()
    return METHODS[mname](closed_client)
  end, raises(("attempt to use a closed client in '%s'"):format(mname)))
end
for _, sample in ipairs(SAMPLES) do
  case("client:close", "close on self = " .. sample[1], function() return client.close(sample[2]) end, returns)
end
case("client:close", "close twice", function() closed_client:close() end, returns)

-- request(action, params, opts)
local function request_with(action, params, opts)
  return function() return client:request(action, params, opts) end
end
for _, sample in ipairs(SAMPLES) do
  local label, value = sample[1], sample[2]
  if not (type(value) == "string" and value:find("^%a[%w]*$")) then
    case("client:request", "request action = " .. label, request_with(value, {}),
      raises("bad argument #1 to 'request' (action name expected"))
  end
  if value and type(value) ~= "table" then -- nil and false: no parameters
    case("client:request", "request params = " .. label, request_with("Pub", value),
      raises("bad argument #2 to 'request' (table expected"))
  end
end
for _, action in ipairs { "R Rpc", "1Rpc", "R-Rpc", "RRpc\0", "" } do
  case("client:request", ("request action = %q"):format(action), request_with(action, {}),
    raises("bad argument #1 to 'request'"))
end
table_contents("client:request", "request params", function(params) return client:request("Pub", params) end, {
  good = returns_nil_err, value = raises("string, number or boolean value expected"),
  name = raises("bad argument #2 to 'request' (parameter"),
})
for _, name in ipairs { "AccessKeyId", "Action", "Format", "Signature", "SignatureMethod", "SignatureNonce",
                        "SignatureVersion", "Timestamp", "Version", "SecurityToken", "RegionId" } do
  case("client:request", "request with the reserved parameter " .. name, request_with("Pub", { [name] = "x" }),
    raises(("parameter \"%s\": set by the client"):format(name)))
end
options("client:request", "request opts", function(opts) return client:request("Pub", {}, opts) end, {}, {
  timeout = { kind = "integer", lo = 1, hi = 600000 },
  retry = { kind = "any" },
}, { error = function(name) return raises(("option '%s'"):format(name)) end, valid = returns_nil_err,
     unknown = raises("unknown option 'no_such_option'"), optional = true, false_is_default = true,
     not_table = raises("bad argument #3 to 'request' (table expected") })

-- The same requests in a batch: never raised, each an "invalid" outcome naming the field.
local function batch_of_one(request)
  local outcomes = rrpc.batch(client, { request }, { retry = false })
  return outcomes[1]
end
options("batch", "batch request", batch_of_one, RRPC_BASE, RRPC_SPEC, {
  error = function(name) return invalid(("option '%s'"):format(name)) end, valid = sent,
  unknown = invalid("unknown option 'no_such_option'"), not_table = invalid("table expected"), optional = true,
})

------------------------------------------------------------------------------------------
-- rrpc.batch and rrpc.each: the client, the requests, the options.

for _, f in ipairs {
  { "batch", function(c, requests, opts) return rrpc.batch(c, requests, opts) end },
  { "each", function(c, requests, opts)
      for _ in rrpc.each(c, requests, opts) do end
    end },
} do
  local fname, run = f[1], f[2]
  for _, sample in ipairs(SAMPLES) do
    local label, value = sample[1], sample[2]
    case("batch", ("%s client = %s"):format(fname, label), function() return run(value, {}) end,
      raises(("bad argument #1 to '%s' (rrpc client expected"):format(fname)))
    if type(value) ~= "table" and type(value) ~= "function" then
      case("batch", ("%s requests = %s"):format(fname, label), function() return run(client, value) end,
        raises(("bad argument #2 to '%s'"):format(fname)))
    end
  end
  case("batch", fname .. " on a closed client", function() return run(closed_client, {}) end,
    raises("attempt to use a closed client"))
  case("batch", fname .. " from an iterator that raises", function()
    return run(client, function() error("the source broke") end)
  end, raises("the source broke"))
  case("batch", fname .. " from an iterator of non-tables", function()
    local n = 0
    return run(client, function() n = n + 1; if n <= 3 then return n end end, { retry = false })
  end, returns)
  options("batch", fname .. " opts", function(opts) return run(client, {}, opts) end, {}, {
    concurrency = { kind = "integer", lo = 1, hi = 100000 },
    qps = { kind = "integer", lo = 1, hi = 1000000 },
    burst = { kind = "integer", lo = 1, hi = 1000 }, -- at most qps (default 1000)
    deadline_ms = { kind = "integer", lo = 1, hi = 2 ^ 31 },
    on_progress = { kind = "function" },
    defaults = { kind = "table" },
    retry = { kind = "any" },
  }, { error = function(name) return raises(("option '%s'"):format(name)) end, valid = returns,
       unknown = raises("unknown option 'no_such_option'"), optional = true, false_is_default = true,
       not_table = raises(("bad argument #3 to '%s' (table expected"):format(fname)) })
  for _, sample in ipairs(SAMPLES) do
    local value = sample[2]
    -- a table is a policy's options, as client:rrpc takes them
    if value ~= nil and value ~= false and type(value) ~= "table" then
      case("batch", ("%s retry = %s"):format(fname, sample[1]), function()
        return run(client, {}, { retry = value })
      end, raises("option 'retry' must be a policy"))
    end
  end
  case("batch", fname .. " retry as a table of a policy's options", function()
    return run(client, {}, { retry = { max_attempts = 2 } })
  end, returns)
  case("batch", fname .. " retry as a table with a bad option", function()
    return run(client, {}, { retry = { max_attempts = 0 } })
  end, raises("bad argument #3 to '" .. fname .. "' (option 'retry': option 'max_attempts' must be in 1..100, got 0)"))
  case("batch", fname .. " burst above qps", function() return run(client, {}, { qps = 5, burst = 6 }) end,
    raises("option 'burst' must be in 1..5"))
  case("batch", fname .. " defaults of the wrong types", function()
    local outcome
    if fname == "batch" then
      outcome = rrpc.batch(client, { {} }, { defaults = { product_key = 5 } })[1]
    else
      for _, res, err in rrpc.each(client, { {} }, { defaults = { product_key = 5 } }) do outcome = { res = res, err = err } end
    end
    return outcome
  end, invalid("option 'product_key' must be a string"))
end

------------------------------------------------------------------------------------------
-- rrpc.retry.new{...} and a policy's methods.

options("retry", "retry.new", rrpc.retry.new, {}, {
  max_attempts = { kind = "integer", lo = 1, hi = 100 },
  base_delay = { kind = "integer", lo = 0, hi = 3600000 },
  throttle_delay = { kind = "integer", lo = 0, hi = 3600000 },
  max_delay = { kind = "integer", lo = 0, hi = 3600000 },
  retry_offline = { kind = "boolean" }, retry_halfconn = { kind = "boolean" },
  retry_maybe_delivered = { kind = "boolean" },
}, { error = function(name) return raises(("option '%s'"):format(name)) end, valid = returns,
     unknown = raises("unknown option 'no_such_option'"), optional = true, false_is_default = true,
     not_table = raises("bad argument #1 to 'retry.new' (table expected") })
for _, sample in ipairs(SAMPLES) do
  local value = sample[2]
  local t = type(value)
  if t ~= "table" then
    -- a string or a file can be indexed: it is no error of any kind, so nothing is allowed
    local outcome = (t == "string" or t == "userdata") and returns or raises("'err'")
    case("retry", "policy:allows(" .. sample[1] .. ")", function() return rrpc.retry.default:allows(value) end, outcome)
    case("retry", "policy:delay(" .. sample[1] .. ", 1)", function() return rrpc.retry.default:delay(value, 1) end,
      outcome)
  end
end

------------------------------------------------------------------------------------------
-- rrpc.credentials: these do not check their arguments, so a wrong one gives the runtime's
-- error (or nil, err), which must still be an error and never a crash. A provider made of
-- wrong values fails at the first call, naming the field.

local NO_ENVIRONMENT = function(name) return name == "ALIBABA_CLOUD_ECS_METADATA_DISABLED" and "true" or nil end
local CREDENTIALS = {
  static = function(v) return rrpc.credentials.static(v) end,
  environment = function(v) return rrpc.credentials.environment(v) end,
  cli_profile = function(v) return rrpc.credentials.cli_profile(v) end,
  ini_file = function(v) return rrpc.credentials.ini_file(v) end,
  chain = function(v) return rrpc.credentials.chain(v) end,
  provider = function(v) return rrpc.credentials.provider("spec", v):get() end,
}
-- What chain() can index (nil, a string, a table, a file) has it read this machine's
-- environment and ask the ECS metadata service: left to the fields' cases below.
local CHAIN_CANNOT_INDEX = { number = true, boolean = true, ["function"] = true, thread = true }
for _, fname in ipairs(sorted_keys(CREDENTIALS)) do
  for _, sample in ipairs(SAMPLES) do
    local value = sample[2]
    if fname ~= "chain" or CHAIN_CANNOT_INDEX[type(value)] then
      case("credentials", ("credentials.%s(%s)"):format(fname, sample[1]), function()
        return CREDENTIALS[fname](value)
      end, survives)
    end
  end
end
for _, field in ipairs { "path", "profile" } do
  for _, fname in ipairs { "cli_profile", "ini_file" } do
    for _, sample in ipairs(SAMPLES) do
      if type(sample[2]) ~= "string" then
        case("credentials", ("credentials.%s{ %s = %s }"):format(fname, field, sample[1]), function()
          return CREDENTIALS[fname](copy({ path = "/nonexistent/rrpc", profile = "default" }, field, sample[2]))
        end, survives)
      end
    end
  end
end
for _, field in ipairs { "getenv", "home", "profile" } do
  for _, sample in ipairs(SAMPLES) do
    -- a getenv that is absent or a function would read real settings (see above)
    local reads_settings = field == "getenv" and (sample[2] == nil or type(sample[2]) == "function")
    if not reads_settings then
      case("credentials", ("credentials.chain{ %s = %s }"):format(field, sample[1]), function()
        return CREDENTIALS.chain(copy({ getenv = NO_ENVIRONMENT, home = "/nonexistent" }, field, sample[2]))
      end, survives)
    end
  end
end
for _, field in ipairs { "access_key_id", "access_key_secret", "security_token" } do
  for _, sample in ipairs(SAMPLES) do
    local value = sample[2]
    if value ~= nil and type(value) ~= "string" then
      case("credentials", ("a static provider with %s = %s, at the first call"):format(field, sample[1]), function()
        local provider = rrpc.credentials.static(copy(KEYS, field, value))
        local c = rrpc.new { endpoint = DISCARD, credentials = provider }
        local ok, err = pcall(c.rrpc, c, RRPC_BASE)
        c:close()
        if not ok then error(err, 0) end
      end, raises(("'%s'"):format(field)))
    end
  end
end

------------------------------------------------------------------------------------------
-- The C core's own objects: core.session{...}, core.pool{...} and their methods.

-- Every number and the budget are required: the C core holds no defaults (rrpc.limits does).
local C_NUMBER = { connect_timeout = { 1, 600000 }, idle_timeout = { 1, 3600 }, max_response_bytes = { 1024, 2 ^ 30 },
                   receive_buffer_bytes = { 1024, 10 * 1024 * 1024 } }
local function c_options(extra)
  local spec = {
    ca_file = { kind = "string" }, ca_path = { kind = "string" }, user_agent = { kind = "string" },
    proxy = { kind = "string" }, no_proxy = { kind = "string" }, verify = { kind = "any" },
    response_budget = { kind = "userdata", required = true },
  }
  for name, range in pairs(C_NUMBER) do spec[name] = { kind = "cnumber", lo = range[1], hi = range[2], required = true } end
  for name, o in pairs(extra or {}) do spec[name] = o end
  return spec
end
local C_BASE = http.options()
C_BASE.max_connections = nil
options("core", "session", function(o) core.session(o):close() end, C_BASE, c_options(), {
  error = field_error, valid = returns, not_table = c_argument(1),
})
options("core", "pool", function(o) core.pool(o):close() end, http.options(), c_options {
  max_connections = { kind = "cnumber", lo = 1, hi = 100000, required = true },
}, { error = field_error, valid = returns, not_table = c_argument(1) })

-- core.budget(bytes) and the budget a session or pool takes; core.parse_url(url).
positional("core", "budget", core.budget, { 4096 }, 1, "cnumber", function() return raises("number expected") end)
for _, bytes in ipairs { 0, 1023, 2 ^ 41, 0 / 0, math.huge, -math.huge } do
  case("core", ("budget(%s)"):format(tostring(bytes)), function() return core.budget(bytes) end,
    raises("bytes in 1024..2^40 expected"))
end
for _, value in ipairs { "64", 64, {}, http.session {} } do
  case("core", ("session{ response_budget = %s }"):format(type(value)), function()
    return core.session(copy(C_BASE, "response_budget", value))
  end, raises("bad field 'response_budget' (rrpc.core.budget expected"))
end
positional("core", "parse_url", core.parse_url, { "http://h" }, 1, "string", function() return raises("string expected") end)
case("core", "parse_url with a NUL byte", function()
  local scheme, why = core.parse_url("http://h\0x")
  assert.is_nil(scheme)
  assert.is_string(why)
end, returns)

local session = http.session {}
local closed_session = http.session {}
closed_session:close()
local PERFORM_ARGS = { "GET", DISCARD .. "/", {}, "", 1000 }
local function perform(args) return results(pack(session:perform(unpack(args, 1, 5)))) end
for position, kind in ipairs { "string", "string", "table", "string", "cnumber" } do
  positional("core", "session:perform", function(...) return perform(pack(...)) end, PERFORM_ARGS, position, kind,
    c_argument)
end
for _, v in ipairs { 0, -1, 0 / 0, math.huge, -math.huge } do
  case("core", "session:perform timeout = " .. tostring(v), function()
    return perform(copy(PERFORM_ARGS, 5, v))
  end, raises("bad argument #5 to 'perform'"))
end
case("core", "session:perform timeout = 1.5", function() return perform(copy(PERFORM_ARGS, 5, 1.5)) end,
  HAS_INTEGERS and raises("bad argument #5 to 'perform'") or returns_nil_err)
for _, method in ipairs { "DELETE", "get", "", "POST\0" } do
  case("core", ("session:perform method %q"):format(method), function()
    return perform(copy(PERFORM_ARGS, 1, method))
  end, raises("bad argument #1 to 'perform'"))
end
for _, url in ipairs { "", "not a url", "ftp://127.0.0.1/", "http://", "http://127.0.0.1:0/", "http://127.0.0.1:99999/" } do
  case("core", ("session:perform url %q"):format(url), function() return perform(copy(PERFORM_ARGS, 2, url)) end,
    returns_nil_err)
end
for _, headers in ipairs { { [1] = "x" }, { A = 1 }, { A = {} }, { A = true } } do
  case("core", "session:perform with a header that is not two strings", function()
    return perform(copy(PERFORM_ARGS, 3, headers))
  end, raises("header names and values must be strings"))
end
case("core", "session:perform on a closed session", function() return closed_session:perform("GET", DISCARD, {}, "", 1) end,
  raises("closed rrpc session"))
case("core", "session:close twice", function() closed_session:close() end, returns)

local POOL_ARGS = { 1, "GET", DISCARD .. "/", {}, "", 1000 }
-- Each case its own pool, closed after: a call that is accepted stays in flight.
local function with_pool(fn)
  local pool = http.pool {}
  local ok, a, b = pcall(fn, pool)
  pool:close()
  if not ok then error(a, 0) end
  return a, b
end
for position, kind in ipairs { "cnumber", "string", "string", "table", "string", "cnumber" } do
  positional("core", "pool:add", function(...)
    local args = pack(...)
    return with_pool(function(pool) return results(pack(pool:add(unpack(args, 1, 6)))) end)
  end, POOL_ARGS, position, kind, c_argument)
end
-- pool:run(wait_ms = 0) and pool:cancel(token), each called as a method
for _, m in ipairs {
  { "run", function(pool, v) return results(pack(pool:run(v))) end, { 0, 600000 } },
  { "cancel", function(pool, v) return results(pack(pool:cancel(v))) end },
} do
  local mname, call, range = m[1], m[2], m[3]
  for _, sample in ipairs(SAMPLES) do
    local value = sample[2]
    if not KINDS.cnumber(value) and not (range and value == nil) then
      case("core", ("pool:%s(%s)"):format(mname, sample[1]), function()
        return with_pool(function(pool) return call(pool, value) end)
      end, c_argument(1))
    end
  end
  for _, v in ipairs(range and { range[1] - 1, range[2] + 1, 0 / 0 } or {}) do
    case("core", ("pool:%s(%s)"):format(mname, tostring(v)), function()
      return with_pool(function(pool) return call(pool, v) end)
    end, c_argument(1))
  end
end
case("core", "pool:cancel of an unknown call", function()
  return with_pool(function(pool) assert(pool:cancel(12345) == false) end)
end, returns)
for _, mname in ipairs { "add", "run", "cancel", "count" } do
  case("core", ("pool:%s on a closed pool"):format(mname), function()
    local pool = http.pool {}
    pool:close()
    pool:close() -- idempotent
    return pool[mname](pool, 1)
  end, raises("closed rrpc pool"))
end
for _, m in ipairs {
  { "perform", http.session, "rrpc.session" }, { "add", http.pool, "rrpc.pool" }, { "run", http.pool, "rrpc.pool" },
} do
  local mname, make, class = m[1], m[2], m[3]
  local method = make({})[mname]
  for _, sample in ipairs(SAMPLES) do
    case("core", ("%s on self = %s"):format(mname, sample[1]), function() return method(sample[2]) end,
      raises(class))
  end
end
case("core", "a session's perform on a pool", function()
  return with_pool(function(pool) return session.perform(pool, "GET", DISCARD, {}, "", 1) end)
end, raises("rrpc.session expected"))

positional("core", "sleep", core.sleep, { 0 }, 1, "cnumber", c_argument)
for _, v in ipairs { -1, 3600001, 0 / 0, math.huge, -math.huge } do
  case("core", ("sleep(%s)"):format(tostring(v)), function() return core.sleep(v) end, c_argument(1))
end
for _, fname in ipairs { "nonce", "timestamp", "platform", "monotime" } do
  for _, sample in ipairs(SAMPLES) do
    case("core", ("%s(%s): arguments ignored"):format(fname, sample[1]), function() return core[fname](sample[2]) end,
      returns)
  end
end
for _, sample in ipairs(SAMPLES) do
  case("core", "is_error(" .. sample[1] .. ")", function() assert(rrpc.is_error(sample[2]) == false) end, returns)
end

------------------------------------------------------------------------------------------

describe("bad input through the Lua API", function()
  teardown(function()
    client:close()
    session:close()
  end)

  it("has hundreds of cases", function()
    assert.is_true(#cases >= 500, #cases .. " cases")
  end)

  for i, c in ipairs(cases) do
    it(("#%d %s: %s"):format(i, c.group, c.label), function()
      c.outcome(pcall(c.call))
    end)
  end
end)
