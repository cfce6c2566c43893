-- rrpc.quota: one limit of calls per second, shared by every call of a client (single
-- calls before each attempt, batches at each send; a batch's own qps still paces it), and
-- with Redis by every process of every host on the same key.
--
--   rrpc.quota.process{ qps = 1000, burst = qps / 10 }      this process's calls
--   rrpc.quota.redis{ url = "redis://host:6379/0", key = "<account>", qps = 1000, ... }
--   inside nginx: require("rrpc.ngx").quota.redis{...} (the same options, on cosockets)
--   and require("rrpc.ngx").quota.shared_dict{ name = "rrpc_quota", qps = 1000 } (every
--   worker of one nginx)
--   rrpc.new{ ..., quota = q, max_quota_wait = 1000 }
--
-- The interface every quota keeps (lua/rrpc/quota/*.lua and the process one below):
--   q:take(now, holder, horizon) --> 0 (a slot now, counted) | seconds until one may come
--     now: core.monotime(); holder: a table of the caller's in which a quota that reserves
--     ahead (shared_dict) keeps the caller's reservation; horizon: how many seconds ahead
--     such a reservation may be made (default: as far as it takes).
--   q:drop(holder)                gives back what holder holds
--   q:pending() --> bool          whether the quota is asking for slots (a Redis lease in
--     flight): what take() answers then is only when to look again
--   q:fd() --> fd, write | nil    a socket of the quota's own I/O to watch while it waits
--     for it (a batch's pool wakes on it)
--   q:idle(seconds, sleep)        waits up to seconds, less when the quota's I/O is ready
--     (sleep(seconds): the caller's own way of waiting)
--   q:state() --> "shared" | "fallback" | "local", why
--   q:stats() --> { round_trips =, ... }
--   q:close()
--   q.qps, q.kind ("process", "shared_dict", "redis")
local args = require "rrpc.args"
local errors = require "rrpc.errors"
local limiter = require "rrpc.limiter"
local limits = require "rrpc.limits"

local quota = {}

-- The metatables of quotas, so that rrpc.new can tell one.
local classes = setmetatable({}, { __mode = "k" })

local function none() end

--- quota.class(methods) --> methods, a quota's metatable, with the interface's defaults
function quota.class(methods)
  methods.__index = methods
  methods.drop = methods.drop or none
  methods.pending = methods.pending or function() return false end
  methods.fd = methods.fd or none
  methods.close = methods.close or none
  methods.idle = methods.idle or function(_, seconds, sleep) sleep(seconds) end
  methods.stats = methods.stats or function() return { round_trips = 0 } end
  classes[methods] = true
  return methods
end

function quota.is_quota(value)
  return type(value) == "table" and classes[getmetatable(value)] == true
end

-- The process's own: a token bucket and a log of the last qps sends (rrpc.limiter).
local Process = quota.class { kind = "process" }

local PROCESS_OPTIONS = {
  qps = { type = "integer", range = limits.QUOTA_QPS_RANGE },
  burst = { type = "integer", range = limits.QUOTA_QPS_RANGE },
}

--- rrpc.quota.process{ qps = 1000, burst = qps / 10 } --> quota
function quota.process(opts)
  opts = opts or {}
  args.check("process", 1, opts, PROCESS_OPTIONS, 2)
  local qps = opts.qps or limits.QUOTA_QPS_RANGE.default
  if opts.burst and opts.burst > qps then
    args.raise("process", 1, ("option 'burst' must be in 1..%d, got %d"):format(qps, opts.burst), 2)
  end
  local burst = opts.burst or math.max(1, math.floor(qps / 10))
  return setmetatable({ qps = qps, limiter = limiter.new(qps, burst, require("rrpc.core").monotime()) },
                      Process)
end

function Process:take(now)
  return self.limiter:take(now)
end

function Process.state()
  return "local", "this process's calls only"
end

--- quota.wait(q, max_wait_ms, env) --> nil (a slot: send now) | err (nothing sent)
-- Before each attempt of a single call. env: now() (core.monotime), sleep(seconds),
-- gone() --> err | nil (the caller has left), holder. A slot that cannot come within
-- max_wait_ms fails at once as Throttling.Quota, with retry_after; while the quota is
-- still asking (a Redis lease, bounded by its timeout) the call waits for the answer.
function quota.wait(q, max_wait_ms, env)
  local holder = env.holder or {}
  local started = env.now()
  local budget = max_wait_ms / 1000
  while true do
    local gone = env.gone and env.gone()
    if gone then
      q:drop(holder)
      return gone
    end
    local t = env.now()
    local left = math.max(budget - (t - started), 0)
    local wait = q:take(t, holder, left)
    if wait == 0 then return nil end
    if wait - left > 0.001 and not q:pending() then -- max_quota_wait is in whole ms
      q:drop(holder)
      local retry_after = math.max(1, math.ceil(wait * 1000))
      return errors.quota_refused(("no slot of the shared quota (%d calls/s) within max_quota_wait (%d ms), "
        .. "the next in %d ms; not sent"):format(q.qps, max_wait_ms, retry_after), retry_after)
    end
    q:idle(wait, env.sleep)
  end
end

-- Redis --------------------------------------------------------------------------------

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

--- quota.parse_redis_url(url) --> { tls, host, port, db, username, password } | nil, why
-- redis://[[username]:password@]host[:port][/db], rediss:// for TLS; host a name, an
-- IPv4 address or [IPv6].
function quota.parse_redis_url(url)
  local scheme, rest = url:match("^(rediss?)://(.*)$")
  if not scheme then return nil, "must start with redis:// or rediss://" end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  hostport = hostport or authority
  local username, password
  if userinfo then
    local u, p = userinfo:match("^([^:]*):(.*)$")
    if u then username, password = u, p else password = userinfo end
    username = username ~= "" and percent_decode(username) or nil
    password = password ~= "" and percent_decode(password) or nil
  end
  local host, port = hostport:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([%w.%-]+):?(%d*)$") end
  if not host or host == "" then return nil, "has no host" end
  port = port ~= "" and tonumber(port) or limits.QUOTA_REDIS_PORT
  if port < 1 or port > 65535 then return nil, "has a port outside 1..65535" end
  local db = 0
  if path ~= "" and path ~= "/" then
    local digits = path:match("^/(%d+)$")
    if not digits then return nil, "may have only a database number after the host (/0)" end
    db = tonumber(digits)
    if db > limits.QUOTA_REDIS_DB.max then return nil, "has a database number out of range" end
  end
  return { tls = scheme == "rediss", host = host, port = port, db = db, username = username,
           password = password }
end

local function redis_url(value)
  local _, why = quota.parse_redis_url(value)
  -- the URL may hold a password: never shown
  if why then return "option 'url' " .. why .. " (redis://[[user]:password@]host[:port][/db])" end
end

local function key_name(value)
  if not value:match("^[%w%.%-_:@]+$") or #value > 200 then
    return "option 'key' must be 1..200 letters, digits or . - _ : @"
  end
end

quota.REDIS_OPTIONS = {
  url = { type = "string", required = true, check = redis_url },
  key = { type = "string", required = true, check = key_name },
  qps = { type = "integer", range = limits.QUOTA_QPS_RANGE },
  fallback_qps = { type = "integer", range = limits.QUOTA_QPS_RANGE },
  timeout = { type = "integer", range = limits.QUOTA_REDIS_TIMEOUT },
  username = { type = "string" },
  password = { type = "string" },
  -- rediss://: the name Redis's certificate is checked for (default: the URL's host)
  server_name = { type = "string" },
  on_state = { type = "function" },
}

--- quota.redis_with(opts, link, fname, level) --> quota
-- link: the Redis client of the world the quota lives in (lua/rrpc/transport/redis.lua
-- in plain Lua, transport/ngx_redis.lua inside nginx); it may refuse a URL (its reason).
function quota.redis_with(opts, link, fname, level)
  args.check(fname, 1, opts, quota.REDIS_OPTIONS, level + 1)
  local qps = opts.qps or limits.QUOTA_QPS_RANGE.default
  local fallback_qps = opts.fallback_qps or math.max(1, math.floor(qps / limits.QUOTA_FALLBACK_SHARE))
  if fallback_qps > qps then
    args.raise(fname, 1, ("option 'fallback_qps' must be in 1..%d (qps), got %d"):format(qps, fallback_qps),
               level + 1)
  end
  local target = quota.parse_redis_url(opts.url)
  target.username = opts.username or target.username
  target.password = opts.password or target.password
  target.timeout_ms = opts.timeout or limits.QUOTA_REDIS_TIMEOUT.default
  target.server_name = opts.server_name or target.host
  local refused = link.refuses(target)
  if refused then args.raise(fname, 1, refused, level + 1) end
  return require("rrpc.quota.redis").new {
    link = link, target = target, key = opts.key, qps = qps, fallback_qps = fallback_qps,
    on_state = opts.on_state,
  }
end

--- rrpc.quota.redis{ url =, key =, qps = 1000, fallback_qps = qps / 8, timeout = 200,
--                    username =, password =, server_name =, on_state = function(state, why, line) }
-- In plain Lua, through hiredis (rrpc.core); inside nginx use rrpc.ngx.quota.redis.
function quota.redis(opts)
  if rawget(_G, "ngx") then
    error("rrpc.quota.redis would block nginx's worker: use require(\"rrpc.ngx\").quota.redis", 2)
  end
  return quota.redis_with(opts, require "rrpc.transport.redis", "redis", 2)
end

return quota
