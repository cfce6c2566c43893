-- Rate limit for batches: a token bucket (refilled at qps per second, holding at most
-- `burst`) smooths the sending, and a log of the last qps send times guarantees that no
-- one-second window ever holds more than qps calls, whatever the burst. The window is
-- 1% longer than a second to absorb the jitter between our sending and the platform's
-- counting.
local limiter = {}

local Limiter = {}
Limiter.__index = Limiter

local WINDOW = 1.01

function limiter.new(qps, burst, now)
  return setmetatable({ qps = qps, burst = burst, tokens = burst, stamp = now,
                        sent = {}, next_slot = 1 }, Limiter)
end

--- limiter:take(now) --> 0 when a call may go now (and counts it), else seconds to wait
function Limiter:take(now)
  self.tokens = math.min(self.burst, self.tokens + (now - self.stamp) * self.qps)
  self.stamp = now
  local wait = 0
  if self.tokens < 1 then wait = (1 - self.tokens) / self.qps end
  local oldest = self.sent[self.next_slot] -- the send qps sends ago
  if oldest and oldest + WINDOW - now > wait then wait = oldest + WINDOW - now end
  if wait > 0 then return wait end
  self.tokens = self.tokens - 1
  self.sent[self.next_slot] = now
  self.next_slot = self.next_slot % self.qps + 1
  return 0
end

return limiter
