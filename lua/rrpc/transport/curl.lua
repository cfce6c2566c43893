-- The libcurl transport: a session (one easy handle, one kept-alive connection) for
-- single calls and fetches, a pool (the multi interface, epoll) for batches. Outside
-- this file and rrpc.core, nothing touches libcurl.
--
-- The contract every transport keeps (rrpc.ngx's is lua/rrpc/transport/ngx.lua):
--
--   open(settings) --> state | nil, option      the option it cannot take
--     settings: connect_timeout, idle_timeout (s), max_response_bytes, max_response_memory,
--     receive_buffer_bytes, ca_file, ca_path, user_agent, proxy, no_proxy, verify,
--     http_version ("1.1" | "2"), quota
--     (rrpc.quota, or nil) and max_quota_wait (ms), and the transport's own.
--   send(state, url, headers, body, timeout_ms) --> status, headers, body | nil, err
--     one POST to the platform; response headers indexable by lower-case name (a table,
--     or rrpc.core's rrpc.headers object, which reads them only when asked: no pairs() on
--     LuaJIT); err an rrpc error whose `delivered` is honest (the transport knows whether
--     the request left).
--   fetch(state, method, url, headers, body, timeout_ms) --> status, headers, body | nil, err
--     any other HTTP the library does (the ECS metadata service), the way the platform
--     is reached; its headers a table with lower-case names (a credential provider of
--     the user's is handed this fetch).
--   admit(state, call) --> nil | err             before each attempt of a single call:
--     waits for a slot of the quota (rrpc.quota.wait, within max_quota_wait), or refuses
--     (nothing sent).
--   sleep(state, ms)                              between attempts.
--   pool(state, concurrency) --> pool             for batches:
--     pool:add(token, url, headers, body, timeout_ms)
--     pool:run(wait_ms) --> { token, status, headers, body,  token, false, err, false, ... }
--       completions, four slots each (no table each: a batch reads thousands a second),
--       an answer's or a failure's (err an rrpc error); waits up to wait_ms for them
--       (also when none is in flight), and no longer than the quota's own I/O
--       (quota:fd()) takes to be ready
--     pool:cancel(token) --> true if it was in flight; pool:count() --> calls in flight
--   send_signed(state, signer, action, params, timeout_ms) --> as send   (optional)
--     a transport that signs in C: signer from rrpc.core.signer, the request as
--     build_request would make it; its pool then has add_signed(token, signer, action,
--     params, timeout_ms) beside add.
--   limiter(state, qps, burst, now) --> limiter   a batch's pacing: limiter:take(now)
--     --> 0 (go, counted) or seconds to wait; within the quota's when there is one.
--   warn(state, message)                          a line for the operator (a hook that raised).
--   close(state)
local core = require "rrpc.core"
local errors = require "rrpc.errors"
local limiter = require "rrpc.limiter"
local quota = require "rrpc.quota"

local curl = {}

local SETTINGS = { "connect_timeout", "idle_timeout", "max_response_bytes", "receive_buffer_bytes",
                   "ca_file", "ca_path", "user_agent", "proxy", "no_proxy", "verify",
                   "http_version" }

function curl.open(settings)
  -- the session and the pool resume each other's TLS sessions
  local options = { response_budget = core.budget(settings.max_response_memory),
                    tls_sessions = core.tls_sessions() }
  for _, name in ipairs(SETTINGS) do options[name] = settings[name] end
  local session, refused = core.session(options)
  if not session then return nil, refused end
  return { options = options, session = session, quota = settings.quota, max_quota_wait = settings.max_quota_wait }
end

local function perform(state, method, url, headers, body, timeout_ms)
  local status, h, b, sent = state.session:perform(method, url, headers, body, timeout_ms)
  if not status then return nil, errors.network(h, b, sent) end
  return status, h, b
end

function curl.send(state, url, headers, body, timeout_ms)
  return perform(state, "POST", url, headers, body, timeout_ms)
end

curl.fetch = perform

function curl.send_signed(state, signer, action, params, timeout_ms)
  local status, h, b, sent = state.session:perform_signed(signer, action, params, timeout_ms)
  if not status then return nil, errors.network(h, b, sent) end
  return status, h, b
end

local function sleep(seconds)
  core.sleep(seconds * 1000)
end

function curl.admit(state)
  if state.quota then
    return quota.wait(state.quota, state.max_quota_wait, { now = core.monotime, sleep = sleep })
  end
end

function curl.sleep(_, ms)
  core.sleep(ms)
end

-- The C pool's failures (token, sent, code, message) become rrpc errors.
local Pool = {}
Pool.__index = Pool

function Pool:add(token, url, headers, body, timeout_ms)
  self.pool:add(token, "POST", url, headers, body, timeout_ms)
end

function Pool:add_signed(token, signer, action, params, timeout_ms)
  self.pool:add_signed(token, signer, action, params, timeout_ms)
end

function Pool:run(wait_ms)
  local fd, write
  if self.quota then fd, write = self.quota:fd() end
  local completions = self.pool:run(wait_ms, fd, write)
  for i = 2, #completions, 4 do
    local sent = completions[i]
    if type(sent) == "boolean" then -- not a status: a failure
      completions[i], completions[i + 1], completions[i + 2] =
        false, errors.network(completions[i + 1], completions[i + 2], sent), false
    end
  end
  return completions
end

function Pool:cancel(token)
  return self.pool:cancel(token)
end

function Pool:count()
  return self.pool:count()
end

-- One pool per client, kept between batches; a new one when it is too small or still
-- holds calls of an abandoned stream.
function curl.pool(state, concurrency)
  local kept = state.pool
  if kept and (kept.size < concurrency or kept.pool:count() > 0) then
    kept.pool:close()
    kept = nil
  end
  if not kept then
    local options = { max_connections = concurrency }
    for k, v in pairs(state.options) do options[k] = v end
    kept = setmetatable({ pool = core.pool(options), size = concurrency, quota = state.quota }, Pool)
    state.pool = kept
  end
  return kept
end

function curl.limiter(state, qps, burst, now)
  local own = limiter.new(qps, burst, now)
  if state.quota then return limiter.within(own, state.quota) end
  return own
end

function curl.warn(_, message)
  io.stderr:write(message, "\n")
end

function curl.close(state)
  state.session:close()
  if state.pool then state.pool.pool:close() end
end

return curl
