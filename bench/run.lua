-- make bench: rrpc against the official Node.js SDKs and against the libcurl floor, all
-- measured in this run, against the emulator on loopback. Each client runs in a process of
-- its own. The sections are called in order at the end of this file.
local cjson = require "cjson"
local core = require "rrpc.core"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local quota_run = require "quota_run"
local redis_server = require "redis_server"
local system = require "system"

local FLOOR = os.getenv("BENCH_FLOOR") or "build/bench/floor"
-- section 6's figures, and the chart gnuplot draws from them (bench/chart.gp)
local CHART_DATA = os.getenv("BENCH_CHART_DATA") or "build/bench/results.dat"
local CHART = os.getenv("BENCH_CHART") or "bench/results.svg"
local SEQUENTIAL_CALLS = tonumber(os.getenv("BENCH_SEQUENTIAL_CALLS") or 3000)
local SIGN_CALLS = tonumber(os.getenv("BENCH_SIGN_CALLS") or 20000)
local GATEWAY_CALLS, GATEWAY_CONCURRENCY = tonumber(os.getenv("BENCH_GATEWAY_CALLS") or 5000), 100
local BATCH_CALLS = tonumber(os.getenv("BENCH_BATCH_CALLS") or 10000)
local CONCURRENCY, QPS, DEVICE_LATENCY_S = 1000, 1000, 0.2
local PK, ECHO, D200 = "a1RRpcDemo", "echo", "d200"
local BENCH_PK = "a1Bench"
-- 5. processes sharing one quota through Redis (rrpc.quota.redis)
local SHARED_PROCESSES, SHARED_SECONDS = 4, tonumber(os.getenv("BENCH_SHARED_SECONDS") or 10)
-- 6. calls truly in flight: at each level a device that answers late enough for all of
-- them to be sent before the first answer (the device's latency holds them at the
-- emulator), ROUNDS calls per connection. testid has no quota; RRpc's Timeout is at most
-- 8 s, so 8000 is the most a 1000/s quota could have in flight.
local IN_FLIGHT_ROUNDS = tonumber(os.getenv("BENCH_IN_FLIGHT_ROUNDS") or 3)
-- the floor and rrpc run this many times each, in turn (a busy machine only adds CPU time)
local FLOOR_REPEATS = tonumber(os.getenv("BENCH_FLOOR_REPEATS") or 3)
local IN_FLIGHT_TIMEOUT_MS = 8000
local IN_FLIGHT_LEVELS = {
  { calls_in_flight = 100, latency_ms = 1000 },
  { calls_in_flight = 1000, latency_ms = 2000 },
  { calls_in_flight = 8000, latency_ms = 7000 },
}
local SDKS = { "pop-core", "iot20180120" }
-- 7. instructions per call (callgrind): sequential, runs of N and 2 N calls; 100 in
-- flight to section 6's 2 s device and 1000 to its 7 s device (slow enough for all of them
-- to be sent under callgrind), runs of 2 and 4 rounds
local CALLGRIND_CALLS = tonumber(os.getenv("BENCH_CALLGRIND_CALLS") or 300)
local CALLGRIND_LEVELS = {
  { calls_in_flight = 100, latency_ms = IN_FLIGHT_LEVELS[2].latency_ms },
  { calls_in_flight = 1000, latency_ms = IN_FLIGHT_LEVELS[3].latency_ms },
}

-- 8000 connections need more descriptors than the usual soft limit of 1024.
local SHELL_PREFIX = "ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); "
local LUA_CLIENT = "env LUA_PATH='./lua/?.lua;./spec/support/?.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' "
  .. "lua5.4 bench/client.lua"
local ERRORS = "/tmp/rrpc-bench.err"

local emu -- the emulator every client talks to

local function decode_last_line(command, out, ok)
  local last = out:match("([^\n]+)\n?$")
  if not ok or not last then
    local f = io.open(ERRORS)
    error(("benchmark step failed: %s\n%s%s"):format(command, out, f and f:read("a") or ""))
  end
  return cjson.decode(last)
end

local function run_json(command)
  local pipe = assert(io.popen(SHELL_PREFIX .. command .. " 2>" .. ERRORS))
  local out = pipe:read("a")
  return decode_last_line(command, out, pipe:close())
end

local function quoted(list)
  local argv = {}
  for i, a in ipairs(list) do argv[i] = ("'%s'"):format(a) end
  return table.concat(argv, " ")
end

local function lua_command(...) return LUA_CLIENT .. " " .. quoted { ... } end

local function lua_client(...) return run_json(lua_command(...)) end

local function node_command(sdk, endpoint, key, secret, pk, dn, calls, concurrency, extra)
  return ("node bench/peers/rrpc-bench.js --sdk %s --endpoint %s --key %s --secret %s " ..
    "--product %s --device %s --calls %d --concurrency %d%s"):format(sdk, endpoint, key, secret, pk,
    dn, calls, concurrency, extra or "")
end

local function with_cpu(r)
  r.cpu_s = r.cpu_s or r.cpu_user_s + r.cpu_sys_s
  return r
end

local function node_client(sdk, endpoint, key, secret, pk, dn, calls, concurrency, ids)
  return with_cpu(run_json(node_command(sdk, endpoint, key, secret, pk, dn, calls, concurrency,
    ids and " --dump-ids")))
end

local function http_get(url, method)
  local pipe = assert(io.popen(("curl -s -X %s '%s'"):format(method or "GET", url)))
  local body = pipe:read("a")
  pipe:close()
  return body
end

-- RequestId -> MessageId as the emulator sent them.
local function logged_ids(server)
  local ids = {}
  for _, line in ipairs(server:log_lines()) do
    local rid, mid = line:match("rid=(%S+) mid=(%d+)")
    if rid then ids[rid] = mid end
  end
  return ids
end

local function count_exact(pairs_list, logged)
  local exact, total = 0, 0
  for _, pair in ipairs(pairs_list) do
    total = total + 1
    if logged[pair[1]] == pair[2] then exact = exact + 1 end
  end
  return exact, total
end

local function read_pairs(path)
  local list = {}
  for line in io.lines(path) do
    local rid, mid = line:match("^(%S+) (%S+)$")
    list[#list + 1] = { rid, mid }
  end
  return list
end

local function max_per_second(key)
  local stats = cjson.decode(http_get(emu.url .. "/__emulator/stats"))
  local k = stats.keys[key]
  return k and k.max_per_second or 0
end

local function per_call_us(r) return r.cpu_s / r.calls * 1e6 end

-- RRpc requests that have reached the emulator since the last reset (arrivals.lua counts
-- them when their parameters are read, before any check).
local function arrived()
  local total = 0
  for _, count in pairs(cjson.decode(http_get(emu.url .. "/__emulator/arrivals"))) do total = total + count end
  return total
end

local function rss_kb_of(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local kb = f:read("a"):match("\nVmRSS:%s+(%d+) kB")
  f:close()
  return tonumber(kb)
end

-- Runs a client that starts calls to a device answering `latency_ms` after each arrives,
-- and watches it from outside while no answer can have left the emulator: until
-- `latency_ms` after the last look that saw no arrival (the first arrived after it). The
-- emulator's count of arrivals then is the number of calls truly in flight, and the
-- client's VmRSS (/proc/PID/status) is read right after it. Adds to the client's JSON
-- line: in_flight (the most calls seen in flight), rss_in_flight_kb (the highest RSS read
-- while that many were; it only grows until the first answer).
local function watched(command, latency_ms)
  http_get(emu.url .. "/__emulator/arrivals/reset", "POST")
  local none_before = core.monotime()
  local pipe = assert(io.popen(SHELL_PREFIX .. "echo $$; exec " .. command .. " 2>" .. ERRORS))
  local pid = pipe:read("l")
  local in_flight, rss = 0, nil
  while true do
    local asked = core.monotime()
    local count = arrived()
    local kb = rss_kb_of(pid)
    if not kb or core.monotime() - none_before >= latency_ms / 1000 then break end
    if count == 0 then none_before = asked end
    if count > in_flight or (count == in_flight and kb > (rss or 0)) then in_flight, rss = count, kb end
    system.sleep(0.05)
  end
  local r = decode_last_line(command, pipe:read("a"), pipe:close())
  r.in_flight, r.rss_in_flight_kb = in_flight, rss
  return with_cpu(r)
end

-- emulator/devices.json with the devices section 6 needs: each answers after a fixed delay.
local function devices_file()
  local f = assert(io.open("emulator/devices.json"))
  local registry = cjson.decode(f:read("a"))
  f:close()
  for _, level in ipairs(IN_FLIGHT_LEVELS) do
    registry.products[BENCH_PK].devices["hold" .. level.latency_ms] =
      { behaviour = "echo", latency = { dist = "fixed", ms = level.latency_ms } }
  end
  local path = os.tmpname()
  f = assert(io.open(path, "w"))
  f:write(cjson.encode(registry))
  f:close()
  return path
end

local bench = {} -- what the sections share: bench.say, and what they measured

-- 1. CPU per call, sequential on one kept-alive connection -----------------------------
local function sequential()
  local say = bench.say
  local seq = {
    { "rrpc (V3)", lua_client("sequential", emu.url, "testid", "testsecret", PK, ECHO, SEQUENTIAL_CALLS, "v3") },
    { "rrpc (V1)", lua_client("sequential", emu.url, "testid", "testsecret", PK, ECHO, SEQUENTIAL_CALLS, "v1") },
    { "rrpc (V3) + rrpc.metrics", lua_client("sequential", emu.url, "testid", "testsecret", PK, ECHO, SEQUENTIAL_CALLS,
                                             "v3+metrics") },
    { "@alicloud/pop-core (V1)", node_client("pop-core", emu.url, "testid", "testsecret", PK, ECHO, SEQUENTIAL_CALLS, 1) },
    { "@alicloud/iot20180120 (V3)", node_client("iot20180120", emu.url, "testid", "testsecret", PK, ECHO, SEQUENTIAL_CALLS, 1) },
  }
  local best_sdk = math.min(per_call_us(seq[4][2]), per_call_us(seq[5][2]))
  local sign = {
    v1 = lua_client("sign", SIGN_CALLS, "v1"),
    v3 = lua_client("sign", SIGN_CALLS, "v3"),
  }
  say("")
  say("1. Client CPU per call (user+sys), %d sequential calls to an echo device, one connection", SEQUENTIAL_CALLS)
  say("")
  say("| client | CPU per call | calls/s (wall) | vs best official SDK |")
  say("|---|---|---|---|")
  for _, row in ipairs(seq) do
    local r = row[2]
    say("| %s | %.0f µs | %.0f | %.2f |", row[1], per_call_us(r), r.calls / r.wall_s, per_call_us(r) / best_sdk)
  end
  say("")
  say("Signing alone (build_request: nonce, timestamp, canonical form, HMAC): V1 %.1f µs, V3 %.1f µs per request, "
    .. "%.0f%% and %.0f%% of rrpc's CPU per call.", per_call_us(sign.v1), per_call_us(sign.v3),
    100 * per_call_us(sign.v1) / per_call_us(seq[2][2]), 100 * per_call_us(sign.v3) / per_call_us(seq[1][2]))
  say("The on_call hook with an rrpc.metrics collector: %+.1f µs per call (%.3f of the call without it, same run).",
    per_call_us(seq[3][2]) - per_call_us(seq[1][2]), per_call_us(seq[3][2]) / per_call_us(seq[1][2]))
end

-- 2. 10,000 calls to 200 ms devices at concurrency 1000, qps 1000 -----------------------
-- 3. the same work through the official SDKs, at the same concurrency. They cannot hold
-- to a quota, so they run on a key without one; their peak rate shows what the platform
-- would throttle.
local function quota_batch()
  local say = bench.say
  http_get(emu.url .. "/__emulator/stats/reset", "POST")
  local ids_file = os.tmpname()
  local batch = lua_client("batch", emu.url, "bench-key", "benchsecret", BENCH_PK, D200, BATCH_CALLS, CONCURRENCY, QPS, ids_file)
  local rrpc_peak = max_per_second("bench-key")
  os.execute("sleep 1.2") -- the emulator flushes its access log every second
  local logged = logged_ids(emu)
  local rrpc_exact, rrpc_total = count_exact(read_pairs(ids_file), logged)
  os.remove(ids_file)
  local ideal = BATCH_CALLS / QPS + DEVICE_LATENCY_S

  local node = {}
  for _, sdk in ipairs(SDKS) do
    http_get(emu.url .. "/__emulator/stats/reset", "POST")
    local r = node_client(sdk, emu.url, "testid", "testsecret", BENCH_PK, D200, BATCH_CALLS, CONCURRENCY, true)
    r.peak = max_per_second("testid")
    os.execute("sleep 1.2")
    r.exact, r.total = count_exact(r.message_ids or {}, logged_ids(emu))
    node[#node + 1] = { "@alicloud/" .. sdk, r }
  end

  say("")
  say("2./3. %d calls to devices answering in 200 ms, --concurrency %d", BATCH_CALLS, CONCURRENCY)
  say("")
  say("| client | wall | ideal %.1f s | peak calls/s seen | ok | CPU per call | peak RSS | MessageIds exact |", ideal)
  say("|---|---|---|---|---|---|---|---|")
  say("| rrpc.each, qps %d | %.2f s | %.3f | %d | %d | %.0f µs | %.1f MB | %d/%d |", QPS, batch.wall_s,
    batch.wall_s / ideal, rrpc_peak, batch.ok, per_call_us(batch), batch.peak_rss_kb / 1024, rrpc_exact, rrpc_total)
  for _, row in ipairs(node) do
    local r = row[2]
    say("| %s (no rate limit) | %.2f s | %.3f | %d | %d | %.0f µs | %.1f MB | %d/%d |", row[1], r.wall_s,
      r.wall_s / ideal, r.peak, r.ok, per_call_us(r), r.peak_rss_kb / 1024, r.exact, r.total)
  end
  say("")
  say("rrpc: busiest second at the emulator %d (quota %d); at this qps and latency about %d calls are in flight at once,"
    .. " not %d: memory per call truly in flight is section 6's.", rrpc_peak, QPS, QPS * DEVICE_LATENCY_S, CONCURRENCY)
  local best_node_cpu = math.min(per_call_us(node[1][2]), per_call_us(node[2][2]))
  say("")
  say("Targets: CPU per call <= 1/3 of the best SDK: %.2f (batch; sequential: section 1's last column); wall within"
    .. " 5%% of ideal: %+.1f%%; no second above the quota: %s; every MessageId exact: %s.",
    per_call_us(batch) / best_node_cpu, 100 * (batch.wall_s / ideal - 1),
    rrpc_peak <= QPS and "yes" or "NO", rrpc_exact == rrpc_total and rrpc_total == BATCH_CALLS and "yes" or "NO")
end

-- 4. the OpenResty gateway (one worker) in front of the same emulator, against rrpc.each
-- calling the emulator directly at the same concurrency ----------------------------------
local function gateway()
  local say = bench.say
  local gw = gateway_server.start { endpoint = emu.url, workers = 1, qps = 1000000 }
  local through, direct_run
  local gw_ok, gw_failure = pcall(function()
    through = lua_client("gateway", gw.url, PK, ECHO, GATEWAY_CALLS, GATEWAY_CONCURRENCY)
  end)
  gw:stop()
  if not gw_ok then error(gw_failure, 0) end
  local direct_ids = os.tmpname()
  direct_run = lua_client("batch", emu.url, "testid", "testsecret", PK, ECHO, GATEWAY_CALLS,
    GATEWAY_CONCURRENCY, 1000000, direct_ids)
  os.remove(direct_ids)
  say("")
  say("4. The OpenResty gateway (1 worker), %d calls to an echo device, %d in flight", GATEWAY_CALLS, GATEWAY_CONCURRENCY)
  say("")
  say("| path | calls/s | ok | vs rrpc.each direct |")
  say("|---|---|---|---|")
  say("| rrpc.each -> emulator | %.0f | %d | 1.00 |", direct_run.calls / direct_run.wall_s, direct_run.ok)
  say("| HTTP -> gateway (rrpc.ngx) -> emulator | %.0f | %d | %.2f |", through.calls / through.wall_s, through.ok,
    (through.calls / through.wall_s) / (direct_run.calls / direct_run.wall_s))
end

-- 5. processes sharing the account's quota through Redis, each a batch with demand above
-- the whole quota, on the key whose quota the emulator enforces ---------------------------
local function shared_quota()
  local say = bench.say
  local redis = redis_server.start {}
  local shared_ok, shared = pcall(function()
    http_get(emu.url .. "/__emulator/stats/reset", "POST")
    local list = {}
    for i = 1, SHARED_PROCESSES do
      list[i] = { mode = "batch", endpoint = emu.url, key = "bench-key", secret = "benchsecret", seconds = SHARED_SECONDS,
                  concurrency = 100, quota = { url = redis.url, key = "bench-account", qps = QPS } }
    end
    local results = quota_run.wait(quota_run.start(list), SHARED_SECONDS + 30)
    os.execute("sleep 0.3")
    local stats = cjson.decode(http_get(emu.url .. "/__emulator/stats")).keys["bench-key"]
    local ok, round_trips, throttled, fallback = 0, 0, 0, 0
    for _, r in ipairs(results) do
      ok = ok + r.ok
      round_trips = round_trips + r.stats.round_trips
      throttled = throttled + (r.codes["Throttling.User"] or 0)
      fallback = fallback + r.stats.fallback_sends
    end
    return { peak = stats.max_per_second, total = stats.total, ok = ok, round_trips = round_trips,
             throttled = throttled, fallback = fallback }
  end)
  redis:stop()
  if not shared_ok then error(shared, 0) end
  local shared_ideal = QPS * SHARED_SECONDS
  say("")
  say("5. One quota across processes (rrpc.quota.redis): %d processes sharing %d/s for %d s, a batch each",
    SHARED_PROCESSES, QPS, SHARED_SECONDS)
  say("")
  say("busiest second at the emulator %d (quota %d); total %d of the ideal %d (%.3f); %.3f Redis round trips per call;"
    .. " %d throttled by the platform, %d sent on a fallback.", shared.peak, QPS, shared.total, shared_ideal,
    shared.total / shared_ideal, shared.round_trips / math.max(shared.ok, 1), shared.throttled, shared.fallback)
end

-- 6. against the libcurl floor (bench/floor.c, built by make bench: the bytes of requests
-- rrpc signed, rrpc's libcurl settings, nothing else), sequential and with calls truly in
-- flight; the official SDKs at the same levels -------------------------------------------
local function floor_requests(pk, dn, count, tag)
  local path = os.tmpname()
  local r = lua_client("requests", emu.url, "testid", "testsecret", pk, dn, count, IN_FLIGHT_TIMEOUT_MS, tag, path)
  return path, r.receive_buffer_bytes
end

local function kb_per_call(r) return r.kb_per_call or (r.rss_in_flight_kb - r.rss_before_kb) / r.in_flight end

-- Of runs of one client: the lowest CPU per call, the highest memory per call in flight,
-- the fewest calls in flight and answers.
local function best_of(runs)
  local best = runs[1]
  for _, r in ipairs(runs) do if per_call_us(r) < per_call_us(best) then best = r end end
  local merged = { calls = best.calls, cpu_s = best.cpu_s, ok = best.ok, runs = #runs }
  for _, r in ipairs(runs) do
    merged.ok = math.min(merged.ok, r.ok)
    if r.in_flight then
      merged.in_flight = math.min(merged.in_flight or r.in_flight, r.in_flight)
      merged.kb_per_call = math.max(merged.kb_per_call or kb_per_call(r), kb_per_call(r))
    end
  end
  return merged
end

-- FLOOR_REPEATS runs each of the floor and of rrpc, in turn: best_of each.
local function floor_and_rrpc(floor_run, rrpc_run)
  local floors, rrpcs = {}, {}
  for i = 1, FLOOR_REPEATS do
    floors[i] = floor_run()
    rrpcs[i] = rrpc_run()
  end
  return best_of(floors), best_of(rrpcs)
end

local function in_flight()
  local say = bench.say
  local buffer
  local seq = {}
  seq.floor, seq.rrpc = floor_and_rrpc(function()
    local path
    path, buffer = floor_requests(PK, ECHO, SEQUENTIAL_CALLS + 1, "seq")
    local r = run_json(("%s %s %d 1 %d"):format(FLOOR, path, SEQUENTIAL_CALLS, buffer))
    os.remove(path)
    return r
  end, function() return lua_client("sequential", emu.url, "testid", "testsecret", PK, ECHO, SEQUENTIAL_CALLS, "v3") end)
  local floor_seq = seq.floor
  for _, sdk in ipairs(SDKS) do
    seq[sdk] = node_client(sdk, emu.url, "testid", "testsecret", PK, ECHO, SEQUENTIAL_CALLS, 1)
  end
  local levels = {}
  for _, level in ipairs(IN_FLIGHT_LEVELS) do
    local n, device = level.calls_in_flight, "hold" .. level.latency_ms
    local calls = n * IN_FLIGHT_ROUNDS
    local tag = "n" .. n
    local row = { n = n, latency_ms = level.latency_ms, calls = calls }
    row.floor, row.rrpc = floor_and_rrpc(function()
      local path = floor_requests(BENCH_PK, device, calls, tag)
      local r = watched(("%s %s %d %d %d"):format(FLOOR, path, calls, n, buffer), level.latency_ms)
      os.remove(path)
      return r
    end, function()
      return watched(lua_command("inflight", emu.url, "testid", "testsecret", BENCH_PK, device, calls, n,
        IN_FLIGHT_TIMEOUT_MS, tag), level.latency_ms)
    end)
    for _, sdk in ipairs(SDKS) do
      row[sdk] = watched(node_command(sdk, emu.url, "testid", "testsecret", BENCH_PK, device, calls, n,
        (" --timeout %d --payload %s"):format(IN_FLIGHT_TIMEOUT_MS, tag)), level.latency_ms)
    end
    levels[#levels + 1] = row
  end
  bench.floor = { sequential = seq, levels = levels }
  local seq_rrpc = seq.rrpc

  say("")
  say("6. Against the libcurl floor (bench/floor.c: the bytes of requests rrpc signed, rrpc's libcurl settings and"
    .. " receive buffer (%d bytes), nothing else), and the official SDKs", buffer)
  say("")
  say("CPU per call: user+sys of the client process / calls. Sequential: %d calls to an echo device on one connection."
    .. " In flight: %d calls per connection (%d rounds of N) to a device answering after the latency shown; testid has"
    .. " no quota, RRpc Timeout %d ms.", SEQUENTIAL_CALLS, IN_FLIGHT_ROUNDS, IN_FLIGHT_ROUNDS, IN_FLIGHT_TIMEOUT_MS)
  say("Memory per call in flight: (the client's VmRSS read while no answer can have left the emulator and it counted"
    .. " that many arrivals, minus its VmRSS before the calls) / those calls. The floor copies each request into its"
    .. " call slot's buffer as it sends it; rrpc signs one request (not sent) before its VmRSS is read.")
  say("The floor and rrpc ran %d times each, in turn: the lowest CPU per call and the highest memory per call of"
    .. " their runs, the fewest in flight and ok; the SDKs once.", FLOOR_REPEATS)
  say("")
  say("| calls in flight | client | CPU per call | vs floor | in flight at the emulator | memory per call in flight"
    .. " | vs floor | ok |")
  say("|---|---|---|---|---|---|---|---|")
  local clients = { { "libcurl floor", "floor" }, { "rrpc", "rrpc" }, { "@alicloud/pop-core", "pop-core" },
                    { "@alicloud/iot20180120", "iot20180120" } }
  for _, client in ipairs(clients) do
    local r = seq[client[2]]
    say("| 1 (sequential) | %s | %.0f µs | %.2f | | | | %d/%d |", client[1], per_call_us(r),
      per_call_us(r) / per_call_us(floor_seq), r.ok, r.calls)
  end
  for _, row in ipairs(levels) do
    for _, client in ipairs(clients) do
      local r = row[client[2]]
      say("| %d (%d ms device) | %s | %.0f µs | %.2f | %d | %.1f KB | %+.1f KB | %d/%d |", row.n, row.latency_ms,
        client[1], per_call_us(r), per_call_us(r) / per_call_us(row.floor), r.in_flight, kb_per_call(r),
        kb_per_call(r) - kb_per_call(row.floor), r.ok, r.calls)
    end
  end
  say("")
  local ratios, growth, memory = {}, {}, {}
  for _, row in ipairs(levels) do
    ratios[#ratios + 1] = ("%.2f at %d"):format(per_call_us(row.rrpc) / per_call_us(row.floor), row.n)
    growth[#growth + 1] = ("%.0f"):format(per_call_us(row.rrpc))
    memory[#memory + 1] = ("%+.1f KB at %d"):format(kb_per_call(row.rrpc) - kb_per_call(row.floor), row.n)
  end
  say("Targets: rrpc's CPU per call within 1.3x the floor's: %.2f sequential, %s in flight; no growth from 100 to"
    .. " 8000 in flight: %s µs; memory per call in flight within 1 KB of the floor's: %s.",
    per_call_us(seq_rrpc) / per_call_us(floor_seq), table.concat(ratios, ", "), table.concat(growth, " -> "),
    table.concat(memory, ", "))
  bench.chart(seq, levels, clients)
end

-- The chart: section 6's figures for gnuplot (bench/chart.gp), into CHART.
function bench.chart(seq, levels, clients)
  local f = assert(io.open(CHART_DATA, "w"))
  f:write("# calls in flight, CPU per call (µs), then KB per call in flight, of:")
  for _, client in ipairs(clients) do f:write(" ", client[2]) end
  f:write("\n1")
  for _, client in ipairs(clients) do f:write((" %.1f"):format(per_call_us(seq[client[2]]))) end
  for _ in ipairs(clients) do f:write(" NaN") end
  for _, row in ipairs(levels) do
    f:write("\n", row.n)
    for _, client in ipairs(clients) do f:write((" %.1f"):format(per_call_us(row[client[2]]))) end
    for _, client in ipairs(clients) do f:write((" %.2f"):format(kb_per_call(row[client[2]]))) end
  end
  f:write("\n")
  f:close()
  local commit = io.popen("git describe --always --dirty 2>/dev/null"):read("l") or "?"
  local title = ("make bench, %s, rrpc %s, %d cores, loopback"):format(os.date("!%Y-%m-%d %H:%M UTC"), commit,
    bench.cores)
  assert(os.execute(("gnuplot -e \"data='%s'; out='%s'; run='%s'\" bench/chart.gp"):format(CHART_DATA, CHART, title)),
    "gnuplot failed")
  bench.say("")
  bench.say("Chart: %s (data %s).", CHART, CHART_DATA)
end

-- 7. instructions per sequential call, counted by callgrind (immune to a busy machine):
-- the difference between a run of 2 N calls and one of N, / N, so that start-up and the
-- warm-up call cancel out --------------------------------------------------------------
-- Instructions the command ran, and (with latency_ms: watched) the calls seen in flight.
local function instructions_of(environment, command, latency_ms)
  local out = os.tmpname()
  local valgrind = ("env %svalgrind --tool=callgrind --callgrind-out-file=%s %s"):format(environment, out, command)
  local r = latency_ms and watched(valgrind, latency_ms) or run_json(valgrind)
  local f = assert(io.open(out))
  local total = f:read("a"):match("\ntotals: (%d+)") or error("no totals in callgrind's output " .. out)
  f:close()
  os.remove(out)
  return tonumber(total), r.in_flight
end

local function instructions()
  local say = bench.say
  local lua_env = "LUA_PATH='./lua/?.lua;./spec/support/?.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' "
  local function lua(...) return "lua5.4 bench/client.lua " .. quoted { ... } end
  -- (instructions of `make(2 n)` - those of `make(n)`) / n; with latency_ms, also the
  -- fewest calls seen in flight at once of the two runs
  local function per_call(environment, make, n, latency_ms)
    local twice, in_flight_twice = instructions_of(environment, make(2 * n), latency_ms)
    local once, in_flight_once = instructions_of(environment, make(n), latency_ms)
    return (twice - once) / n, latency_ms and math.min(in_flight_once, in_flight_twice)
  end
  local seq_path, buffer = floor_requests(PK, ECHO, 2 * CALLGRIND_CALLS + 1, "cg")
  local counts = { floor = { in_flight = {}, seen = {} }, rrpc = { in_flight = {}, seen = {} } }
  counts.floor.sequential = per_call("", function(calls)
    return ("%s %s %d 1 %d"):format(FLOOR, seq_path, calls, buffer)
  end, CALLGRIND_CALLS)
  counts.rrpc.sequential = per_call(lua_env, function(calls)
    return lua("sequential", emu.url, "testid", "testsecret", PK, ECHO, calls, "v3")
  end, CALLGRIND_CALLS)
  os.remove(seq_path)
  for i, level in ipairs(CALLGRIND_LEVELS) do
    local device, n = "hold" .. level.latency_ms, level.calls_in_flight
    local flight_path = floor_requests(BENCH_PK, device, 4 * n, "cgn")
    counts.floor.in_flight[i], counts.floor.seen[i] = per_call("", function(calls)
      return ("%s %s %d %d %d"):format(FLOOR, flight_path, calls, n, buffer)
    end, 2 * n, level.latency_ms)
    counts.rrpc.in_flight[i], counts.rrpc.seen[i] = per_call(lua_env, function(calls)
      return lua("inflight", emu.url, "testid", "testsecret", BENCH_PK, device, calls, n, IN_FLIGHT_TIMEOUT_MS, "cgr")
    end, 2 * n, level.latency_ms)
    os.remove(flight_path)
  end
  local levels, heads, rule = {}, {}, {}
  for i, level in ipairs(CALLGRIND_LEVELS) do
    levels[i] = ("%d in flight (runs of 2 and 4 rounds of %d calls to the %d ms device, the difference / %d)"):format(
      level.calls_in_flight, level.calls_in_flight, level.latency_ms, 2 * level.calls_in_flight)
    heads[i] = ("%d in flight | vs floor | in flight at the emulator (fewest of both runs)"):format(level.calls_in_flight)
    rule[i] = "---|---|---"
  end
  say("")
  say("7. Instructions per call, counted by callgrind: sequential (runs of %d and %d calls to an echo device, the"
    .. " difference / %d), %s; calls on kept-alive connections", CALLGRIND_CALLS, 2 * CALLGRIND_CALLS, CALLGRIND_CALLS,
    table.concat(levels, ", "))
  say("")
  say("| client | sequential | vs floor | %s |", table.concat(heads, " | "))
  say("|---|---|---|%s|", table.concat(rule, "|"))
  for _, row in ipairs { { "libcurl floor", counts.floor }, { "rrpc (V3)", counts.rrpc } } do
    local cells = {}
    for i in ipairs(CALLGRIND_LEVELS) do
      cells[i] = ("%.0fk | %.2f | %d"):format(row[2].in_flight[i] / 1000,
        row[2].in_flight[i] / counts.floor.in_flight[i], row[2].seen[i])
    end
    say("| %s | %.0fk | %.2f | %s |", row[1], row[2].sequential / 1000, row[2].sequential / counts.floor.sequential,
      table.concat(cells, " | "))
  end
end

-- the run: the emulator, then each section in turn --------------------------------------
assert(os.execute("command -v gnuplot >/dev/null"), "make bench draws its chart with gnuplot: make deps installs it")
assert(os.execute(("mkdir -p \"$(dirname '%s')\""):format(CHART_DATA)))
local devices = devices_file()
emu = emulator.start { workers = 2, devices = devices }
local ok, failure = pcall(function()
  local lines = {}
  function bench.say(fmt, ...) local s = fmt:format(...) print(s) lines[#lines + 1] = s end
  bench.cores = tonumber(io.popen("nproc"):read("a")) or 0
  print(("rrpc bench: emulator %s, %d cores"):format(emu.url, bench.cores))
  local sections = {
    sequential = sequential, quota_batch = quota_batch, gateway = gateway, shared_quota = shared_quota,
    in_flight = in_flight, instructions = instructions,
    -- HTTPS and HTTP/2: bench/tls.lua, with emulators of its own
    tls = function()
      local function floor(...) return run_json(FLOOR .. " " .. quoted { ... }) end
      for _, l in ipairs(dofile("bench/tls.lua").lines(lua_client, floor)) do bench.say("%s", l) end
    end,
  }
  -- BENCH_SECTIONS="in_flight gateway": only those, in this order
  local order = { "sequential", "quota_batch", "gateway", "shared_quota", "in_flight", "instructions", "tls" }
  if os.getenv("BENCH_SECTIONS") then
    order = {}
    for name in os.getenv("BENCH_SECTIONS"):gmatch("%S+") do
      order[#order + 1] = assert(sections[name] and name, "BENCH_SECTIONS: no section " .. name)
    end
  end
  for _, name in ipairs(order) do sections[name]() end
end)
emu:stop()
os.remove(devices)
if not ok then error(failure, 0) end
