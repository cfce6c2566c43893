-- rrpc.ngx inside real nginx: the example gateway (examples/openresty) in front of the
-- emulator. HTTP to the gateway goes through rrpc.core's libcurl pool and session.
local core = require "rrpc.core"
local http = require "http"
local cjson = require "cjson"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local system = require "system"

local PK = "a1RRpcDemo"

describe("OpenResty gateway #openresty #slow", function()
  local emu, gw, session

  local function post(path, body, timeout_ms)
    local status, headers, reply = session:perform("POST", gw.url .. path, {}, body or "", timeout_ms or 20000)
    assert(status, headers)
    return status, headers, reply
  end

  setup(function()
    emu = emulator.start {}
    gw = gateway_server.start { endpoint = emu.url, workers = 1 }
    session = http.session {}
  end)

  teardown(function()
    session:close()
    gw:stop()
    emu:stop()
  end)

  it("answers with the device's reply and the platform's ids", function()
    local status, headers, reply = post("/devices/" .. PK .. "/echo/rrpc", "raw \0 bytes")
    assert.equal(200, status)
    assert.equal("raw \0 bytes", reply)
    assert.equal("application/octet-stream", headers["content-type"])
    assert.matches("^[%x%-]+$", headers["x-rrpc-request-id"])
    assert.matches("^%d+$", headers["x-rrpc-message-id"])
  end)

  it("maps every outcome to an HTTP status", function()
    local cases = {
      { "echo", 200 }, { "upper", 200 }, { "offline", 503, "OFFLINE" }, { "halfconn", 503, "HALFCONN" },
      { "silent", 504, "TIMEOUT" }, { "throttled", 429, "Throttling.User" },
      { "no-such-device", 404, "iot.device.NotExistedDevice" }, { "inactive", 404, "iot.device.InactiveDevice" },
      { "unknown", 502, "UNKNOWN" }, { "internal-error", 502, "InternalError" },
      { "html502", 502, "HTTP502" }, { "reset", 502, "UpstreamFailed" },
    }
    for _, case in ipairs(cases) do
      local device, want, code = case[1], case[2], case[3]
      local status, headers, body = post("/devices/" .. PK .. "/" .. device .. "/rrpc?timeout=1000", "x")
      assert.equal(want, status, device)
      if code then
        local err = cjson.decode(body).error
        assert.equal(code, err.code, device)
        assert.equal(err.delivered, headers["x-rrpc-delivered"], device)
      end
    end
    local _, headers = post("/devices/" .. PK .. "/throttled/rrpc", "x")
    assert.equal("1", headers["retry-after"])
    local status = post("/devices/a1NoSuchProduct/echo/rrpc", "x")
    assert.equal(404, status)
  end)

  it("refuses bad input with 400, and what is not an RRpc call with 404 or 405", function()
    local status, _, body = post("/devices/" .. PK .. "/echo/rrpc?timeout=50", "x")
    assert.equal(400, status)
    assert.matches("option 'timeout' must be in 1000..8000, got 50", cjson.decode(body).error.message, 1, true)
    status, _, body = post("/devices/" .. PK .. "/echo/rrpc", string.rep("x", 256 * 1024 + 1))
    assert.equal(400, status)
    assert.equal("PayloadTooLarge", cjson.decode(body).error.code)
    status = post("/devices/" .. PK .. "/echo/rrpc?topic=/elsewhere/x/user/y", "x")
    assert.equal(400, status)
    status = post("/devices/" .. PK .. "/echo", "x")
    assert.equal(404, status)
    status = session:perform("GET", gw.url .. "/devices/" .. PK .. "/echo/rrpc", {}, "", 5000)
    assert.equal(405, status)
  end)

  it("carries 256 KB binary payloads", function()
    local t = {}
    for i = 1, 256 * 1024 do t[i] = string.char((i * 7) % 256) end
    local payload = table.concat(t)
    local status, _, reply = post("/devices/" .. PK .. "/echo/rrpc", payload)
    assert.equal(200, status)
    assert.is_true(reply == payload)
  end)

  it("runs 200 calls to devices that answer in 1 s in about 1 s, on one worker", function()
    local pool = http.pool { max_connections = 200 }
    local started = system.monotime()
    for i = 1, 200 do
      pool:add(i, "POST", gw.url .. "/devices/a1Bench/d1000/rrpc", {}, "n" .. i, 20000)
    end
    local done, workers = 0, {}
    while pool:count() > 0 do
      for _, c in ipairs(http.completions(pool:run(1000))) do
        assert.equal(200, c.status, c.message)
        assert.equal("n" .. c.token, c.body)
        workers[c.headers["x-gateway-worker-pid"]] = true
        done = done + 1
      end
    end
    local elapsed = system.monotime() - started
    pool:close()
    assert.equal(200, done)
    assert.is_true(elapsed < 2.5, ("200 calls took %.2f s"):format(elapsed))
    local count = 0
    for _ in pairs(workers) do count = count + 1 end
    assert.equal(1, count)
  end)

  it("answers other requests at once while a slow call is pending on the same worker", function()
    local pool = http.pool {}
    pool:add(1, "POST", gw.url .. "/devices/" .. PK .. "/slow/rrpc?timeout=3000", {}, "slow", 20000)
    pool:run(50) -- the slow call is on its way
    local started = system.monotime()
    local status, headers = post("/devices/" .. PK .. "/echo/rrpc", "quick")
    local quick = system.monotime() - started
    assert.equal(200, status)
    assert.equal(1, pool:count()) -- still waiting for the slow device
    assert.is_true(quick < 0.3, ("the quick call took %.2f s"):format(quick))
    local slow
    while pool:count() > 0 do
      for _, c in ipairs(http.completions(pool:run(1000))) do slow = c end
    end
    pool:close()
    assert.equal(200, slow.status)
    assert.equal(headers["x-gateway-worker-pid"], slow.headers["x-gateway-worker-pid"])
  end)

  it("runs batches as light threads, results in input order", function()
    local status, _, body = post("/products/" .. PK .. "/batch?timeout=1000",
      cjson.encode { devices = { "echo", "offline", "upper", "no-such-device", "silent" }, payload = "hi" })
    assert.equal(200, status)
    local doc = cjson.decode(body)
    assert.same({ "echo", "offline", "upper", "no-such-device", "silent" },
      { doc.results[1].device, doc.results[2].device, doc.results[3].device, doc.results[4].device, doc.results[5].device })
    assert.equal("hi", core.b64decode(doc.results[1].payload_base64))
    assert.equal("HI", core.b64decode(doc.results[3].payload_base64))
    assert.matches("^%d+$", doc.results[1].message_id)
    assert.same({ 503, 404, 504 }, { doc.results[2].status, doc.results[4].status, doc.results[5].status })
    assert.equal(5, doc.summary.total)
    assert.equal(2, doc.summary.ok)
  end)

  it("refuses to call the platform from a phase without subrequests, saying why", function()
    local include = os.tmpname()
    local f = assert(io.open(include, "w"))
    f:write([[
      location = /timer-call {
        content_by_lua_block {
          local gateway = require "gateway"
          local outcome
          ngx.timer.at(0, function()
            local ok, err = pcall(gateway.client().rrpc, gateway.client(),
              { product_key = "a1RRpcDemo", device_name = "echo", payload = "x" })
            outcome = tostring(err)
          end)
          while not outcome do ngx.sleep(0.01) end
          ngx.print(outcome)
        }
      }
    ]])
    f:close()
    local other = gateway_server.start { endpoint = emu.url, include = include }
    local status, _, body = session:perform("GET", other.url .. "/timer-call", {}, "", 5000)
    other:stop()
    os.remove(include)
    assert.equal(200, status)
    assert.equal("rrpc.ngx: cannot call the platform in the 'timer' phase: nginx subrequests need the "
      .. "rewrite, access or content phase", body)
  end)
end)

describe("OpenResty gateway with 2 workers #openresty #slow", function()
  local emu, gw

  setup(function()
    emu = emulator.start {}
    gw = gateway_server.start { endpoint = emu.url, workers = 2, qps = 10 }
  end)

  teardown(function()
    gw:stop()
    emu:stop()
  end)

  it("holds the shared quota across workers, answering 429 beyond max_quota_wait", function()
    os.execute("curl -s -X POST " .. emu.url .. "/__emulator/stats/reset")
    local pool = http.pool { max_connections = 40 }
    for i = 1, 40 do
      pool:add(i, "POST", gw.url .. "/devices/" .. PK .. "/echo/rrpc", {}, "q" .. i, 20000)
    end
    local workers, ok, throttled = {}, 0, 0
    while pool:count() > 0 do
      for _, c in ipairs(http.completions(pool:run(1000))) do
        workers[c.headers["x-gateway-worker-pid"]] = true
        if c.status == 200 then
          ok = ok + 1
        else -- no slot this second or the next (max_quota_wait: 1000 ms)
          assert.equal(429, c.status, c.body or c.message)
          assert.equal("Throttling.Quota", cjson.decode(c.body).error.code)
          throttled = throttled + 1
        end
      end
    end
    pool:close()
    assert.is_true(ok >= 10 and ok <= 30, "answered 200: " .. ok)
    assert.equal(40, ok + throttled)
    local count = 0
    for _ in pairs(workers) do count = count + 1 end
    assert.equal(2, count) -- both workers served calls
    local stats = cjson.decode(io.popen("curl -s " .. emu.url .. "/__emulator/stats"):read("*a"))
    local key = stats.keys.LTAI5tRRpcDemoKey
    assert.equal(ok, key.total)
    assert.is_true(key.max_per_second <= 10, "busiest second: " .. key.max_per_second)
  end)
end)
