-- Rate limit for batches: a token bucket (refilled at qps per second, holding at most
-- `burst`) smooths the sending, and a log of the last qps send times guarantees that no
-- one-second window ever holds more than qps calls, whatever the burst. The window is
-- 1% longer than a second to absorb the jitter between our sending and the platform's
-- counting.
local limiter = {}

local Limiter = {}
Limiter.__index = Limiter

local WINDOW = 1.01
local min = math.min

function limiter.new(qps, burst, now)
  return setmetatable({ qps = qps, burst = burst, tokens = burst, stamp = now,
                        sent = {}, next_slot = 1 }, Limiter)
end

local function wait_at(self, now)
  self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.qps)
  self.stamp = now
  local wait = 0
  if self.tokens < 1 then wait = (1 - self.tokens) / self.qps end
  local oldest = self.sent[self.next_slot] -- the send qps sends ago
  if oldest and oldest + WINDOW - now > wait then wait = oldest + WINDOW - now end
  return wait
end

--- limiter:peek(now) --> 0 when a call could go now (nothing counted), else seconds to wait
Limiter.peek = wait_at

--- limiter:take(now) --> 0 when a call may go now (and counts it), else seconds to wait
function Limiter:take(now)
  local wait = wait_at(self, now)
  if wait > 0 then return wait end
  self.tokens = self.tokens - 1
  self.sent[self.next_slot] = now
  self.next_slot = self.next_slot % self.qps + 1
  return 0
end

-- A batch's own pacing within its client's quota (rrpc.quota): the batch's limiter is
-- asked first, so that no slot of the quota is taken for a call the batch would hold back.
local Combined = {}
Combined.__index = Combined

--- limiter.within(own, quota, holder, gone) --> limiter
-- holder: where the quota keeps the batch's reservation (see rrpc.quota); gone(): true
-- when the caller has left (the call is then let go at once and refused by the transport).
function limiter.within(own, quota, holder, gone)
  return setmetatable({ own = own, quota = quota, holder = holder or {}, gone = gone }, Combined)
end

function Combined:take(now)
  if self.gone and self.gone() then return 0 end
  local wait = self.own:peek(now)
  if wait > 0 then return wait end
  wait = self.quota:take(now, self.holder)
  if wait > 0 then return wait end
  self.own:take(now)
  return 0
end

return limiter
