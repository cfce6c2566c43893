-- Prometheus metrics of rrpc calls: a collector fed by a client's on_call hook, rendered
-- in the text exposition format 0.0.4.
--
--   local metrics = require("rrpc").metrics
--   local m = metrics.new()
--   local client = rrpc.new(m:attach { region = "cn-shanghai", ... })  -- on_call, on_call_start
--   ... m:render()
--
-- Label values are bounded: the action, the outcome (ok or the error's kind) and the code
-- (the RrpcCode or error code; codes that do not look like the platform's, and any beyond
-- MAX_CODES distinct ones, are counted as "other"). Never a device name or a RequestId.
local metrics = {}

-- Device latency is 0..8 s (RRpc's Timeout), plus the HTTP around it.
metrics.DURATION_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16 }
local MAX_CODES = 100

local HELP = {
  rrpc_calls_total = { "counter", "RRpc (and other Iot) calls by action, outcome and code" },
  rrpc_call_duration_seconds = { "histogram",
    "Time from a call's start to its outcome, retries and quota waits included" },
  rrpc_attempts_total = { "counter", "Attempts made, retries included" },
  rrpc_quota_wait_seconds_total = { "counter", "Time calls waited for the quota before they were sent" },
  rrpc_calls_in_flight = { "gauge", "Calls started and not yet over" },
}
metrics.HELP = HELP

local Collector = {}
Collector.__index = Collector

local BUCKETS = metrics.DURATION_BUCKETS

--- metrics.new() --> collector
-- On the call path a collector only adds to numbers in tables: the series' names are
-- made once per action, outcome and code, the histogram's cumulative counts at render.
function metrics.new()
  return setmetatable({ calls = {}, call_keys = {}, actions = {}, codes = {}, code_count = 0, in_flight = 0 },
                      Collector)
end

-- The exposition's label value: backslash, double quote and newline escaped.
local function label(value)
  return (tostring(value):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function bounded_code(self, code)
  if code == nil then return "" end
  if self.codes[code] then return code end
  if #code > 64 or not code:find("^[%w%.%-_]+$") or self.code_count >= MAX_CODES then return "other" end
  self.codes[code] = true
  self.code_count = self.code_count + 1
  return code
end

-- Per action: attempts, quota wait, and the histogram's per-bucket counts.
local function action_of(self, action)
  local a = self.actions[action]
  if not a then
    a = { attempts = 0, quota_s = 0, sum = 0, count = 0, buckets = {} }
    for i = 1, #BUCKETS + 1 do a.buckets[i] = 0 end
    self.actions[action] = a
  end
  return a
end

local function calls_key(self, action, outcome, code)
  local by_action = self.call_keys[action]
  if not by_action then
    by_action = {}
    self.call_keys[action] = by_action
  end
  local by_outcome = by_action[outcome]
  if not by_outcome then
    by_outcome = {}
    by_action[outcome] = by_outcome
  end
  local key = by_outcome[code]
  if not key then
    key = ('rrpc_calls_total{action="%s",outcome="%s",code="%s"}'):format(label(action), outcome,
      label(bounded_code(self, code)))
    by_outcome[code] = key
  end
  return key
end

--- collector:started(info) -- a call began (on_call_start)
function Collector:started()
  self.in_flight = self.in_flight + 1
end

--- collector:observe(info) -- a call is over (on_call)
function Collector:observe(info)
  local action = info.action or ""
  local key = calls_key(self, action, info.ok and "ok" or (info.kind or "error"), info.rrpc_code or info.code)
  self.calls[key] = (self.calls[key] or 0) + 1
  local a = action_of(self, action)
  a.attempts = a.attempts + (info.attempts or 0)
  a.quota_s = a.quota_s + (info.quota_wait_ms or 0) / 1000
  local seconds = (info.duration_ms or 0) / 1000
  local i = 1
  while i <= #BUCKETS and seconds > BUCKETS[i] do i = i + 1 end
  a.buckets[i] = a.buckets[i] + 1
  a.sum = a.sum + seconds
  a.count = a.count + 1
  if info.started then self.in_flight = self.in_flight - 1 end
end

--- collector:attach(opts) --> opts, with on_call and on_call_start feeding this collector
-- (after any of the caller's own)
function Collector:attach(opts)
  local own_end, own_start = opts.on_call, opts.on_call_start
  opts.on_call = function(info)
    self:observe(info)
    if own_end then own_end(info) end
  end
  opts.on_call_start = function(info)
    self:started(info)
    if own_start then own_start(info) end
  end
  return opts
end

--- collector:snapshot() --> { [series] = value }: every series with its value now
function Collector:snapshot()
  local series = { rrpc_calls_in_flight = self.in_flight }
  for key, n in pairs(self.calls) do series[key] = n end
  for action, a in pairs(self.actions) do
    local l = label(action)
    series[('rrpc_attempts_total{action="%s"}'):format(l)] = a.attempts
    series[('rrpc_quota_wait_seconds_total{action="%s"}'):format(l)] = a.quota_s
    local cumulative = 0
    for i, le in ipairs(BUCKETS) do
      cumulative = cumulative + a.buckets[i]
      series[('rrpc_call_duration_seconds_bucket{action="%s",le="%s"}'):format(l, le)] = cumulative
    end
    series[('rrpc_call_duration_seconds_bucket{action="%s",le="+Inf"}'):format(l)] = a.count
    series[('rrpc_call_duration_seconds_sum{action="%s"}'):format(l)] = a.sum
    series[('rrpc_call_duration_seconds_count{action="%s"}'):format(l)] = a.count
  end
  return series
end

local function number(v)
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
  return ("%.17g"):format(v)
end

local SUFFIX_RANK = { _bucket = 1, _sum = 2, _count = 3 }

-- A histogram's series by label set, then bucket (by le, +Inf last), sum and count.
local function sort_key(key)
  local name, labels = key:match("^([%w_]+)(.*)$")
  local le = labels:match('le="([^"]*)"')
  local suffix = name:match("(_%a+)$")
  return (labels:gsub(',?le="[^"]*"', "")), SUFFIX_RANK[suffix] or 0,
         le and (le == "+Inf" and math.huge or tonumber(le)) or 0
end

local function series_before(a, b)
  local la, ra, va = sort_key(a.key)
  local lb, rb, vb = sort_key(b.key)
  if la ~= lb then return la < lb end
  if ra ~= rb then return ra < rb end
  return va < vb
end

--- metrics.render(series) --> the text exposition of a { [series] = value } table
function metrics.render(series)
  local by_metric, names = {}, {}
  for key, value in pairs(series) do
    local name = key:match("^([%w_]+)")
    local family = name:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
    if not HELP[family] then family = name end
    if not by_metric[family] then
      by_metric[family] = {}
      names[#names + 1] = family
    end
    local lines = by_metric[family]
    lines[#lines + 1] = { key = key, line = key .. " " .. number(value) }
  end
  table.sort(names)
  local out = {}
  for _, family in ipairs(names) do
    local help = HELP[family]
    if help then
      out[#out + 1] = ("# HELP %s %s"):format(family, help[2])
      out[#out + 1] = ("# TYPE %s %s"):format(family, help[1])
    end
    local lines = by_metric[family]
    table.sort(lines, series_before)
    for _, entry in ipairs(lines) do out[#out + 1] = entry.line end
  end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

--- collector:render() --> text exposition format 0.0.4
function Collector:render()
  return metrics.render(self:snapshot())
end

return metrics
