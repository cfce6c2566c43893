-- make soak (scripts/soak.sh): 100,000 RRpc calls through rrpc.each against the emulator's
-- a1Bench/soak device, which answers 1% of them with a fault (errors, resets, truncated,
-- malformed or empty bodies, broken chunking, throttling). It checks that every request
-- is accounted for exactly once, nothing lost or duplicated, that every RequestId the client
-- reports was answered once by the emulator (with the MessageId it reports), and that the
-- client's RSS stays flat. Exits 1 when a check fails.
local rrpc = require "rrpc"
local core = require "rrpc.core"
local emulator = require "emulator"

local CALLS = tonumber(os.getenv("SOAK_CALLS") or 100000)
local CONCURRENCY = tonumber(os.getenv("SOAK_CONCURRENCY") or 200)
local QPS = tonumber(os.getenv("SOAK_QPS") or 5000)
local REPORT_EVERY = 10000
-- The bound: RSS at the end at most this much above RSS after the first REPORT_EVERY calls,
-- by when connections, buffers and the Lua heap have their working size.
local RSS_GROWTH_LIMIT_KB = tonumber(os.getenv("SOAK_RSS_GROWTH_LIMIT_KB") or 4 * 1024)
local PK, DEVICE = "a1Bench", "soak"

-- After a full collection, so that garbage the Lua heap has not yet returned does not count.
local function rss_kb()
  collectgarbage()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s*(%d+)")
    if kb then return tonumber(kb) end
  end
end

local failures = {}
local function check(ok, what)
  if not ok then
    failures[#failures + 1] = what
    io.stderr:write("soak: FAILED: ", what, "\n")
  end
end

-- Each request once, generated as the batch asks for it, so that no array of 100,000
-- requests sits in memory.
local function requests()
  local n = 0
  return function()
    if n == CALLS then return nil end
    n = n + 1
    return { product_key = PK, device_name = DEVICE, payload = "soak " .. n, timeout = 1000 }
  end
end

-- Every outcome goes to a file, "index rid mid code", for the checks after the run: kept
-- in memory, it would grow RSS by itself.
local function outcome_line(index, res, err)
  local o = res or err
  return ("%d %s %s %s\n"):format(index, o.request_id or "-", o.message_id or "-", res and "SUCCESS" or err.code)
end

local emu = emulator.start { workers = 1 }
local client = rrpc.new { endpoint = emu.url, access_key_id = "testid", access_key_secret = "testsecret" }
local outcomes_path = os.tmpname()
local outcomes = assert(io.open(outcomes_path, "w"))

-- Preallocated, so that marking an index allocates nothing.
local seen = {}
for i = 1, CALLS do seen[i] = false end

local counts = { done = 0, ok = 0, attempts = 0, wrong_payload = 0, twice = 0, by_code = {} }
local rss_start = rss_kb()
local rss_baseline
print(("soak: %d calls to %s/%s, concurrency %d, qps %d; RSS at start %d KB"):format(
  CALLS, PK, DEVICE, CONCURRENCY, QPS, rss_start))
local started = core.monotime()
for index, res, err in rrpc.each(client, requests(), { concurrency = CONCURRENCY, qps = QPS }) do
  if seen[index] then counts.twice = counts.twice + 1 end
  seen[index] = true
  counts.done = counts.done + 1
  counts.attempts = counts.attempts + (res or err).attempts
  local code = res and "SUCCESS" or err.code
  counts.by_code[code] = (counts.by_code[code] or 0) + 1
  if res then
    counts.ok = counts.ok + 1
    if res.payload ~= "soak " .. index then counts.wrong_payload = counts.wrong_payload + 1 end
  end
  outcomes:write(outcome_line(index, res, err))
  if counts.done % REPORT_EVERY == 0 then
    local rss = rss_kb()
    rss_baseline = rss_baseline or rss
    print(("soak: %6d done in %5.1f s, RSS %d KB, Lua heap %.0f KB"):format(counts.done,
      core.monotime() - started, rss, collectgarbage("count")))
  end
end
local seconds = core.monotime() - started
local rss_end = rss_kb()
outcomes:close()
client:close()

print(("soak: %d outcomes in %.1f s (%.0f calls/s), %d ok, %d attempts; RSS start %d KB, after %d calls %d KB, end %d KB"):format(
  counts.done, seconds, counts.done / seconds, counts.ok, counts.attempts, rss_start, REPORT_EVERY,
  rss_baseline or rss_end, rss_end))
local codes = {}
for code, n in pairs(counts.by_code) do codes[#codes + 1] = ("%s %d"):format(code, n) end
table.sort(codes)
print("soak: outcomes by code: " .. table.concat(codes, ", "))

-- Every index once.
local missing = 0
for i = 1, CALLS do
  if not seen[i] then missing = missing + 1 end
end
check(counts.done == CALLS, ("%d outcomes for %d requests"):format(counts.done, CALLS))
check(missing == 0, missing .. " requests without an outcome")
check(counts.twice == 0, counts.twice .. " requests with two outcomes")
check(counts.wrong_payload == 0, counts.wrong_payload .. " replies carrying another request's payload")

-- The emulator's side: each RequestId once, and what the client reported of it.
os.execute("sleep 0.5") -- the access log is flushed every 100 ms
local logged, answers, logged_twice = {}, 0, 0
for _, line in ipairs(emu:log_lines()) do
  local rid, mid = line:match(" dn=" .. DEVICE .. " .* rid=(%S+) mid=(%S+)")
  if rid then
    answers = answers + 1
    if rid ~= "-" then
      if logged[rid] then logged_twice = logged_twice + 1 end
      logged[rid] = mid
    end
  end
end
emu:stop()
local reported, unknown, reported_twice, wrong_mid = 0, 0, 0, 0
local reported_by_client = {}
for line in io.lines(outcomes_path) do
  local rid, mid, code = line:match("^%d+ (%S+) (%S+) (%S+)$")
  if rid ~= "-" then
    reported = reported + 1
    if reported_by_client[rid] then reported_twice = reported_twice + 1 end
    reported_by_client[rid] = true
    if logged[rid] == nil then
      unknown = unknown + 1
    elseif code == "SUCCESS" and logged[rid] ~= mid then
      wrong_mid = wrong_mid + 1
    end
  end
end
os.remove(outcomes_path)
print(("soak: the emulator answered %d requests for %s (%d attempts; libcurl resent %d on connections closed under it); "
  .. "%d outcomes carry a RequestId"):format(answers, DEVICE, counts.attempts, answers - counts.attempts, reported))
check(logged_twice == 0, logged_twice .. " RequestIds logged twice")
check(unknown == 0, unknown .. " RequestIds reported that the emulator never sent")
check(reported_twice == 0, reported_twice .. " RequestIds reported for two requests")
check(wrong_mid == 0, wrong_mid .. " MessageIds that differ from the emulator's")
check(answers >= counts.attempts, ("%d attempts but only %d answers logged"):format(counts.attempts, answers))

local growth = rss_end - (rss_baseline or rss_start)
check(growth <= RSS_GROWTH_LIMIT_KB, ("RSS grew by %d KB after the first %d calls (bound %d KB)"):format(
  growth, REPORT_EVERY, RSS_GROWTH_LIMIT_KB))
if #failures > 0 then
  print(("soak: FAILED (%d checks)"):format(#failures))
  os.exit(1)
end
print(("soak: passed: every request once, every RequestId once, RSS grew %d KB after the first %d calls (bound %d KB)")
  :format(growth, REPORT_EVERY, RSS_GROWTH_LIMIT_KB))
