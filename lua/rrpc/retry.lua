-- Retry policies for client:rrpc{..., retry = policy} and for batches.
--
-- Safe by default: only what cannot have reached the device is sent again (failures
-- before the request left, Throttling.*, ServiceUnavailable, RateLimit). OFFLINE and
-- HALFCONN only when the policy says so; TIMEOUT and anything else that may have been
-- delivered only with retry_maybe_delivered = true. Every attempt is signed anew, with a
-- fresh nonce and timestamp. Delays: exponential with full jitter (100 ms, throttling
-- 500 ms, doubling per attempt, capped at 20 s), never shorter than x-acs-retry-after.
local args = require "rrpc.args"
local limits = require "rrpc.limits"

local retry = {}

local Policy = {}
Policy.__index = Policy

local OPTIONS = {
  max_attempts = { type = "integer", range = limits.MAX_ATTEMPTS },
  base_delay = { type = "integer", range = limits.BASE_DELAY },
  throttle_delay = { type = "integer", range = limits.THROTTLE_DELAY },
  max_delay = { type = "integer", range = limits.MAX_DELAY },
  retry_offline = { type = "boolean" }, retry_halfconn = { type = "boolean" },
  retry_maybe_delivered = { type = "boolean" },
}

local function policy_of(opts)
  return setmetatable({
    max_attempts = opts.max_attempts or limits.MAX_ATTEMPTS.default,
    base_delay = opts.base_delay or limits.BASE_DELAY.default,
    throttle_delay = opts.throttle_delay or limits.THROTTLE_DELAY.default,
    max_delay = opts.max_delay or limits.MAX_DELAY.default,
    retry_offline = opts.retry_offline or false,
    retry_halfconn = opts.retry_halfconn or false,
    retry_maybe_delivered = opts.retry_maybe_delivered or false,
  }, Policy)
end

--- rrpc.retry.new{ max_attempts=3, base_delay=100, throttle_delay=500, max_delay=20000,
--                  retry_offline=false, retry_halfconn=false, retry_maybe_delivered=false }
function retry.new(opts)
  opts = opts or {}
  args.check("retry.new", 1, opts, OPTIONS, 2)
  return policy_of(opts)
end

--- retry.option(value, default) --> policy or false | nil, message
-- What an option `retry` may be, wherever it is taken (client:rrpc, client:request,
-- batches): nil (the default), false (none), a policy, or a table of a policy's options.
function retry.option(value, default)
  if value == nil then return default end
  if value == false then return false end
  if getmetatable(value) == Policy then return value end
  if type(value) == "table" then
    local problem = args.problem(value, OPTIONS)
    if problem then return nil, "option 'retry': " .. problem.message end
    return policy_of(value)
  end
  return nil, "option 'retry' must be a policy (rrpc.retry.new{...}), a table of its options or false, got "
    .. type(value)
end

function retry.is_policy(value)
  return getmetatable(value) == Policy
end

local function is_throttling(err)
  return err.code:find("^Throttling") ~= nil or err.code == "iot.messagebroker.RateLimit"
end

--- policy:allows(err) --> whether this error may be retried at all
function Policy:allows(err)
  if err.kind == "device" then
    if err.rrpc_code == "OFFLINE" then return self.retry_offline end
    if err.rrpc_code == "HALFCONN" then return self.retry_halfconn end
    return self.retry_maybe_delivered -- TIMEOUT, UNKNOWN: the device may have it
  end
  if err.retryable then return true end
  return err.delivered == "maybe" and self.retry_maybe_delivered and err.kind ~= "deadline"
end

--- policy:delay(err, attempts) --> ms to wait before the next attempt, or nil to stop
-- attempts: how many have been made so far.
function Policy:delay(err, attempts)
  if attempts >= self.max_attempts or not self:allows(err) then return nil end
  local base = is_throttling(err) and self.throttle_delay or self.base_delay
  local ceiling = math.min(self.max_delay, base * 2 ^ (attempts - 1))
  local ms = math.random() * ceiling
  if err.retry_after and err.retry_after > ms then ms = err.retry_after end
  return math.floor(ms)
end

function Policy:__tostring()
  return ("rrpc.retry (%d attempts, %d/%d..%d ms%s%s%s)"):format(self.max_attempts,
    self.base_delay, self.throttle_delay, self.max_delay,
    self.retry_offline and ", OFFLINE" or "", self.retry_halfconn and ", HALFCONN" or "",
    self.retry_maybe_delivered and ", maybe delivered" or "")
end

retry.default = retry.new {}
retry.none = retry.new { max_attempts = 1 }

return retry
