-- A busted helper for the aggressive-GC pass of `make check-memory` (scripts/check-memory.sh):
--
--   busted --helper=scripts/gc-aggressive.lua ...
--
-- It runs the suite's own helper (the one .busted names), then makes the collector as eager
-- as it gets, to shake out __gc order and lifetime bugs in rrpc.core:
-- - the incremental collector with pause 0 (a new cycle starts as soon as one ends) and a
--   large step multiplier, so objects die as soon as nothing refers to them;
-- - a full collection after every return from an rrpc.core function or a session/pool
--   method (a debug hook on returns, in the main thread and in every coroutine); a client a
--   spec forgets to close is finalised mid-suite, between two C calls.
-- At exit it prints how many forced collections ran ("gc-aggressive: N full collections
-- after rrpc.core calls"), which scripts/check-memory.sh reports.
--
-- It changes no spec and no module: error messages and argument numbers stay what the specs
-- expect (wrapping the functions would rename them in "bad argument" messages).

local config = dofile("./.busted")
local suite_helper = config._all and config._all.helper
if suite_helper then dofile(suite_helper) end

local core = require "rrpc.core"

local watched = {}
for _, f in pairs(core) do
  if type(f) == "function" then watched[f] = true end
end
for _, name in ipairs { "rrpc.session", "rrpc.pool" } do
  local mt = debug.getregistry()[name]
  assert(type(mt) == "table", "gc-aggressive: no metatable " .. name)
  for _, f in pairs(mt.__index) do watched[f] = true end
end

local collectgarbage, getinfo, sethook = collectgarbage, debug.getinfo, debug.sethook
local forced = 0

local function hook()
  local info = getinfo(2, "f")
  if info and watched[info.func] then
    forced = forced + 1
    collectgarbage("collect")
  end
end

-- 5.4: collectgarbage("incremental", pause, stepmul, stepsize)
collectgarbage("incremental", 0, 1000, 10)
collectgarbage("restart")
sethook(hook, "r")

-- Hooks belong to a thread: every coroutine sets the same hook when it starts.
local create, wrap = coroutine.create, coroutine.wrap
local function hooked(f)
  return function(...)
    sethook(hook, "r")
    return f(...)
  end
end
coroutine.create = function(f) return create(hooked(f)) end
coroutine.wrap = function(f) return wrap(hooked(f)) end

-- Reported when the state closes (busted ends with os.exit(code, true)); anchored in the
-- registry, out of the specs' sight.
debug.getregistry()["rrpc.gc-aggressive"] = setmetatable({}, {
  __gc = function()
    io.stdout:flush() -- after busted's own output, on a line of its own
    io.stderr:write(("\ngc-aggressive: %d full collections after rrpc.core calls\n"):format(forced))
  end,
})
