-- Per-AccessKey usage: counts every authenticated call per key and calendar
-- second in the rrpc_usage shared dict (so all workers share the counts),
-- enforces a key's `qps` quota and reports the counts for /__emulator/stats.
local reply = require "rrpc_emulator.reply"

-- Per-second counts are kept this long, so the stats of a whole benchmark run
-- can be read after it.
local SECOND_TTL_S = 3600

local usage = {}

local store = ngx.shared.rrpc_usage

-- Dict keys: "total\n<key id>", "throttled\n<key id>", "second\n<key id>\n<epoch second>".
local function counter(kind, key_id, second)
  return kind .. "\n" .. key_id .. (second and "\n" .. second or "")
end

-- Counts the call and, over the key's quota in the current second, rejects it
-- with Throttling.User: like the platform, a refused attempt still counts.
function usage.admit(key_id, key)
  local now = ngx.now()
  local second = math.floor(now)
  local calls_this_second = assert(store:incr(counter("second", key_id, second), 1, 0, SECOND_TTL_S))
  assert(store:incr(counter("total", key_id), 1, 0))
  if key.qps and calls_this_second > key.qps then
    assert(store:incr(counter("throttled", key_id), 1, 0))
    reply.reject_throttled(math.max(1, math.ceil((second + 1 - now) * 1000)))
  end
end

local function no_calls(qps)
  return { total = 0, throttled = 0, max_per_second = 0, max_accepted_per_second = 0, per_second = {}, qps = qps }
end

-- {keys = {<key id> = {total, throttled, max_per_second, max_accepted_per_second,
-- per_second = {<epoch second as text> = count}, qps (when the key has one)}}},
-- with every access key of the registry, called or not, and every STS key that
-- made a call (only authenticated keys are counted, so any other id is one).
function usage.report(registry)
  local keys = {}
  for key_id, key in pairs(registry.access_keys) do
    keys[key_id] = no_calls(key.qps)
  end
  for _, name in ipairs(store:get_keys(0)) do
    local count = store:get(name)
    local kind, key_id, second = name:match("^(%a+)\n(.*)\n(%d+)$")
    if not kind then
      kind, key_id = name:match("^(%a+)\n(.*)$")
    end
    if count then
      local stats = keys[key_id] or no_calls()
      keys[key_id] = stats
      if second then
        stats.per_second[second] = count
        stats.max_per_second = math.max(stats.max_per_second, count)
      else
        stats[kind] = count
      end
    end
  end
  -- The first `qps` calls of a second are accepted, the rest throttled.
  for _, stats in pairs(keys) do
    stats.max_accepted_per_second = stats.qps and math.min(stats.max_per_second, stats.qps) or stats.max_per_second
  end
  return { keys = keys }
end

-- Also restarts the quota count of the current second.
function usage.reset()
  store:flush_all()
  store:flush_expired()
end

return usage
