-- rrpc.ngx.quota.shared_dict: the quota shared by every worker of one nginx, in a
-- lua_shared_dict. Calls are counted per calendar second, as the platform counts. A call
-- reserves a slot in the earliest second that has room (this one or a later one: the
-- count of a second includes the calls waiting for it), then waits for its second. Waits
-- are bounded and first come, first served: a single call whose second would start beyond
-- its horizon (max_quota_wait) reserves nothing and is refused at once.
local ngx = ngx
local args = require "rrpc.args"
local limits = require "rrpc.limits"
local quota = require "rrpc.quota"

local M = {}

-- A call in the last moments of a second is counted in the next, so that it cannot
-- arrive there over the quota.
local SECOND_END = 0.98
-- Seconds ahead a reservation or the search for a free second may look.
local MAX_AHEAD = 3600

local SharedDict = quota.class { kind = "shared_dict" }

local function shared_dict(option)
  return function(name)
    if not ngx.shared[name] then
      return ("option '%s': no lua_shared_dict %q in nginx.conf"):format(option, name)
    end
  end
end

M.OPTIONS = {
  name = { type = "string", required = true, check = shared_dict("name") },
  qps = { type = "integer", range = limits.QUOTA_QPS_RANGE },
  key = { type = "string" },
}
M.check_dict = shared_dict

--- rrpc.ngx.quota.shared_dict{ name = "rrpc_quota", qps = 1000, key = "account" } --> quota
-- key: what the counters are named after (rrpc.ngx's quota_dict uses the AccessKey ID).
function M.new(opts, fname, level)
  args.check(fname or "shared_dict", 1, opts, M.OPTIONS, (level or 1) + 1)
  return setmetatable({ dict = ngx.shared[opts.name], qps = opts.qps or limits.QUOTA_QPS_RANGE.default,
                        prefix = "rrpc:" .. (opts.key or "account") .. ":" }, SharedDict)
end

local function now()
  ngx.update_time()
  return ngx.now()
end

--- quota:reserve(t, budget) --> second | nil, seconds until a slot could be had
-- The earliest second that has room and starts at most `budget` seconds after t.
function SharedDict:reserve(t, budget)
  local s = math.floor(t)
  if t - s > SECOND_END then s = s + 1 end
  local dict, limit = self.dict, self.qps
  local last = s + MAX_AHEAD
  while s <= last and s - t <= budget do
    local key = self.prefix .. s
    if (dict:get(key) or 0) < limit then
      local n, err = dict:incr(key, 1, 0, s - t + 2)
      if not n then error("rrpc.ngx: quota counter: " .. tostring(err)) end
      if n <= limit then return s end
      dict:incr(key, -1) -- another worker took the last slot meanwhile
    end
    s = s + 1
  end
  while s <= last and (dict:get(self.prefix .. s) or 0) >= limit do s = s + 1 end
  return nil, math.max(s - t, 0.001)
end

function SharedDict:release(second)
  self.dict:incr(self.prefix .. second, -1)
end

-- holder.slot: the caller's reservation; holder.held: the set of the request's
-- reservations (rrpc.ngx gives them back when its client leaves).
function SharedDict:take(_, holder, horizon)
  local t = now()
  local slot = holder.slot
  if slot then
    if t < slot.second then return slot.second - t end
    holder.slot = nil
    if holder.held then holder.held[slot] = nil end
    if t - slot.second <= SECOND_END then return 0 end
    self:release(slot.second) -- woken too late for its second: another
  end
  local second, retry_in = self:reserve(t, horizon or MAX_AHEAD)
  if not second then return horizon and retry_in or math.min(retry_in, 1) end
  if second <= t then return 0 end
  slot = { quota = self, second = second }
  holder.slot = slot
  if holder.held then holder.held[slot] = true end
  return second - t
end

function SharedDict:drop(holder)
  local slot = holder and holder.slot
  if not slot then return end
  holder.slot = nil
  if holder.held then
    if not holder.held[slot] then return end -- given back already (the client left)
    holder.held[slot] = nil
  end
  self:release(slot.second)
end

function SharedDict.state()
  return "shared", "every worker of this nginx"
end

return M
