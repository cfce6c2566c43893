-- The nginx transport (rrpc.ngx): every call is a subrequest to an internal location that
-- proxies to the platform with upstream keep-alive and TLS verification, so no worker
-- ever blocks. Each call's own timeouts reach nginx through the upstream's
-- balancer_by_lua (rrpc.ngx.balance); the metadata service is fetched through a second
-- internal location. Batches run as light threads; the client's quota (rrpc.quota: a
-- lua_shared_dict for every worker, or Redis for every host) is waited for here. The
-- contract is lua/rrpc/transport/curl.lua's.
local ngx = ngx
local semaphore = require "ngx.semaphore"
local core = require "rrpc.core"
local errors = require "rrpc.errors"
local limiter = require "rrpc.limiter"
local quota = require "rrpc.quota"

local transport = {}

-- Subrequests (ngx.location.capture) exist only in these phases.
local NETWORK_PHASES = { rewrite = true, access = true, content = true }

-- The headers a signed request carries, as the location's variables ($rrpc_x_acs_date, ...).
transport.FORWARDED_HEADERS = {
  "host", "content-type", "user-agent", "authorization", "x-acs-action", "x-acs-version",
  "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256", "x-acs-security-token",
}
-- The headers a fetch may carry (the metadata service's), and the fetch location's
-- variables that carry them.
transport.FETCH_HEADERS = {
  ["x-aliyun-ecs-metadata-token"] = "rrpc_fetch_token",
  ["x-aliyun-ecs-metadata-token-ttl-seconds"] = "rrpc_fetch_token_ttl",
}

local function check_phase()
  local phase = ngx.get_phase()
  if not NETWORK_PHASES[phase] then
    error(("rrpc.ngx: cannot call the platform in the '%s' phase: nginx subrequests need the " ..
      "rewrite, access or content phase"):format(phase), 0)
  end
end

-- Clients that leave. With `lua_check_client_abort on`, nginx notices a downstream
-- client that closes its connection and then either runs the request's ngx.on_abort
-- callback or, when there is none, kills every light thread of the request at once
-- (sleeping calls included) and ends it with 499. A callback of the user's that does not
-- call ngx.exit lets the request run on, so rrpc.ngx cannot leave this to nginx's
-- default: the first call of a request registers rrpc's own callback. It marks the
-- request's client as gone, gives back the quota slots its waiting calls hold, then
-- calls the user's callback if one was given through rrpc_ngx.on_abort, or else ends the
-- request as nginx would (ngx.exit(499)). Every call checks the mark just before it is
-- sent, so nothing is sent for a client that has gone, whatever the callback does;
-- calls already in flight are ended with the request by nginx, or finish.
local CLIENT_GONE_MESSAGE = "the downstream client closed its connection before the call was sent; not sent"

local warned = {} -- once per worker, about each reason why rrpc cannot see clients leave

local function warn_once(reason)
  if warned[reason] then return end
  warned[reason] = true
  local why = reason == "duplicate call"
    and "an ngx.on_abort callback other than rrpc's is registered (register yours with rrpc_ngx.on_abort)"
    or reason
  ngx.log(ngx.WARN, "rrpc.ngx: ", why, ": calls of clients that have gone cannot be held back")
end

local function wake_all(sema)
  local waiting = -sema:count()
  if waiting > 0 then sema:post(waiting) end
end

local function client_left(rs)
  rs.gone = true
  for slot in pairs(rs.held) do -- emptied in place: the quota's holders refer to it
    slot.quota:release(slot.second)
    rs.held[slot] = nil
  end
  if rs.wake then wake_all(rs.wake) end
  if rs.user_on_abort then return rs.user_on_abort() end
  return ngx.exit(499)
end

-- The request's state: whether its client has gone and the quota slots its waiting
-- calls hold. Registers rrpc's on_abort callback on first use.
function transport.request_state(user_on_abort)
  check_phase()
  local ctx = ngx.ctx
  local rs = ctx.rrpc_ngx
  if rs then return rs end
  rs = { gone = false, held = {}, user_on_abort = user_on_abort }
  ctx.rrpc_ngx = rs
  local ok, err = ngx.on_abort(function() return client_left(rs) end)
  rs.watching = ok and "rrpc" or err
  if not ok then warn_once(err) end
  return rs
end

-- Waits `seconds`, or less if the client leaves meanwhile.
local function wait(rs, seconds)
  rs.wake = rs.wake or semaphore.new()
  rs.wake:wait(seconds)
end

--- transport.open(settings) --> state: the settings, with rrpc.ngx's own (location,
-- fetch_location)
function transport.open(settings)
  return settings
end

local balancer_warned = false

local function lowered(headers)
  local t = {}
  for name, value in pairs(headers) do
    t[name:lower()] = type(value) == "table" and table.concat(value, ", ") or value
  end
  return t
end

-- A subrequest to `location`; nginx answers 502/504 itself when the upstream fails, and
-- the upstream's timings (recorded by rrpc.ngx.after_upstream) tell whether the request
-- can have left.
local function capture(location, method, args, body, ctx)
  local res = ngx.location.capture(location, { method = method, body = body, args = args, ctx = ctx })
  if ctx.rrpc_upstream_header_time == nil or ctx.rrpc_upstream_header_time == "-" then
    local connected = ctx.rrpc_upstream_connect_time and ctx.rrpc_upstream_connect_time ~= "-"
      and not ctx.rrpc_upstream_connect_time:find("^%-")
    local code = res.status == 504 and "UpstreamTimeout" or "UpstreamFailed"
    return nil, errors.network(code, ("nginx subrequest to %s ended with %d, no answer (upstream status %s)")
      :format(location, res.status, tostring(ctx.rrpc_upstream_status)), connected == true)
  end
  return res.status, lowered(res.header), res.body or ""
end

--- transport.send(state, url, headers, body, timeout_ms) --> status, headers, body | nil, err
function transport.send(state, url, headers, body, timeout_ms)
  check_phase()
  if transport.request_state().gone then return nil, errors.client_gone(CLIENT_GONE_MESSAGE) end
  local forwarded = lowered(headers)
  forwarded["user-agent"] = state.user_agent
  local scheme, host = url:match("^(https?)://([^/:]+)")
  local ctx = { rrpc_headers = forwarded, rrpc_scheme = scheme, rrpc_sni = host,
                -- for rrpc.ngx.balance: this call's own timeouts, in seconds; timeout_ms
                -- is connect_timeout + the time the answer may take
                rrpc_timeouts = { state.connect_timeout / 1000,
                                  math.max(timeout_ms - state.connect_timeout, 1) / 1000 } }
  local status, h, b = capture(state.location, ngx.HTTP_POST, url:match("%?(.*)$") or "", body, ctx)
  if not ctx.rrpc_balanced and not balancer_warned then
    balancer_warned = true
    ngx.log(ngx.WARN, "rrpc.ngx: the upstream of ", state.location, " has no balancer_by_lua_block ",
      "{ require(\"rrpc.ngx\").balance() }: calls wait as long as the location's proxy timeouts, not their own")
  end
  return status, h, b
end

local FETCH_METHODS = { GET = ngx.HTTP_GET, PUT = ngx.HTTP_PUT, POST = ngx.HTTP_POST }

--- transport.fetch(state, method, url, headers, body, timeout_ms) --> status, headers, body | nil, err
-- Through the fetch location (rrpc-fetch-location.conf), whose proxy timeouts bound it.
function transport.fetch(state, method, url, headers, body)
  check_phase()
  local ctx = { rrpc_fetch_url = url, rrpc_fetch_headers = lowered(headers) }
  return capture(state.fetch_location, FETCH_METHODS[method], nil, body, ctx)
end

-- Between the attempts of a single call: none for a client that has gone (the next
-- attempt is refused at once).
function transport.sleep(_, ms)
  local rs = transport.request_state()
  if not rs.gone then wait(rs, ms / 1000) end
end

-- Batches: each call is a light thread; run() waits on a semaphore for completions.
local Pool = {}
Pool.__index = Pool

-- A pool per batch: light threads belong to the request that runs the batch, and a
-- client may serve many requests of the worker at once.
function transport.pool(state)
  transport.request_state() -- watches the client from the batch's start
  return setmetatable({ state = state, threads = {}, done = {}, in_flight = 0,
                        ready = semaphore.new() }, Pool)
end

function Pool:add(token, url, headers, body, timeout_ms)
  local state = self.state
  self.in_flight = self.in_flight + 1
  self.threads[token] = ngx.thread.spawn(function()
    local status, h, b = transport.send(state, url, headers, body, timeout_ms)
    if self.threads[token] then -- not cancelled
      self.threads[token] = nil
      local done = self.done -- four slots a completion, as the curl transport's
      local n = #done
      done[n + 1], done[n + 2], done[n + 3], done[n + 4] = token, status or false, h, b or false
      self.ready:post(1)
    end
  end)
end

function Pool:run(wait_ms)
  if #self.done == 0 and wait_ms > 0 then
    self.ready:wait(wait_ms / 1000)
  end
  local done = self.done
  self.done = {}
  self.in_flight = self.in_flight - #done / 4
  return done
end

-- A subrequest cannot be killed; its light thread finishes in the background and its
-- outcome is dropped.
function Pool:cancel(token)
  if self.threads[token] then
    self.threads[token] = nil
    self.in_flight = self.in_flight - 1
    return true
  end
  return false
end

function Pool:count()
  return self.in_flight
end

local function client_gone_error(rs)
  if rs.gone then return errors.client_gone(CLIENT_GONE_MESSAGE) end
end

-- A batch's own qps paces it within the client's quota; a batch of a client that has gone
-- lets its next call go at once, and send() refuses it.
function transport.limiter(state, qps, burst, t)
  local own = limiter.new(qps, burst, t)
  if not state.quota then return own end
  local rs = transport.request_state()
  return limiter.within(own, state.quota, { held = rs.held }, function() return rs.gone end)
end

-- Before each attempt of a single call (client:rrpc, client:request): a slot of the
-- client's quota within max_quota_wait, or an error (nothing is sent). The wait ends at
-- once when the client leaves.
function transport.admit(state)
  local rs = transport.request_state()
  if rs.gone then return errors.client_gone(CLIENT_GONE_MESSAGE) end
  if not state.quota then return end
  return quota.wait(state.quota, state.max_quota_wait, {
    now = core.monotime,
    sleep = function(seconds) wait(rs, seconds + 0.001) end,
    gone = function() return client_gone_error(rs) end,
    holder = { held = rs.held },
  })
end

function transport.warn(_, message)
  ngx.log(ngx.WARN, message)
end

function transport.close() end

return transport
