-- rrpc.quota.redis: one quota for every process that uses the same Redis and key, as
-- GCRA (the generic cell rate algorithm) over Redis's own clock, leased in small blocks.
--
-- One Lua script per lease (EVALSHA, atomic in Redis) reads Redis's clock (TIME), takes
-- the key's theoretical arrival time TAT (at least now) and, when TAT is at most
-- LOOK_AHEAD after now, hands out n slots at TAT, TAT + I, TAT + 2I, ..., stores the new
-- TAT and answers { now, first slot, count } (count 0: ask again when TAT is within
-- LOOK_AHEAD). Slots are spaced I = (1 + GRACE + JITTER) / qps.
--
-- The host brackets Redis's clock between the lease's send (s) and its reply (r), in its
-- own monotonic clock: slot j is sent no earlier than r + (slot_j - now) and no later than
-- s + (slot_j - now) + GRACE, else dropped. So, in Redis's clock, every send happens within
-- [slot_j, slot_j + GRACE], whatever the offset between the clocks; a lease whose round
-- trip took longer than GRACE leaves nothing usable. The platform counts a send within
-- JITTER of it, so a second of its counting holds sends of slots from an interval shorter
-- than 1 + GRACE + JITTER: at most qps of them. README, "Many hosts, one quota".
--
-- Faults: a lease that fails (connect, timeout, a refusal such as a wrong password) puts
-- the host on its fallback, a local limit of fallback_qps (said once: on_state or a log
-- line); it asks Redis again every PROBE_INTERVAL, and the first host back holds the
-- shared quota for a probe interval and a timeout, so that none is still on its fallback
-- when the shared sends begin again.
local core = require "rrpc.core"
local limiter = require "rrpc.limiter"
local limits = require "rrpc.limits"
local quota = require "rrpc.quota"

local M = {}

local GRACE, JITTER = limits.QUOTA_GRACE, limits.QUOTA_COUNT_JITTER
local LOOK_AHEAD = limits.QUOTA_LOOK_AHEAD
local PROBE_INTERVAL = limits.QUOTA_PROBE_INTERVAL
-- a lease in flight is looked at again this soon (a batch's pool wakes on its socket first)
local POLL_S = 0.002

-- KEYS: the TAT, the mark of a rejoin under way. ARGV: slots wanted, the spacing in µs,
-- the look-ahead in µs, the hold in µs (0 unless the host comes back from its fallback).
-- Times are µs of Redis's clock, as strings (Redis would truncate numbers to integers).
M.SCRIPT = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, interval, ahead, hold = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
if tat < now then tat = now end
if hold > 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  if tat < now + hold then tat = now + hold end
  redis.call('SET', KEYS[2], '1', 'PX', math.ceil(hold / 1000))
end
local first, count = tat, 0
if tat <= now + ahead then
  count = n
  tat = tat + n * interval
end
if tat > now then
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return { string.format('%.0f', now), string.format('%.3f', first), count }
]]

local Redis = quota.class { kind = "redis" }

--- M.new{ link =, target =, key =, qps =, fallback_qps =, on_state = } --> quota
function M.new(o)
  local timeout = o.target.timeout_ms / 1000
  local name = ("%s:%d/%d"):format(o.target.host, o.target.port, o.target.db)
  return setmetatable({
    qps = o.qps, fallback_qps = o.fallback_qps, link = o.link, target = o.target, key = o.key,
    name = name,
    keys = { "{rrpc:quota:" .. o.key .. "}:tat", "{rrpc:quota:" .. o.key .. "}:rejoin" },
    interval_us = (1 + GRACE + JITTER) * 1e6 / o.qps,
    block = math.max(1, math.ceil(o.qps * limits.QUOTA_BLOCK_SECONDS)),
    want = 1,
    hold = PROBE_INTERVAL + timeout + limits.QUOTA_REJOIN_MARGIN,
    -- the slots leased: when each may be sent, and until when
    earliest = {}, latest = {}, first = 1, last = 0,
    mode = "shared", why = "not asked yet", next_ask = 0, next_probe = 0,
    lease = nil, conn = nil, sha = nil, on_state = o.on_state,
    counts = { round_trips = 0, leased = 0, used = 0, expired = 0, fallback_sends = 0, failures = 0 },
  }, Redis)
end

function Redis:announce(state, why)
  local message
  if state == "fallback" then
    message = ("rrpc.quota.redis %s (key %s): %s: on the fallback of %d calls/s of this host's own until "
      .. "Redis answers"):format(self.name, self.key, why, self.fallback_qps)
  else
    message = ("rrpc.quota.redis %s (key %s): Redis answers again: back on the shared quota of %d calls/s")
      :format(self.name, self.key, self.qps)
  end
  if self.on_state then
    local ok, err = pcall(self.on_state, state, why, message)
    if not ok then self.link.log("rrpc.quota.redis: on_state raised: " .. tostring(err)) end
  else
    self.link.log(message)
  end
end

local function clear_slots(self)
  self.counts.expired = self.counts.expired + (self.last - self.first + 1)
  self.earliest, self.latest, self.first, self.last = {}, {}, 1, 0
end

function Redis:failed(now, why)
  self.lease = nil
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
  self.counts.failures = self.counts.failures + 1
  self.next_probe = now + PROBE_INTERVAL
  if self.mode ~= "fallback" then
    self.mode, self.why = "fallback", why
    -- slots already leased are given up: the fallback alone paces this host now
    clear_slots(self)
    self.fallback = limiter.new(self.fallback_qps, 1, now)
    self:announce("fallback", why)
  end
end

-- Sends a lease for `want` slots (a probe, with the hold, when on the fallback). While
-- the slots leased are all used, each lease asks for twice as many, up to a block; each
-- slot dropped unused halves it.
function Redis:ask(now)
  local rejoin = self.mode == "fallback"
  if self.asked and self.counts.expired == self.expired_at_ask then
    self.want = math.min(self.block, self.want * 2)
  end
  self.asked, self.expired_at_ask = true, self.counts.expired
  local tail = { tostring(self.want), ("%.3f"):format(self.interval_us), ("%.0f"):format(LOOK_AHEAD * 1e6),
                 rejoin and ("%.0f"):format(self.hold * 1e6) or "0" }
  local keys = self.keys
  local commands
  if self.sha then
    commands = { { "EVALSHA", self.sha, "2", keys[1], keys[2], tail[1], tail[2], tail[3], tail[4] } }
  else -- loaded once per connection's Redis, and again after a NOSCRIPT (a restarted Redis)
    commands = { { "SCRIPT", "LOAD", M.SCRIPT },
                 { "EVAL", M.SCRIPT, "2", keys[1], keys[2], tail[1], tail[2], tail[3], tail[4] } }
  end
  if not self.conn then self.conn = self.link.open(self.target) end
  self.lease = { loading = not self.sha }
  self.conn:request(commands)
  self:progress(now)
end

-- What a lease's reply gives: slots, or when to ask again.
function Redis:granted(reply, sent, received)
  local now_r, first, count = tonumber(reply[1]), tonumber(reply[2]), tonumber(reply[3])
  if not (now_r and first and count) then
    return self:failed(received, "Redis answered the lease with something else than the script's reply")
  end
  if self.mode ~= "shared" or self.why then
    local was = self.mode
    self.mode, self.why, self.fallback = "shared", nil, nil
    if was == "fallback" then self:announce("shared") end
  end
  if count == 0 then
    self.next_ask = received + math.max((first - now_r) / 1e6 - LOOK_AHEAD, 0.001)
    return
  end
  self.counts.leased = self.counts.leased + count
  for j = 0, count - 1 do
    local offset = (first + j * self.interval_us - now_r) / 1e6
    local earliest, latest = received + offset, sent + offset + GRACE
    if latest >= earliest then
      self.last = self.last + 1
      self.earliest[self.last], self.latest[self.last] = earliest, latest
    else
      self.counts.expired = self.counts.expired + 1
    end
  end
  self.next_ask = 0
end

-- Moves a lease in flight on: its reply, or its failure.
function Redis:progress(now)
  if not self.lease then return end
  local replies, sent, ours = self.conn:poll()
  if replies == nil then return end
  local lease = self.lease
  self.lease = nil
  self.counts.round_trips = self.counts.round_trips + 1
  local received = core.monotime()
  if replies == false then
    if ours then return end
    return self:failed(now, sent)
  end
  local last = replies[#replies]
  if lease.loading and replies[1] and not replies[1].err then self.sha = replies[1][1] end
  if last.err then
    if last.err:find("^NOSCRIPT") then -- Redis restarted: the script again, at once
      self.sha = nil
      return
    end
    return self:failed(now, "Redis refused the lease: " .. last.err)
  end
  return self:granted(last[1], sent, received)
end

local function used(self, now)
  local i = self.first
  self.earliest[i], self.latest[i] = nil, nil
  self.first = i + 1
  self.counts.used = self.counts.used + 1
  -- the next lease before this one runs out, while there is demand
  if not self.lease and self.last - self.first + 1 <= self.want / 2 and now >= self.next_ask then
    self:ask(now)
  end
  return 0
end

function Redis:take(now)
  if self.lease then
    self:progress(now)
    now = core.monotime() -- a slot the reply just gave may be due already
  end
  if self.mode == "fallback" then
    if not self.lease and now >= self.next_probe then self:ask(now) end
    if self.mode == "fallback" then
      local wait = self.fallback:take(now)
      if wait == 0 then self.counts.fallback_sends = self.counts.fallback_sends + 1 end
      return wait
    end
  end
  for _ = 1, 2 do
    -- slots that could not be used in time are dropped; fewer are asked for next time
    while self.first <= self.last and self.latest[self.first] < now do
      self.earliest[self.first], self.latest[self.first] = nil, nil
      self.first = self.first + 1
      self.counts.expired = self.counts.expired + 1
      self.want = math.max(1, math.floor(self.want / 2))
    end
    if self.first <= self.last then
      local wait = self.earliest[self.first] - now
      if wait <= 0 then return used(self, now) end
      return wait
    end
    -- none left while there is demand
    if self.lease then return POLL_S end
    if now < self.next_ask then return self.next_ask - now end
    self:ask(now)
    if self.mode == "fallback" then return self:take(now) end
    if self.lease then return POLL_S end
  end
  return POLL_S
end

function Redis:pending()
  return self.lease ~= nil
end

function Redis:fd()
  if self.lease and self.conn then return self.conn:fd() end
end

function Redis:idle(seconds, sleep)
  if self.lease and self.conn and self.conn:fd() then
    self.conn:wait(seconds)
  else
    sleep(seconds)
  end
end

function Redis:state()
  return self.mode, self.why
end

function Redis:stats()
  local s = {}
  for k, v in pairs(self.counts) do s[k] = v end
  s.state, s.why = self.mode, self.why
  return s
end

function Redis:close()
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
  self.lease = nil
end

function Redis:__tostring()
  return ("rrpc.quota.redis (%s, key %s, %d calls/s, %s)"):format(self.name, self.key, self.qps, self.mode)
end

return M
