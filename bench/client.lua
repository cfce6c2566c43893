-- One measurement in a process of its own, so CPU time and memory are the client's alone.
-- Prints one JSON line.
--   lua5.4 bench/client.lua sequential ENDPOINT KEY SECRET PK DN CALLS SIGNATURE
--   lua5.4 bench/client.lua sign CALLS SIGNATURE
--   lua5.4 bench/client.lua batch ENDPOINT KEY SECRET PK DN CALLS CONCURRENCY QPS IDS_FILE
--   lua5.4 bench/client.lua gateway GATEWAY_URL PK DN CALLS CONCURRENCY
--   lua5.4 bench/client.lua requests ENDPOINT KEY SECRET PK DN COUNT TIMEOUT_MS TAG PATH
--   lua5.4 bench/client.lua inflight ENDPOINT KEY SECRET PK DN CALLS CONCURRENCY TIMEOUT_MS TAG
--   lua5.4 bench/client.lua tls ENDPOINT CA_FILE HTTP_VERSION PK DN CALLS CONCURRENCY
local rrpc = require "rrpc"
local core = require "rrpc.core"
local cjson = require "cjson"

local mode = arg[1]

local function memory_kb(field) -- VmRSS: now; VmHWM: the peak so far
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^" .. field .. ":%s+(%d+) kB")
    if kb then return tonumber(kb) end
  end
end

local function measure(fn)
  collectgarbage()
  local cpu, wall, rss = os.clock(), core.monotime(), memory_kb("VmRSS")
  local result = fn()
  result.cpu_s = os.clock() - cpu
  result.wall_s = core.monotime() - wall
  result.rss_before_kb = rss
  result.peak_rss_kb = memory_kb("VmHWM")
  return result
end

-- signature "v3+metrics": V3 with an rrpc.metrics collector on on_call and on_call_start
local function client(endpoint, key, secret, signature)
  local opts = { endpoint = endpoint, access_key_id = key, access_key_secret = secret,
                 signature = signature:match("^v%d") }
  if signature:find("+metrics", 1, true) then opts = rrpc.metrics.new():attach(opts) end
  return rrpc.new(opts)
end

local result
if mode == "requests" then
  -- COUNT signed RRpc requests as rrpc sends them (payloads TAG-1...TAG-COUNT, a nonce
  -- each), for bench/floor.c: per request its URL, header lines, an empty line, the body
  local endpoint, key, secret, pk, dn, count, timeout, tag, path = table.unpack(arg, 2)
  local c = rrpc.new { endpoint = endpoint, access_key_id = key, access_key_secret = secret }
  local f = assert(io.open(path, "wb"))
  for i = 1, tonumber(count) do
    local parts = assert(c:sign_rrpc { product_key = pk, device_name = dn, payload = tag .. "-" .. i,
                                       timeout = tonumber(timeout) })
    assert(not parts.body:find("\n"), "a body on one line") -- form-encoded
    f:write(parts.url, "\n")
    for name, value in pairs(parts.headers) do f:write(name, ": ", value, "\n") end
    f:write("User-Agent: ", c.user_agent, "\n\n", parts.body, "\n")
  end
  f:close()
  -- the floor sets the receive buffer rrpc sets
  result = { written = path, receive_buffer_bytes = rrpc.limits.RECEIVE_BUFFER_BYTES }
elseif mode == "inflight" then
  -- CALLS calls, CONCURRENCY in flight, no rate limit (a key without quota): payloads
  -- TAG-1...TAG-CALLS, so that the emulator's arrival counts tell this run's calls apart
  local endpoint, key, secret, pk, dn, calls, concurrency, timeout, tag = table.unpack(arg, 2)
  calls, concurrency, timeout = tonumber(calls), tonumber(concurrency), tonumber(timeout)
  local c = client(endpoint, key, secret, "v3")
  -- a request signed (not sent) first: what the first signature sets up once for the
  -- process (OpenSSL's digests and their provider, about 0.4 MB) is not memory per call
  assert(c:sign_rrpc { product_key = pk, device_name = dn, payload = "warm-up" })
  local most_in_flight = 0
  local function should_stop(stats) -- only watches: the most in flight at once, by rrpc's count
    if stats.in_flight > most_in_flight then most_in_flight = stats.in_flight end
  end
  result = measure(function()
    local made, ok, codes = 0, 0, {}
    local function requests()
      if made < calls then
        made = made + 1
        return { product_key = pk, device_name = dn, payload = tag .. "-" .. made, timeout = timeout }
      end
    end
    for _, res, err in rrpc.each(c, requests, { concurrency = concurrency, qps = rrpc.limits.BATCH_QPS.max,
                                                should_stop = should_stop }) do
      if res then ok = ok + 1 else codes[err.code] = (codes[err.code] or 0) + 1 end
    end
    return { calls = calls, ok = ok, errors = codes }
  end)
  result.most_in_flight = most_in_flight
elseif mode == "tls" then
  -- HTTPS and HTTP/2 (bench/tls.lua): CALLS calls with http_version HTTP_VERSION (CA_FILE
  -- "-": none), one at a time or CONCURRENCY in flight, after a warm-up call whose TLS
  -- session the others may resume
  local endpoint, ca_file, version, pk, dn, calls, concurrency = table.unpack(arg, 2)
  calls, concurrency = tonumber(calls), tonumber(concurrency)
  local c = rrpc.new { endpoint = endpoint, access_key_id = "testid", access_key_secret = "testsecret",
                       ca_file = ca_file ~= "-" and ca_file or nil, http_version = version }
  assert(c:rrpc { product_key = pk, device_name = dn, payload = "warm-up" })
  local most_in_flight, attempts = 1, calls
  result = measure(function()
    local ok, codes = 0, {}
    local function count(res, err)
      if res then ok = ok + 1 else codes[err.code] = (codes[err.code] or 0) + 1 end
    end
    if concurrency == 1 then
      for i = 1, calls do count(c:rrpc { product_key = pk, device_name = dn, payload = "seq " .. i }) end
    else
      local made = 0
      local function requests()
        if made < calls then
          made = made + 1
          return { product_key = pk, device_name = dn, payload = "flight " .. made }
        end
      end
      local function should_stop(stats) -- only watches
        attempts = stats.attempts
        if stats.in_flight > most_in_flight then most_in_flight = stats.in_flight end
      end
      for _, res, err in rrpc.each(c, requests, { concurrency = concurrency, qps = rrpc.limits.BATCH_QPS.max,
                                                  should_stop = should_stop }) do
        count(res, err)
      end
    end
    return { calls = calls, ok = ok, errors = codes }
  end)
  result.most_in_flight, result.attempts = most_in_flight, attempts
  c:close()
elseif mode == "sequential" then
  local endpoint, key, secret, pk, dn, calls, signature = table.unpack(arg, 2)
  calls = tonumber(calls)
  local c = client(endpoint, key, secret, signature)
  assert(c:rrpc { product_key = pk, device_name = dn, payload = "warm-up" }) -- connect first
  result = measure(function()
    local ok = 0
    for i = 1, calls do
      if c:rrpc { product_key = pk, device_name = dn, payload = "ping " .. i } then ok = ok + 1 end
    end
    return { calls = calls, ok = ok }
  end)
elseif mode == "sign" then
  local calls, signature = tonumber(arg[2]), arg[3]
  local request = {
    endpoint = "https://iot.cn-shanghai.aliyuncs.com", host = "iot.cn-shanghai.aliyuncs.com",
    action = "RRpc", version = "2018-01-20", access_key_id = "LTAI5tBenchKey",
    access_key_secret = "bench-secret", signature = signature, region_id = "cn-shanghai",
    params = { ProductKey = "a1Bench", DeviceName = "d200", Timeout = 5000,
               RequestBase64Byte = rrpc.b64encode("ping") },
  }
  result = measure(function()
    for _ = 1, calls do core.build_request(request) end
    return { calls = calls, ok = calls }
  end)
elseif mode == "batch" then
  local endpoint, key, secret, pk, dn, calls, concurrency, qps, ids_file = table.unpack(arg, 2)
  calls, concurrency, qps = tonumber(calls), tonumber(concurrency), tonumber(qps)
  local c = client(endpoint, key, secret, "v3")
  local ids = assert(io.open(ids_file, "w"))
  result = measure(function()
    local made, ok, codes = 0, 0, {}
    local function requests() -- streamed: no request or result is kept
      if made < calls then
        made = made + 1
        return { product_key = pk, device_name = dn, payload = "ping " .. made }
      end
    end
    for _, res, err in rrpc.each(c, requests, { concurrency = concurrency, qps = qps }) do
      if res then
        ok = ok + 1
        ids:write(res.request_id, " ", res.message_id, "\n")
      else
        codes[err.code] = (codes[err.code] or 0) + 1
      end
    end
    return { calls = calls, ok = ok, errors = codes }
  end)
  ids:close()
elseif mode == "gateway" then
  -- plain HTTP load on the OpenResty gateway, through rrpc.core's pool
  local url, pk, dn, calls, concurrency = table.unpack(arg, 2)
  calls, concurrency = tonumber(calls), tonumber(concurrency)
  local target = ("%s/devices/%s/%s/rrpc"):format(url, pk, dn)
  local http = require "http"
  local pool = http.pool { max_connections = concurrency }
  result = measure(function()
    local sent, ok, statuses = 0, 0, {}
    while sent < calls or pool:count() > 0 do
      while sent < calls and pool:count() < concurrency do
        sent = sent + 1
        pool:add(sent, "POST", target, {}, "ping " .. sent, 30000)
      end
      for _, c in ipairs(http.completions(pool:run(100))) do
        if c.status == 200 then ok = ok + 1 end
        local key = tostring(c.status or c.code)
        statuses[key] = (statuses[key] or 0) + 1
      end
    end
    return { calls = calls, ok = ok, statuses = statuses }
  end)
  pool:close()
else
  error("unknown mode " .. tostring(mode))
end
print(cjson.encode(result))
