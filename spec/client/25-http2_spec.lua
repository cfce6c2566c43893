-- HTTP/1.1 and HTTP/2 over TLS (option http_version) against the emulator's HTTPS
-- listener, which offers both (ALPN), and the TLS sessions a client's connections resume.
-- The server side tells which protocol each call arrived over, on which connection, and
-- whether its TLS session was resumed: the access log's proto=, conn= and reused=.
local rrpc = require "rrpc"
local emulator = require "emulator"
local tls = require "tls"
local system = require "system"

local PK = "a1RRpcDemo"
local unpack = table.unpack or unpack

describe("HTTP versions over TLS", function()
  local certs, e

  setup(function()
    certs = tls.generate()
    e = emulator.start { tls = { cert = certs.cert, key = certs.key } }
  end)

  teardown(function()
    e:stop()
    tls.remove(certs)
  end)

  local function client(opts)
    local o = { access_key_id = "testid", access_key_secret = "testsecret", endpoint = e.https_url,
                ca_file = certs.ca_file }
    for k, v in pairs(opts or {}) do o[k] = v end
    return rrpc.new(o)
  end

  -- The access-log lines of the RRpc calls with these request ids, waiting for nginx's
  -- buffered log to have all of them: rid -> { proto=, conn=, reused=, mid= }.
  local function arrivals_of(request_ids)
    local deadline = system.monotime() + 5
    while true do
      local found, missing = {}, 0
      for _, line in ipairs(e:log_lines()) do
        local conn, rid, mid, proto, reused =
          line:match(" conn=(%d+) .* rid=(%S+) mid=(%S+) proto=(%S+) tls=%S+ reused=(%S+)")
        if rid then found[rid] = { conn = conn, mid = mid, proto = proto, reused = reused } end
      end
      for _, rid in ipairs(request_ids) do
        if not found[rid] then missing = missing + 1 end
      end
      if missing == 0 or system.monotime() > deadline then return found end
      system.sleep(0.05)
    end
  end

  local function payloads(n, tag)
    local list = {}
    for i = 1, n do
      list[i] = { product_key = PK, device_name = "echo", payload = ("%s-%d-%f"):format(tag, i, system.monotime()) }
    end
    return list
  end

  -- Single calls and a batch with this client: every answer its own payload and the
  -- server's MessageId to the last digit; returns the server's view of each call.
  local function calls_and_batch(c, tag)
    local rids, seen = {}, {}
    for _, request in ipairs(payloads(3, tag .. "-single")) do
      local res = assert(c:rrpc(request))
      assert.equal(request.payload, res.payload)
      rids[#rids + 1] = res.request_id
      seen[res.request_id] = res.message_id
    end
    local requests = payloads(20, tag .. "-batch")
    local results, summary = rrpc.batch(c, requests, { concurrency = 10 })
    assert.equal(20, summary.ok)
    for i, r in ipairs(results) do
      assert.equal(requests[i].payload, assert(r.res, r.err and tostring(r.err)).payload)
      rids[#rids + 1] = r.res.request_id
      seen[r.res.request_id] = r.res.message_id
    end
    local server = arrivals_of(rids)
    for _, rid in ipairs(rids) do
      local arrival = assert(server[rid], "no log line for " .. rid)
      assert.matches("^[1-9]%d*$", seen[rid])
      assert.equal(arrival.mid, seen[rid])
    end
    return server, rids
  end

  local function connections(server, rids)
    local streams = {}
    for _, rid in ipairs(rids) do
      local conn = server[rid].conn
      streams[conn] = (streams[conn] or 0) + 1
    end
    local n, most = 0, 0
    for _, count in pairs(streams) do
      n = n + 1
      most = math.max(most, count)
    end
    return n, most
  end

  it("speaks HTTP/1.1 by default, though the server offers h2", function()
    local c = client()
    local server, rids = calls_and_batch(c, "default")
    c:close()
    for _, rid in ipairs(rids) do assert.equal("HTTP/1.1", server[rid].proto) end
  end)

  it("speaks h2 with http_version = \"2\", single calls and batches, many streams per connection", function()
    local c = client { http_version = "2" }
    local server, rids = calls_and_batch(c, "h2")
    c:close()
    for _, rid in ipairs(rids) do assert.equal("HTTP/2.0", server[rid].proto) end
    -- the batch's 10 in flight wait for the first connection's ALPN (CURLOPT_PIPEWAIT)
    -- and share it, instead of a connection each as with HTTP/1.1
    local n, most = connections(server, { unpack(rids, 4) })
    assert.is_true(n <= 2, n .. " connections for the batch")
    assert.is_true(most >= 10, most .. " streams on the busiest connection")
  end)

  it("speaks HTTP/1.1 with http_version = \"1.1\", a connection per call in flight", function()
    local c = client { http_version = "1.1" }
    local server, rids = calls_and_batch(c, "h1")
    c:close()
    for _, rid in ipairs(rids) do assert.equal("HTTP/1.1", server[rid].proto) end
    local n, most = connections(server, { unpack(rids, 4) })
    assert.is_true(n >= 5, n .. " connections for 10 in flight")
    assert.is_true(most < 20, most .. " calls on the busiest connection")
  end)

  for _, version in ipairs { "1.1", "2" } do
    it("resumes the single calls' TLS session on the batch's connections (" .. version .. ")", function()
      local c = client { http_version = version }
      local first = assert(c:rrpc(payloads(1, "resume-first-" .. version)[1]))
      local results = rrpc.batch(c, payloads(2, "resume-batch-" .. version), { concurrency = 1 })
      c:close()
      local rids = { first.request_id, results[1].res.request_id, results[2].res.request_id }
      local server = arrivals_of(rids)
      assert.equal(".", server[rids[1]].reused) -- a full handshake: nothing to resume yet
      assert.are_not.equal(server[rids[1]].conn, server[rids[2]].conn)
      assert.equal("r", server[rids[2]].reused) -- the pool's new connection resumed it
      assert.equal(server[rids[2]].conn, server[rids[3]].conn)
    end)
  end

  it("resumes the TLS session when a single call reconnects after the idle timeout #slow", function()
    local c = client { idle_timeout = 1 }
    local first = assert(c:rrpc(payloads(1, "idle-first")[1]))
    -- libcurl counts the idle time in whole seconds and reconnects above idle_timeout
    system.sleep(2.2)
    local second = assert(c:rrpc(payloads(1, "idle-second")[1]))
    c:close()
    local server = arrivals_of { first.request_id, second.request_id }
    assert.are_not.equal(server[first.request_id].conn, server[second.request_id].conn)
    assert.equal("r", server[second.request_id].reused)
  end)
end)

describe("option http_version", function()
  local function new(opts)
    local o = { access_key_id = "testid", access_key_secret = "testsecret" }
    for k, v in pairs(opts) do o[k] = v end
    return rrpc.new(o)
  end

  it("takes \"1.1\" or \"2\" only", function()
    assert.has_error(function() new { http_version = "3" } end,
      "bad argument #1 to 'new' (option 'http_version' has no choice \"3\")")
    assert.has_error(function() new { http_version = 2 } end,
      "bad argument #1 to 'new' (option 'http_version' must be a string, got number)")
  end)

  it("refuses \"2\" over plain http://, where h2 would need prior knowledge", function()
    assert.has_error(function() new { http_version = "2", endpoint = "http://127.0.0.1:1" } end,
      "bad argument #1 to 'new' (option 'http_version' \"2\" needs an https:// endpoint " ..
      "(h2 is agreed on in the TLS handshake))")
    new({ http_version = "1.1", endpoint = "http://127.0.0.1:1" }):close()
    new({ http_version = "2", endpoint = "https://127.0.0.1:1" }):close()
  end)
end)
