-- rrpc inside nginx (OpenResty, lua-nginx-module): the same client, batches and retries,
-- with the HTTP carried by nginx itself. Signing still comes from rrpc.core (CPU only);
-- each call is a subrequest to an internal location that proxies to the platform with
-- upstream keep-alive and TLS verification, so no worker ever blocks. Batches run as
-- light threads, and the quota can be shared by all workers through a lua_shared_dict.
--
-- nginx.conf needs the location (see examples/openresty/rrpc-location.conf):
--   location = /_rrpc { internal; include rrpc-location.conf; }
local ngx = ngx
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

local transport = {}

function transport.open(settings)
  return settings
end

-- One call as a subrequest. nginx answers 502/504 itself when the upstream fails: the
-- subrequest's upstream timings (recorded by rrpc.ngx.after_upstream) tell whether the
-- request can have left.
function transport.send(state, url, headers, body, timeout_ms)
  check_phase()
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

function transport.sleep(ms)
  ngx.sleep(ms / 1000)
end

-- Batches: each call is a light thread; run() waits on a semaphore for completions.
local Pool = {}
Pool.__index = Pool

-- A pool per batch: light threads belong to the request that runs the batch, and a
-- client may serve many requests of the worker at once.
function transport.pool(state)
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

-- The quota shared by all workers: calls counted per second in a lua_shared_dict.
local SharedLimiter = {}
SharedLimiter.__index = SharedLimiter

-- Counted by calendar second, as the platform counts; a call in the last moments of a
-- second waits for the next, so that it cannot arrive there over the quota.
local SECOND_END = 0.98

function SharedLimiter:take()
  ngx.update_time()
  local now = ngx.now()
  local second = math.floor(now)
  if now - second > SECOND_END then return second + 1 - now + 0.001 end
  local key = self.key .. second
  local n, err = self.dict:incr(key, 1, 0, 2)
  if not n then error("rrpc.ngx: quota counter: " .. tostring(err)) end
  if n <= self.qps then return 0 end
  self.dict:incr(key, -1)
  return second + 1 - now + 0.001
end

local function shared_limiter(state, qps)
  return setmetatable({ dict = state.quota_dict, qps = qps,
                        key = "rrpc:" .. (state.access_key_id or "account") .. ":" }, SharedLimiter)
end

function transport.limiter(qps, burst, now, state)
  if state.quota_dict then return shared_limiter(state, qps) end
  return limiter.new(qps, burst, now)
end

-- Single calls wait for a slot of the shared quota too.
function transport.admit(state)
  if not state.quota_dict then return end
  state.single_limiter = state.single_limiter or shared_limiter(state, state.qps)
  local wait = state.single_limiter:take()
  while wait > 0 do
    ngx.sleep(wait)
    wait = state.single_limiter:take()
  end
end

function transport.close() end

local NGX_OPTIONS = { location = "string", quota_dict = "string", qps = "number" }

--- rrpc.ngx.new{ ...rrpc.new's options..., location = "/_rrpc", quota_dict = nil, qps = 1000 }
-- location: the internal location that proxies to the platform; quota_dict: the name of
-- a lua_shared_dict through which the calls of every worker share the quota: single
-- calls wait for a slot of `qps` per second, batches use their own `qps` option.
function M.new(opts)
  if type(opts) ~= "table" then args.error("new", "table expected, got " .. type(opts), 2) end
  local plain, settings = {}, { location = "/_rrpc", qps = 1000 }
  for k, v in pairs(opts) do
    if NGX_OPTIONS[k] then
      if type(v) ~= NGX_OPTIONS[k] then
        args.error("new", ("option '%s' must be a %s, got %s"):format(k, NGX_OPTIONS[k], type(v)), 2)
      end
      settings[k] = v
    else
      plain[k] = v
    end
  end
  if settings.quota_dict then
    local dict = ngx.shared[settings.quota_dict]
    if not dict then
      args.error("new", ("option 'quota_dict': no lua_shared_dict %q in nginx.conf"):format(settings.quota_dict), 2)
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
