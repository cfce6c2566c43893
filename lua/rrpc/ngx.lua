-- rrpc inside nginx (OpenResty, lua-nginx-module): the same client, batches and retries,
-- with the HTTP carried by nginx itself. Signing still comes from rrpc.core (CPU only);
-- each call is a subrequest to an internal location that proxies to the platform with
-- upstream keep-alive and TLS verification, so no worker ever blocks. Batches run as
-- light threads, and the quota can be shared by all workers through a lua_shared_dict.
--
-- nginx.conf needs the location (see examples/openresty/rrpc-location.conf):
--   location = /_rrpc { internal; include rrpc-location.conf; }
-- and `lua_check_client_abort on` where the calls are made, so that nothing is sent for
-- a client that has gone (see "Clients that leave" below).
local ngx = ngx
local cjson = require "cjson.safe"
local semaphore = require "ngx.semaphore"
local rrpc = require "rrpc"
local client = require "rrpc.client"
local batch = require "rrpc.batch"
local retry = require "rrpc.retry"
local limiter = require "rrpc.limiter"
local args = require "rrpc.args"

local M = {
  retry = retry, batch = batch.batch, each = batch.each, is_error = rrpc.is_error,
  percent_encode = rrpc.percent_encode, b64encode = rrpc.b64encode, b64decode = rrpc.b64decode,
  sign_v1 = rrpc.sign_v1, sign_v3 = rrpc.sign_v3,
}

-- Subrequests (ngx.location.capture) exist only in these phases.
local NETWORK_PHASES = { rewrite = true, access = true, content = true }

-- The headers a signed request carries, as the location's variables ($rrpc_x_acs_date, ...).
local FORWARDED_HEADERS = {
  "host", "content-type", "user-agent", "authorization", "x-acs-action", "x-acs-version",
  "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256", "x-acs-security-token",
}

local function variable_of(header)
  return "rrpc_" .. header:gsub("%-", "_")
end

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
local CLIENT_GONE = "ClientClosedRequest"
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
local function request_state(user_on_abort)
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

--- rrpc_ngx.on_abort(fn) --> 1 | nil, err: ngx.on_abort for requests that make rrpc calls.
-- fn runs when the client leaves, after rrpc has marked the request's calls as not to be
-- sent; unlike rrpc's default, the request then runs on unless fn calls ngx.exit.
function M.on_abort(fn)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'on_abort' (function expected, got " .. type(fn) .. ")", 2)
  end
  local rs = ngx.ctx.rrpc_ngx
  if not rs then
    rs = request_state(fn)
    if rs.watching ~= "rrpc" then return nil, rs.watching end
    return 1
  end
  if rs.watching ~= "rrpc" then return nil, rs.watching end
  if rs.user_on_abort then return nil, "duplicate call" end
  rs.user_on_abort = fn
  return 1
end

--- rrpc_ngx.client_gone() --> whether rrpc has seen this request's client leave
function M.client_gone()
  local rs = ngx.ctx.rrpc_ngx
  return rs ~= nil and rs.gone
end

-- What admit() decided for the call about to be sent by the coroutine: refused (the
-- client has gone, or no quota slot within max_quota_wait) or nil (send it).
local verdicts = setmetatable({}, { __mode = "k" })

local transport = {}

function transport.open(settings)
  return settings
end

-- One call as a subrequest. nginx answers 502/504 itself when the upstream fails: the
-- subrequest's upstream timings (recorded by rrpc.ngx.after_upstream) tell whether the
-- request can have left.
function transport.send(state, url, headers, body, timeout_ms)
  check_phase()
  local co = coroutine.running()
  local verdict = verdicts[co]
  verdicts[co] = nil
  if verdict then return verdict() end
  if request_state().gone then return nil, CLIENT_GONE, CLIENT_GONE_MESSAGE, false end
  local lowered = { ["user-agent"] = state.user_agent }
  for name, value in pairs(headers) do lowered[name:lower()] = value end
  local scheme, host = url:match("^(https?)://([^/:]+)")
  local ctx = { rrpc_headers = lowered, rrpc_scheme = scheme, rrpc_sni = host }
  local res = ngx.location.capture(state.location, {
    method = ngx.HTTP_POST,
    body = body,
    args = url:match("%?(.*)$") or "",
    ctx = ctx,
  })
  if ctx.rrpc_upstream_header_time == nil or ctx.rrpc_upstream_header_time == "-" then
    -- no answer from the platform: nginx's own 502 or 504
    local connected = ctx.rrpc_upstream_connect_time and ctx.rrpc_upstream_connect_time ~= "-"
      and not ctx.rrpc_upstream_connect_time:find("^%-")
    local code = res.status == 504 and "UpstreamTimeout" or "UpstreamFailed"
    return nil, code, ("nginx subrequest to %s ended with %d, no answer from the platform (upstream status %s)")
      :format(state.location, res.status, tostring(ctx.rrpc_upstream_status)), connected == true
  end
  local lowered_response = {}
  for name, value in pairs(res.header) do
    lowered_response[name:lower()] = type(value) == "table" and table.concat(value, ", ") or value
  end
  return res.status, lowered_response, res.body or ""
end

-- Between the attempts of a single call: none for a client that has gone (the next
-- attempt is refused at once).
function transport.sleep(ms)
  local rs = request_state()
  if not rs.gone then wait(rs, ms / 1000) end
end

-- Batches: each call is a light thread; run() waits on a semaphore for completions.
local Pool = {}
Pool.__index = Pool

-- A pool per batch: light threads belong to the request that runs the batch, and a
-- client may serve many requests of the worker at once.
function transport.pool(state)
  request_state() -- watches the client from the batch's start
  return setmetatable({ state = state, threads = {}, done = {}, in_flight = 0,
                        ready = semaphore.new() }, Pool)
end

function Pool:add(token, method, url, headers, body, timeout_ms)
  local state = self.state
  self.in_flight = self.in_flight + 1
  self.threads[token] = ngx.thread.spawn(function()
    local status, h, b, sent = transport.send(state, url, headers, body, timeout_ms)
    if self.threads[token] then -- not cancelled
      self.threads[token] = nil
      self.done[#self.done + 1] = status and { token = token, status = status, headers = h, body = b }
                                  or { token = token, code = h, message = b, sent = sent }
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
function transport.limiter(qps, burst, t, state)
  if state.quota_dict then
    return setmetatable({ quota = quota_of(state, math.min(qps, state.qps)), rs = request_state() },
                        BatchLimiter)
  end
  return limiter.new(qps, burst, t)
end

local function refused_for_quota(state, retry_in)
  local retry_after = math.ceil(retry_in * 1000)
  local body = cjson.encode {
    Code = "Throttling.Quota", Success = false,
    Message = ("rrpc.ngx: no slot of the shared quota (%d calls/s) within max_quota_wait (%d ms), "
      .. "the next in %d ms; not sent"):format(state.qps, state.max_quota_wait, retry_after),
  }
  -- read by rrpc.client as the platform's throttling: kind "api", delivered "no",
  -- retryable, retry_after = ms
  return function()
    return 429, { ["content-type"] = "application/json", ["x-acs-retry-after"] = tostring(retry_after) }, body
  end
end

local function refused_gone()
  return nil, CLIENT_GONE, CLIENT_GONE_MESSAGE, false
end

-- Before each attempt of a single call (client:rrpc, client:request): a slot of the
-- shared quota within max_quota_wait, or a verdict for send().
function transport.admit(state)
  check_phase()
  local rs = request_state()
  local co = coroutine.running()
  verdicts[co] = nil
  if rs.gone then
    verdicts[co] = refused_gone
    return
  end
  if not state.quota_dict then return end
  state.quota = state.quota or quota_of(state, state.qps)
  local quota = state.quota
  local started = now()
  local budget = state.max_quota_wait / 1000
  local t = started
  while true do
    local second, retry_in = quota:reserve(t, budget - (t - started))
    if not second then
      verdicts[co] = refused_for_quota(state, retry_in)
      return
    end
    local slot = { quota = quota, second = second }
    rs.held[slot] = true
    while t < second and not rs.gone do
      wait(rs, second - t + 0.001)
      t = now()
    end
    if rs.gone then -- client_left gave the slot back
      verdicts[co] = refused_gone
      return
    end
    rs.held[slot] = nil
    if t - second <= SECOND_END then return end
    quota:release(second) -- woken too late for its second: another
  end
end

function transport.close() end

local NGX_OPTIONS = { location = "string", quota_dict = "string", qps = "integer",
                      max_quota_wait = "integer" }
local DEFAULT_MAX_QUOTA_WAIT = 1000

--- rrpc.ngx.new{ ...rrpc.new's options..., location = "/_rrpc", quota_dict = nil, qps = 1000,
--                max_quota_wait = 1000 }
-- location: the internal location that proxies to the platform; quota_dict: the name of
-- a lua_shared_dict through which the calls of every worker share the quota of `qps`
-- calls per second; a single call waits at most max_quota_wait ms for a slot, or fails
-- at once as Throttling.Quota; batches wait (paced by their own `qps`, within this one).
function M.new(opts)
  if type(opts) ~= "table" then args.error("new", "table expected, got " .. type(opts), 2) end
  local plain, own = {}, {}
  for k, v in pairs(opts) do
    if NGX_OPTIONS[k] then own[k] = v else plain[k] = v end
  end
  args.check_options("new", own, NGX_OPTIONS, 2)
  args.check_range("new", own, "qps", 1, 1000000, 2)
  args.check_range("new", own, "max_quota_wait", 0, 60000, 2)
  if own.location and not own.location:find("^/") then
    args.error("new", ("option 'location' must be a location's URI, starting with \"/\", got %s"):format(
      args.describe(own.location)), 2)
  end
  local settings = { location = own.location or "/_rrpc", qps = own.qps or 1000,
                     max_quota_wait = own.max_quota_wait or DEFAULT_MAX_QUOTA_WAIT }
  if own.quota_dict then
    local dict = ngx.shared[own.quota_dict]
    if not dict then
      args.error("new", ("option 'quota_dict': no lua_shared_dict %q in nginx.conf"):format(own.quota_dict), 2)
    end
    settings.quota_dict = dict
  end
  settings.access_key_id = opts.access_key_id
  return client.new_with(plain, transport, settings, 3)
end

--- In the internal location (rewrite_by_lua): the signed headers become the variables the
-- location's proxy_set_header lines read.
function M.before_upstream()
  local headers = ngx.ctx.rrpc_headers
  if not headers then return ngx.exit(ngx.HTTP_NOT_FOUND) end
  for _, name in ipairs(FORWARDED_HEADERS) do
    ngx.var[variable_of(name)] = headers[name] or ""
  end
  ngx.var.rrpc_scheme = ngx.ctx.rrpc_scheme
  ngx.var.rrpc_sni = ngx.ctx.rrpc_sni
end

--- In the internal location (header_filter_by_lua): what the upstream did, for send().
function M.after_upstream()
  local ctx = ngx.ctx
  ctx.rrpc_upstream_connect_time = ngx.var.upstream_connect_time
  ctx.rrpc_upstream_header_time = ngx.var.upstream_header_time
  ctx.rrpc_upstream_status = ngx.var.upstream_status
end

M.FORWARDED_HEADERS = FORWARDED_HEADERS

return M
