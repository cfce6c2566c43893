-- The nginx transport (rrpc.ngx): every call is a subrequest to an internal location that
-- proxies to the platform with upstream keep-alive and TLS verification, so no worker
-- ever blocks. Each call's own timeouts reach nginx through the upstream's
-- balancer_by_lua (rrpc.ngx.balance); the metadata service is fetched through a second
-- internal location. Batches run as light threads; the quota can be shared by every
-- worker through a lua_shared_dict. The contract is lua/rrpc/transport/curl.lua's.
local ngx = ngx
local semaphore = require "ngx.semaphore"
local errors = require "rrpc.errors"
local limiter = require "rrpc.limiter"

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
  for slot in pairs(rs.held) do slot.quota:release(slot.second) end
  rs.held = {}
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
-- fetch_location, quota_dict, qps, max_quota_wait)
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
      self.done[#self.done + 1] = status and { token = token, status = status, headers = h, body = b }
                                  or { token = token, err = h }
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
  self.in_flight = self.in_flight - #done
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

-- The quota shared by all workers: calls counted per calendar second, as the platform
-- counts, in a lua_shared_dict. A call reserves a slot in the earliest second that has
-- room (this one or a later one: the count of a second includes the calls waiting for
-- it), then waits for its second. Waits are bounded and first come, first served; a
-- single call whose second would start more than max_quota_wait from now is refused at
-- once, with the time until a slot could be had.
local Quota = {}
Quota.__index = Quota

-- A call in the last moments of a second is counted in the next, so that it cannot
-- arrive there over the quota.
local SECOND_END = 0.98
-- Seconds ahead a reservation or the search for a free second may look.
local MAX_AHEAD = 3600

local function quota_of(state, limit)
  return setmetatable({ dict = state.quota_dict, limit = limit,
                        key = "rrpc:" .. (state.access_key_id or "account") .. ":" }, Quota)
end

local function now()
  ngx.update_time()
  return ngx.now()
end

--- quota:reserve(t, budget) --> second | nil, seconds until a slot could be had
-- The earliest second that has room and starts at most `budget` seconds after t.
function Quota:reserve(t, budget)
  local s = math.floor(t)
  if t - s > SECOND_END then s = s + 1 end
  local dict, limit = self.dict, self.limit
  local last = s + MAX_AHEAD
  while s <= last and s - t <= budget do
    local key = self.key .. s
    if (dict:get(key) or 0) < limit then
      local n, err = dict:incr(key, 1, 0, s - t + 2)
      if not n then error("rrpc.ngx: quota counter: " .. tostring(err)) end
      if n <= limit then return s end
      dict:incr(key, -1) -- another worker took the last slot meanwhile
    end
    s = s + 1
  end
  while s <= last and (dict:get(self.key .. s) or 0) >= limit do s = s + 1 end
  return nil, math.max(s - t, 0.001)
end

function Quota:release(second)
  self.dict:incr(self.key .. second, -1)
end

-- For batches: the batch holds one call while it waits, and that call's reservation.
local BatchLimiter = {}
BatchLimiter.__index = BatchLimiter

--- limiter:take() --> 0 when the held call may go now, else seconds to wait
function BatchLimiter:take()
  local rs = self.rs
  if rs.gone then return 0 end -- send() refuses it at once
  local t = now()
  local slot = self.slot
  if slot then
    if t < slot.second then return slot.second - t + 0.001 end
    self.slot, rs.held[slot] = nil, nil
    if t - slot.second <= SECOND_END then return 0 end
    slot.quota:release(slot.second) -- woken too late for its second
  end
  local second = self.quota:reserve(t, MAX_AHEAD)
  if not second then return 1 end
  if second <= t then return 0 end
  slot = { quota = self.quota, second = second }
  self.slot, rs.held[slot] = slot, true
  return second - t + 0.001
end

-- A batch's `qps` paces it within the client's; the shared count never goes over the
-- client's `qps`.
function transport.limiter(state, qps, burst, t)
  if state.quota_dict then
    return setmetatable({ quota = quota_of(state, math.min(qps, state.qps)), rs = transport.request_state() },
                        BatchLimiter)
  end
  return limiter.new(qps, burst, t)
end

-- Before each attempt of a single call (client:rrpc, client:request): a slot of the
-- shared quota within max_quota_wait, or an error (nothing is sent).
function transport.admit(state)
  local rs = transport.request_state()
  if rs.gone then return errors.client_gone(CLIENT_GONE_MESSAGE) end
  if not state.quota_dict then return end
  state.quota = state.quota or quota_of(state, state.qps)
  local quota = state.quota
  local started = now()
  local budget = state.max_quota_wait / 1000
  local t = started
  while true do
    local second, retry_in = quota:reserve(t, budget - (t - started))
    if not second then
      local retry_after = math.ceil(retry_in * 1000)
      return errors.quota_refused(("no slot of the shared quota (%d calls/s) within max_quota_wait (%d ms), "
        .. "the next in %d ms; not sent"):format(state.qps, state.max_quota_wait, retry_after), retry_after)
    end
    local slot = { quota = quota, second = second }
    rs.held[slot] = true
    while t < second and not rs.gone do
      wait(rs, second - t + 0.001)
      t = now()
    end
    if rs.gone then -- client_left gave the slot back
      return errors.client_gone(CLIENT_GONE_MESSAGE)
    end
    rs.held[slot] = nil
    if t - second <= SECOND_END then return end
    quota:release(second) -- woken too late for its second: another
  end
end

function transport.warn(_, message)
  ngx.log(ngx.WARN, message)
end

function transport.close() end

return transport
