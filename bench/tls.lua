-- make bench, over HTTPS: HTTP/1.1 against h2 (rrpc.new's http_version), sequential and
-- 100 in flight, against the emulator's TLS listener (which offers both, and resumes TLS
-- sessions). Counted at the server, from the emulator's access log: connections, full
-- handshakes and resumed ones (nginx's $ssl_session_reused), requests per connection
-- (streams, over h2). Counted at the client, in a process of its own: CPU per call
-- (user+sys / calls) and memory.
--
-- bench/run.lua calls dofile("bench/tls.lua").lines(lua_client) --> the lines to print;
-- lua_client(...) runs `bench/client.lua tls ...` in a process of its own and returns its
-- JSON line, decoded.
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

-- One client against a fresh emulator that closes connections after keepalive_requests.
local function row(lua_client, certs, keepalive_requests, scheme, version, concurrency)
  local e = emulator.start { tls = { cert = certs.cert, key = certs.key }, keepalive_requests = keepalive_requests }
  local ok, r = pcall(function()
    local endpoint = scheme == "https" and e.https_url or e.url
    local pk, dn = PK, ECHO
    if concurrency > 1 then pk, dn = BENCH_PK, HOLD end -- held 200 ms: all of them in flight
    local r = lua_client("tls", endpoint, scheme == "https" and certs.ca_file or "-", version, pk, dn, CALLS,
                         concurrency)
    r.server = server_counts(e)
    return r
  end)
  e:stop()
  if not ok then error(r, 0) end
  r.label = ("%s %s"):format(scheme == "https" and "HTTPS" or "HTTP", version == "2" and "h2" or "HTTP/1.1")
  r.concurrency = concurrency
  return r
end

local function format_row(r)
  local s = r.server
  local memory
  if r.concurrency > 1 then
    memory = ("%.1f KB per call in flight"):format((r.peak_rss_kb - r.rss_before_kb) / r.most_in_flight)
  else
    memory = ("%.1f MB peak RSS"):format(r.peak_rss_kb / 1024)
  end
  local errors = {}
  for code, n in pairs(r.errors) do errors[#errors + 1] = ("%s %d"):format(code, n) end
  table.sort(errors)
  return ("| %s | %s | %s | %d | %d / %d | %.1f | %.0f µs | %s | %d/%d%s |"):format(r.label,
    r.concurrency > 1 and ("%d (%d seen)"):format(r.concurrency, r.most_in_flight) or "1",
    s.protocols, s.connections, s.full, s.resumed, s.requests / math.max(s.connections, 1),
    r.cpu_s / r.calls * 1e6, memory, r.ok, r.calls, #errors > 0 and (" (" .. table.concat(errors, ", ") .. ")") or "")
end

local M = {}

function M.lines(lua_client)
  local certs = tls.generate()
  local ok, rows = pcall(function()
    local churn, kept = {}, {}
    for _, spec in ipairs {
      { "https", "1.1", 1 }, { "https", "2", 1 }, { "https", "1.1", IN_FLIGHT },
    } do
      churn[#churn + 1] = row(lua_client, certs, CHURN_REQUESTS, spec[1], spec[2], spec[3])
    end
    for _, spec in ipairs {
      { "http", "1.1", 1 }, { "https", "1.1", 1 }, { "https", "2", 1 },
      { "http", "1.1", IN_FLIGHT }, { "https", "1.1", IN_FLIGHT }, { "https", "2", IN_FLIGHT },
    } do
      kept[#kept + 1] = row(lua_client, certs, KEPT_ALIVE_REQUESTS, spec[1], spec[2], spec[3])
    end
    return { churn = churn, kept = kept }
  end)
  tls.remove(certs)
  if not ok then error(rows, 0) end

  local lines = {}
  local function say(fmt, ...) lines[#lines + 1] = fmt:format(...) end
  local header = "| client | in flight | protocol at the server | connections | full handshakes / resumed"
    .. " | requests per connection | CPU per call | memory | ok |"
  say("")
  say("HTTPS and HTTP/2 (bench/tls.lua): %d calls per row, each client in a process of its own against a fresh"
    .. " emulator; sequential rows call an echo device, rows with %d in flight a device answering in 200 ms.",
    CALLS, IN_FLIGHT)
  say("Connections, handshakes (nginx's $ssl_session_reused) and requests per connection (h2: streams) are the"
    .. " server's counts from its access log, the client's first call (a warm-up, not timed) included; CPU per"
    .. " call is the client's user+sys / calls; memory per call in flight is (peak RSS - RSS before the calls)"
    .. " / the most calls rrpc had in flight.")
  say("")
  say("With the emulator closing each connection after %d requests (--keepalive-requests %d): about %d connections"
    .. " opened during each run", CHURN_REQUESTS, CHURN_REQUESTS, math.floor(CALLS / CHURN_REQUESTS))
  say("")
  say("%s", header)
  say("|---|---|---|---|---|---|---|---|---|")
  for _, r in ipairs(rows.churn) do say("%s", format_row(r)) end
  say("")
  say("Kept alive (--keepalive-requests %d)", KEPT_ALIVE_REQUESTS)
  say("")
  say("%s", header)
  say("|---|---|---|---|---|---|---|---|---|")
  for _, r in ipairs(rows.kept) do say("%s", format_row(r)) end
  return lines
end

return M
