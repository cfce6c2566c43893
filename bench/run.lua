-- make bench: rrpc against the official Node.js SDKs and against the ideal, all measured
-- in this run, against the emulator on loopback. Each client runs in a process of its own.
local cjson = require "cjson"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local quota_run = require "quota_run"
local redis_server = require "redis_server"

local FLOOR = os.getenv("BENCH_FLOOR") or "build/bench/floor"
local SEQUENTIAL_CALLS = tonumber(os.getenv("BENCH_SEQUENTIAL_CALLS") or 1000)
local SIGN_CALLS = tonumber(os.getenv("BENCH_SIGN_CALLS") or 20000)
local GATEWAY_CALLS, GATEWAY_CONCURRENCY = tonumber(os.getenv("BENCH_GATEWAY_CALLS") or 5000), 100
local BATCH_CALLS = tonumber(os.getenv("BENCH_BATCH_CALLS") or 10000)
local CONCURRENCY, QPS, DEVICE_LATENCY_S = 1000, 1000, 0.2
local PK, ECHO, D200 = "a1RRpcDemo", "echo", "d200"
local BENCH_PK = "a1Bench"
-- 5. processes sharing one quota through Redis (rrpc.quota.redis)
local SHARED_PROCESSES, SHARED_SECONDS = 4, tonumber(os.getenv("BENCH_SHARED_SECONDS") or 10)

local emu -- the emulator every client talks to

-- 1000 connections need more descriptors than the usual soft limit of 1024.
local SHELL_PREFIX = "ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); "

local function run_json(command)
  local pipe = assert(io.popen(SHELL_PREFIX .. command .. " 2>/tmp/rrpc-bench.err"))
  local out = pipe:read("a")
  local ok = pipe:close()
  local last = out:match("([^\n]+)\n?$")
  if not ok or not last then
    local f = io.open("/tmp/rrpc-bench.err")
    error(("benchmark step failed: %s\n%s%s"):format(command, out, f and f:read("a") or ""))
  end
  return cjson.decode(last)
end

local function lua_client(...)
  local argv = { ... }
  for i, a in ipairs(argv) do argv[i] = ("'%s'"):format(a) end
  return run_json("LUA_PATH='./lua/?.lua;./spec/support/?.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/client.lua "
    .. table.concat(argv, " "))
end

local function node_client(sdk, endpoint, key, secret, pk, dn, calls, concurrency, ids)
  local r = run_json(("node bench/peers/rrpc-bench.js --sdk %s --endpoint %s --key %s --secret %s " ..
    "--product %s --device %s --calls %d --concurrency %d%s"):format(sdk, endpoint, key, secret, pk,
    dn, calls, concurrency, ids and " --dump-ids" or ""))
  r.cpu_s = r.cpu_user_s + r.cpu_sys_s
  return r
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

-- setup ------------------------------------------------------------------------------
emu = emulator.start { workers = 2 }
local ok, failure = pcall(function()
  local lines = {}
  local function say(fmt, ...) local s = fmt:format(...) print(s) lines[#lines + 1] = s end

  print(("rrpc bench: emulator %s, %d cores"):format(emu.url, tonumber(io.popen("nproc"):read("a")) or 0))

  -- 1. CPU per call, sequential on one kept-alive connection ---------------------------
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

  -- 2. 10,000 calls to 200 ms devices at concurrency 1000, qps 1000 ---------------------
  http_get(emu.url .. "/__emulator/stats/reset", "POST")
  local ids_file = os.tmpname()
  local batch = lua_client("batch", emu.url, "bench-key", "benchsecret", BENCH_PK, D200, BATCH_CALLS, CONCURRENCY, QPS, ids_file)
  local rrpc_peak = max_per_second("bench-key")
  os.execute("sleep 1.2") -- the emulator flushes its access log every second
  local logged = logged_ids(emu)
  local rrpc_exact, rrpc_total = count_exact(read_pairs(ids_file), logged)
  os.remove(ids_file)
  local ideal = BATCH_CALLS / QPS + DEVICE_LATENCY_S

  -- 3. the same work through the official SDKs, at the same concurrency. They cannot hold
  -- to a quota, so they run on a key without one; their peak rate shows what the
  -- platform would throttle.
  local node = {}
  for _, sdk in ipairs { "pop-core", "iot20180120" } do
    http_get(emu.url .. "/__emulator/stats/reset", "POST")
    local r = node_client(sdk, emu.url, "testid", "testsecret", BENCH_PK, D200, BATCH_CALLS, CONCURRENCY, true)
    r.peak = max_per_second("testid")
    os.execute("sleep 1.2")
    r.exact, r.total = count_exact(r.message_ids or {}, logged_ids(emu))
    node[#node + 1] = { "@alicloud/" .. sdk, r }
  end

  local memory_per_call = (batch.peak_rss_kb - batch.rss_before_kb) / CONCURRENCY
  say("")
  say("2./3. %d calls to devices answering in 200 ms, %d in flight", BATCH_CALLS, CONCURRENCY)
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
  say("rrpc: %.1f KB of client memory per unit of --concurrency (peak RSS %.1f MB over %.1f MB before the batch, / %d,"
    .. " the concurrency option: at this qps and latency fewer calls are really in flight, so this is no per-call figure);"
    .. " busiest second at the emulator %d (quota %d).", memory_per_call, batch.peak_rss_kb / 1024,
    batch.rss_before_kb / 1024, CONCURRENCY, rrpc_peak, QPS)
  local best_node_cpu = math.min(per_call_us(node[1][2]), per_call_us(node[2][2]))
  say("")
  say("Targets: CPU per call <= 1/3 of the best SDK: %.2f (sequential), %.2f (batch); wall within 5%% of ideal: %+.1f%%; "
    .. "no second above the quota: %s; under 16 KB per unit of concurrency: %.1f KB; every MessageId exact: %s.",
    per_call_us(seq[1][2]) / best_sdk, per_call_us(batch) / best_node_cpu, 100 * (batch.wall_s / ideal - 1),
    rrpc_peak <= QPS and "yes" or "NO", memory_per_call, rrpc_exact == rrpc_total and rrpc_total == BATCH_CALLS and "yes" or "NO")

  -- 4. the OpenResty gateway (one worker) in front of the same emulator, against rrpc.each
  -- calling the emulator directly at the same concurrency
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

  -- 5. processes sharing the account's quota through Redis, each a batch with demand
  -- above the whole quota, on the key whose quota the emulator enforces
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

  -- 6. the libcurl floor: bench/floor.c (built by make bench) sends the bytes of a request
  -- rrpc signed, with rrpc's libcurl settings, and does nothing else; the emulator answers
  -- its repeated nonce with a 400 of about the size of an RRpc answer
  local request_file = os.tmpname()
  lua_client("request", emu.url, "testid", "testsecret", PK, ECHO, request_file)
  local floor = {
    sequential = run_json(("%s %s %d 1"):format(FLOOR, request_file, SEQUENTIAL_CALLS)),
    parallel = run_json(("%s %s %d %d"):format(FLOOR, request_file, GATEWAY_CALLS, GATEWAY_CONCURRENCY)),
  }
  os.remove(request_file)
  local parallel_ids = os.tmpname()
  local rrpc_parallel = lua_client("batch", emu.url, "testid", "testsecret", PK, ECHO, GATEWAY_CALLS,
    GATEWAY_CONCURRENCY, 1000000, parallel_ids)
  os.remove(parallel_ids)
  say("")
  say("6. Against the libcurl floor (bench/floor.c: the same request bytes and libcurl settings, nothing else)")
  say("")
  say("| calls in flight | rrpc CPU per call | floor CPU per call | rrpc / floor |")
  say("|---|---|---|---|")
  say("| 1 (sequential) | %.0f µs | %.0f µs | %.2f |", per_call_us(seq[1][2]), per_call_us(floor.sequential),
    per_call_us(seq[1][2]) / per_call_us(floor.sequential))
  say("| %d | %.0f µs | %.0f µs | %.2f |", GATEWAY_CONCURRENCY, per_call_us(rrpc_parallel), per_call_us(floor.parallel),
    per_call_us(rrpc_parallel) / per_call_us(floor.parallel))
end)
emu:stop()
if not ok then error(failure, 0) end
