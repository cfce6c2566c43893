-- make bench, over HTTPS: HTTP/1.1 against h2 (rrpc.new's http_version), sequential and
-- 100 in flight, against the emulator's TLS listener (which offers both, and resumes TLS
-- sessions). Counted at the server, from the emulator's access log: connections, full
-- handshakes and resumed ones (nginx's $ssl_session_reused), requests per connection
-- (streams, over h2). Counted at the client, in a process of its own: CPU per call
-- (user+sys / calls) and memory. Each row is run by rrpc and by the libcurl floor
-- (bench/floor.c, with rrpc's CA file, TLS session share and HTTP version), each against
-- a fresh emulator.
--
-- bench/run.lua calls dofile("bench/tls.lua").lines(lua_client, floor) --> the lines to
-- print; lua_client(...) runs `bench/client.lua MODE ...` in a process of its own and
-- floor(...) `build/bench/floor ...`, each returning its JSON line, decoded.
local CALLS = tonumber(os.getenv("BENCH_TLS_CALLS") or 3000)
-- The emulator closes each connection after this many requests (--keepalive-requests), so
-- that CALLS calls open CALLS / 3 = 1000 connections; 100000 keeps them alive.
local CHURN_REQUESTS, KEPT_ALIVE_REQUESTS = 3, 100000
local IN_FLIGHT = 100
local PK, ECHO, BENCH_PK, HOLD = "a1RRpcDemo", "echo", "a1Bench", "d200"

local emulator = require "emulator"
local tls = require "tls"

-- The server's view of the client's RRpc calls (the warm-up call included): connections,
-- full handshakes, resumed ones, requests, the protocols seen.
local function server_counts(e)
  os.execute("sleep 0.3") -- nginx flushes its access log every 100 ms
  local conns, protocols, requests = {}, {}, 0
  for _, line in ipairs(e:log_lines()) do
    local conn, proto, reused = line:match(" conn=(%d+) "), line:match(" proto=(%S+) "), line:match(" reused=(%S+)")
    if line:find(" action=RRpc ", 1, true) then
      requests = requests + 1
      conns[conn] = reused
      protocols[proto] = true
    end
  end
  local n, full, resumed = 0, 0, 0
  for _, reused in pairs(conns) do
    n = n + 1
    if reused == "r" then resumed = resumed + 1 else full = full + 1 end
  end
  local names = {}
  for proto in pairs(protocols) do names[#names + 1] = proto end
  table.sort(names)
  return { connections = n, full = full, resumed = resumed, requests = requests, protocols = table.concat(names, " ") }
end

-- One client, rrpc or the floor, against a fresh emulator that closes connections after
-- keepalive_requests.
local function row(run, certs, keepalive_requests, scheme, version, concurrency, client)
  local e = emulator.start { tls = { cert = certs.cert, key = certs.key }, keepalive_requests = keepalive_requests }
  local ok, r = pcall(function()
    local endpoint = scheme == "https" and e.https_url or e.url
    local ca_file = scheme == "https" and certs.ca_file or "-"
    local pk, dn = PK, ECHO
    if concurrency > 1 then pk, dn = BENCH_PK, HOLD end -- held 200 ms: all of them in flight
    local r
    if client == "rrpc" then
      r = run.lua_client("tls", endpoint, ca_file, version, pk, dn, CALLS, concurrency)
    else -- the same calls, signed by rrpc beforehand (the warm-up's request too), sent by the floor
      local path = os.tmpname()
      local written = run.lua_client("requests", endpoint, "testid", "testsecret", pk, dn, CALLS + 1, "-", "tls", path)
      local tls_args = scheme == "https" and { ca_file, version } or {}
      r = run.floor(path, CALLS, concurrency, written.receive_buffer_bytes, table.unpack(tls_args))
      os.remove(path)
      r.most_in_flight = concurrency -- the floor keeps that many in flight until its last round
      r.errors = {}
    end
    r.server = server_counts(e)
    return r
  end)
  e:stop()
  if not ok then error(r, 0) end
  r.label = ("%s %s"):format(scheme == "https" and "HTTPS" or "HTTP", version == "2" and "h2" or "HTTP/1.1")
  r.client, r.concurrency = client == "rrpc" and "rrpc" or "libcurl floor", concurrency
  return r
end

local function cpu_us(r) return r.cpu_s / r.calls * 1e6 end
local function kb_per_call(r) return (r.peak_rss_kb - r.rss_before_kb) / r.most_in_flight end

-- r, and the floor's run of the same row
local function format_row(r, floor)
  local s = r.server
  local memory, memory_vs_floor = ("%.1f MB peak RSS"):format(r.peak_rss_kb / 1024), ""
  if r.concurrency > 1 then
    memory = ("%.1f KB per call in flight"):format(kb_per_call(r))
    memory_vs_floor = ("%+.1f KB"):format(kb_per_call(r) - kb_per_call(floor))
  end
  local errors = {}
  for code, n in pairs(r.errors) do errors[#errors + 1] = ("%s %d"):format(code, n) end
  table.sort(errors)
  return ("| %s | %s | %s | %s | %d | %d / %d | %.1f | %.0f µs | %.2f | %s | %s | %d/%d%s |"):format(r.label,
    r.client, r.concurrency > 1 and ("%d (%d seen)"):format(r.concurrency, r.most_in_flight) or "1",
    s.protocols, s.connections, s.full, s.resumed, s.requests / math.max(s.connections, 1),
    cpu_us(r), cpu_us(r) / cpu_us(floor), memory, memory_vs_floor, r.ok, r.calls,
    #errors > 0 and (" (" .. table.concat(errors, ", ") .. ")") or "")
end

local M = {}

function M.lines(lua_client, floor)
  local run = { lua_client = lua_client, floor = floor }
  local certs = tls.generate()
  local ok, rows = pcall(function()
    local churn, kept = {}, {}
    local function both(into, keepalive_requests, spec)
      for _, client in ipairs { "floor", "rrpc" } do
        into[#into + 1] = row(run, certs, keepalive_requests, spec[1], spec[2], spec[3], client)
      end
    end
    for _, spec in ipairs {
      { "https", "1.1", 1 }, { "https", "2", 1 }, { "https", "1.1", IN_FLIGHT },
    } do
      both(churn, CHURN_REQUESTS, spec)
    end
    for _, spec in ipairs {
      { "http", "1.1", 1 }, { "https", "1.1", 1 }, { "https", "2", 1 },
      { "http", "1.1", IN_FLIGHT }, { "https", "1.1", IN_FLIGHT }, { "https", "2", IN_FLIGHT },
    } do
      both(kept, KEPT_ALIVE_REQUESTS, spec)
    end
    return { churn = churn, kept = kept }
  end)
  tls.remove(certs)
  if not ok then error(rows, 0) end

  local lines = {}
  local function say(fmt, ...) lines[#lines + 1] = fmt:format(...) end
  local function say_pairs(list) -- the floor's run of a row, then rrpc's
    for i = 2, #list, 2 do
      say("%s", format_row(list[i - 1], list[i - 1]))
      say("%s", format_row(list[i], list[i - 1]))
    end
  end
  local header = "| connection | client | in flight | protocol at the server | connections"
    .. " | full handshakes / resumed | requests per connection | CPU per call | vs floor | memory | vs floor | ok |"
  say("")
  say("HTTPS and HTTP/2 (bench/tls.lua): %d calls per row, each client in a process of its own against a fresh"
    .. " emulator; sequential rows call an echo device, rows with %d in flight a device answering in 200 ms.",
    CALLS, IN_FLIGHT)
  say("Connections, handshakes (nginx's $ssl_session_reused) and requests per connection (h2: streams) are the"
    .. " server's counts from its access log, the client's first call (a warm-up, not timed) included; CPU per"
    .. " call is the client's user+sys / calls; memory per call in flight is (peak RSS - RSS before the calls)"
    .. " / the most calls the client had in flight (the floor keeps all %d in flight). The floor (bench/floor.c)"
    .. " sends requests rrpc signed with rrpc's libcurl settings, CA file, TLS session share and HTTP version, and"
    .. " makes the same warm-up call first; each of the two once per row, the floor first.", IN_FLIGHT)
  say("")
  say("With the emulator closing each connection after %d requests (--keepalive-requests %d): about %d connections"
    .. " opened during each run", CHURN_REQUESTS, CHURN_REQUESTS, math.floor(CALLS / CHURN_REQUESTS))
  say("")
  say("%s", header)
  say("|---|---|---|---|---|---|---|---|---|---|---|---|")
  say_pairs(rows.churn)
  say("")
  say("Kept alive (--keepalive-requests %d)", KEPT_ALIVE_REQUESTS)
  say("")
  say("%s", header)
  say("|---|---|---|---|---|---|---|---|---|---|---|---|")
  say_pairs(rows.kept)
  return lines
end

return M
