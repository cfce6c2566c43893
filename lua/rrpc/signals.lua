-- Signals a program handles itself, deferred (rrpc.core's signal.c): once watched, a
-- signal only counts; the program asks what arrived when it is ready to act on it, for
-- instance in rrpc.each's should_stop. Nothing runs inside the handler, so an output
-- line being written is finished first, and a batch's wait ends as soon as one arrives.
local core = require "rrpc.core"
local args = require "rrpc.args"
local limits = require "rrpc.limits"

local signals = {}

local NAMES = { INT = true, TERM = true, HUP = true, QUIT = true, USR1 = true, USR2 = true }

local WATCH_OPTIONS = {
  force_after = { type = "integer", range = limits.SIGNALS_FORCE_AFTER },
}

--- signals.watch({ "INT", "TERM", ... }, { force_after = 0 })
-- From now on these signals only count (what arrived before is forgotten); any other
-- signal watched before gets its previous handling back. force_after = n > 0: the n-th
-- signal the program has not taken ends the process as the signal would have, for when
-- it cannot get to noticing (blocked writing to a full pipe).
function signals.watch(names, opts)
  if type(names) ~= "table" then
    args.raise("watch", 1, "array of signal names expected, got " .. type(names), 2)
  end
  for i, name in ipairs(names) do
    if not NAMES[name] then
      args.raise("watch", 1, ("entry %d: no signal %s (INT, TERM, HUP, QUIT, USR1, USR2)"):format(
        i, args.describe(name)), 2)
    end
  end
  opts = opts or {}
  args.check("watch", 2, opts, WATCH_OPTIONS, 2)
  core.watch_signals(names, opts.force_after or limits.SIGNALS_FORCE_AFTER.default)
end

--- signals.take() --> { "INT", ... }: the watched signals that arrived since last asked,
-- in order (empty when none)
signals.take = core.take_signals

--- signals.wait(ms) --> true as soon as a watched signal arrives that was not taken (at
-- once if one is waiting), false after ms milliseconds without one
function signals.wait(ms)
  if not args.is_integer(ms) or ms < 0 or ms > limits.SIGNALS_MAX_WAIT_MS then
    args.raise("wait", 1, ("milliseconds in 0..%d expected, got %s"):format(limits.SIGNALS_MAX_WAIT_MS,
      args.describe(ms)), 2)
  end
  return core.wait_signals(ms)
end

--- signals.unwatch() -- every watched signal gets its previous handling back
signals.unwatch = core.unwatch_signals

--- signals.number("INT") --> 2 (the exit status of a program it ended is 128 + that)
function signals.number(name)
  if not NAMES[name] then
    args.raise("number", 1, ("no signal %s (INT, TERM, HUP, QUIT, USR1, USR2)"):format(args.describe(name)), 2)
  end
  return core.signal_number(name)
end

return signals
