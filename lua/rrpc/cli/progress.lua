-- A batch's progress and summary on standard error: a bar redrawn in place on a
-- terminal, a plain line every interval otherwise, notes, and the summary table at the end.
local rrpc = require "rrpc"
local output = require "rrpc.cli.output"

local progress = {}

local BAR_WIDTH = 24
local BAR_REDRAW_S = rrpc.limits.CLI_BAR_REDRAW_S
local CLEAR_LINE = "\r\27[K"

local function duration(seconds)
  seconds = math.floor(seconds + 0.5)
  if seconds >= 3600 then
    return ("%d:%02d:%02d"):format(math.floor(seconds / 3600), math.floor(seconds / 60) % 60, seconds % 60)
  end
  return ("%d:%02d"):format(math.floor(seconds / 60), seconds % 60)
end

local Progress = {}
Progress.__index = Progress

--- progress.new{ stream = standard error, total = n or nil, bar = boolean,
--                interval = seconds between plain lines (0: none),
--                clear_for_output = the bar shares its terminal with standard output,
--                clock = function() --> seconds (default rrpc.monotime) }
function progress.new(opts)
  local clock = opts.clock or rrpc.monotime
  local now = clock()
  return setmetatable({
    stream = opts.stream, total = opts.total, bar = opts.bar, interval = opts.interval,
    clear_for_output = opts.clear_for_output, clock = clock,
    started = now, last_shown = now, done = 0, attempts = 0, counts = {}, in_flight = 0,
    state = nil, -- nil, or what the batch is doing after a signal ("draining", "cancelling")
  }, Progress)
end

function Progress:write(...)
  self.stream:write(table.concat({ ... }))
  self.stream:flush()
end

function Progress:count(outcome, attempts)
  self.done = self.done + 1
  self.attempts = self.attempts + attempts
  self.counts[outcome] = (self.counts[outcome] or 0) + 1
end

function Progress:rate(now)
  local elapsed = now - self.started
  return elapsed > 0 and self.done / elapsed or 0
end

function Progress:counts_text(separator)
  local parts = {}
  for _, outcome in ipairs(output.OUTCOMES) do
    local n = self.counts[outcome.name]
    if n then parts[#parts + 1] = outcome.name .. " " .. n end
  end
  return table.concat(parts, separator)
end

-- "532/1000 53% 212/s ETA 0:02", or "532 done 212/s" when the total is unknown
function Progress:position_text(now)
  local rate = self:rate(now)
  if not self.total then return ("%d done %.0f/s"):format(self.done, rate) end
  local eta = rate > 0 and duration((self.total - self.done) / rate) or "?"
  return ("%d/%d %d%% %.0f/s ETA %s"):format(self.done, self.total,
    self.total > 0 and math.floor(self.done * 100 / self.total) or 100, rate, eta)
end

function Progress:state_text()
  if not self.state then return "" end
  return ("%s: %d in flight"):format(self.state, self.in_flight)
end

function Progress:draw_bar(now)
  local filled = self.total and self.total > 0 and math.floor(BAR_WIDTH * self.done / self.total) or 0
  if filled > BAR_WIDTH then filled = BAR_WIDTH end
  local state = self.state and ("  " .. self:state_text()) or ""
  self:write(CLEAR_LINE, "[", ("#"):rep(filled), ("."):rep(BAR_WIDTH - filled), "] ",
    self:position_text(now), "  ", self:counts_text(" "), state)
end

--- progress:tick(stats) -- redraws the bar, or prints a plain line when the interval is up
-- (stats: the library's, for the calls in flight)
function Progress:tick(stats)
  if stats then self.in_flight = stats.in_flight or self.in_flight end
  local now = self.clock()
  if self.bar then
    if now - self.last_shown >= BAR_REDRAW_S then
      self.last_shown = now
      self:draw_bar(now)
    end
  elseif self.interval > 0 and now - self.last_shown >= self.interval then
    self.last_shown = now
    local state = self.state and ("; " .. self:state_text()) or ""
    self:write("rrpc batch: ", self:position_text(now), "; ", self:counts_text(", "), state, "\n")
  end
end

-- The bar is one line redrawn in place: other text on its terminal first erases it.
function Progress:clear_bar()
  if self.bar and not self.finished then self:write(CLEAR_LINE) end
end

function Progress:before_output()
  if self.clear_for_output then self:clear_bar() end
end

function Progress:note(text)
  self:clear_bar()
  self:write("rrpc batch: ", text, "\n")
  if self.bar and not self.finished then self:draw_bar(self.clock()) end
end

--- progress:stopping(state, in_flight, text) -- what the batch does after a signal, said at
-- once, and shown on the bar or in the plain lines from now on
function Progress:stopping(state, in_flight, text)
  self.state, self.in_flight = state, in_flight
  self:note(text)
end

--- progress:finish(rows) -- the final bar, then the summary table; rows: extra lines
-- after the total, { label, count, comment }
function Progress:finish(rows)
  local now = self.clock()
  self.finished = true
  if self.bar then
    self.state = nil
    self:draw_bar(now)
    self:write("\n")
  end
  self:write(("%-12s %8s\n"):format("outcome", "devices"))
  for _, outcome in ipairs(output.OUTCOMES) do
    local n = self.counts[outcome.name]
    if n then self:write(("%-12s %8d\n"):format(outcome.name, n)) end
  end
  self:write(("%-12s %8d  in %.1f s, %.0f/s, %d attempts\n"):format(
    "total", self.done, now - self.started, self:rate(now), self.attempts))
  for _, row in ipairs(rows or {}) do
    local count = row[2] and ("%8d"):format(row[2]) or ("%8s"):format("?")
    self:write(("%-12s %s%s\n"):format(row[1], count, row[3] and ("  " .. row[3]) or ""))
  end
end

return progress
