-- The emulator's load-test features: per-AccessKey quotas, usage statistics,
-- device latency drawn from a distribution, random faults, and the RequestId /
-- MessageId pairs in the access log.
local cjson = require "cjson"
local rrpc = require "rrpc"
local emulator = require "emulator"
local system = require "system"

local KEY, SECRET = "LTAI5tRRpcDemoKey", "RRpcDemoSecretNotForProduction"

local function curl(args)
  local pipe = assert(io.popen("curl -s " .. args))
  local output = pipe:read("*a")
  pipe:close()
  return output
end

local function stats_of(emu)
  return cjson.decode(curl(emu.url .. "/__emulator/stats")).keys
end

local function reset_stats(emu)
  assert.equal("204", curl("-o /dev/null -w '%{http_code}' -X POST " .. emu.url .. "/__emulator/stats/reset"))
end

-- nginx writes the log in a buffer flushed every 100 ms: poll for the line.
local function log_line_with(emu, text)
  local deadline = system.monotime() + 2
  repeat
    for _, line in ipairs(emu:log_lines()) do
      if line:find(text, 1, true) then
        return line
      end
    end
    system.sleep(0.02)
  until system.monotime() > deadline
end

local function write_registry(registry)
  local path = os.tmpname()
  local file = assert(io.open(path, "w"))
  file:write(cjson.encode(registry))
  file:close()
  return path
end

local function timed_call(client, args)
  local started = system.monotime()
  local res, err = client:rrpc(args)
  return res, err, system.monotime() - started
end

describe("the emulator under load #slow", function()
  local emu
  local clients = {}

  local function client_for(id, secret)
    local client = rrpc.new { access_key_id = id, access_key_secret = secret, endpoint = emu.url }
    clients[#clients + 1] = client
    return client
  end

  setup(function()
    emu = emulator.start { workers = 2 } -- counts and quotas must hold across workers
  end)

  teardown(function()
    for _, client in ipairs(clients) do
      client:close()
    end
    emu:stop()
  end)

  describe("a key's qps quota", function()
    -- The quota counts per calendar second: start right after a second begins,
    -- and try again if the calls still straddled two seconds.
    local function eight_calls_within_one_second(quota_clients)
      for _ = 1, 3 do
        local now = system.gettime()
        system.sleep(math.ceil(now) - now + 0.02)
        reset_stats(emu)
        local second = math.floor(system.gettime())
        local outcomes = {}
        for i = 1, 8 do
          local res, err = quota_clients[i % 2 + 1]:rrpc { product_key = "a1RRpcDemo", device_name = "echo",
                                                           payload = "q", timeout = 1000 }
          outcomes[i] = { res = res, err = err }
        end
        if math.floor(system.gettime()) == second then
          return outcomes, second
        end
      end
      error("could not make 8 calls within one second")
    end

    it("throttles calls over qps in the same second with Throttling.User and a retry-after", function()
      local quota_clients = { client_for("quota-key", "quotasecret"), client_for("quota-key", "quotasecret") }
      local outcomes, second = eight_calls_within_one_second(quota_clients)
      for i = 1, 5 do
        assert.is_nil(outcomes[i].err)
        assert.equal("SUCCESS", outcomes[i].res.rrpc_code)
      end
      for i = 6, 8 do
        local err = outcomes[i].err
        assert.is_nil(outcomes[i].res)
        assert.equal("Throttling.User", err.code)
        assert.equal(400, err.status)
        assert.equal("no", err.delivered)
        assert.is_true(err.retryable)
        -- the milliseconds left in the second
        assert.is_true(err.retry_after >= 1 and err.retry_after <= 1000, tostring(err.retry_after))
      end

      local stats = stats_of(emu)["quota-key"]
      assert.same({
        total = 8, throttled = 3, max_per_second = 8, max_accepted_per_second = 5, qps = 5,
        per_second = { [tostring(second)] = 8 },
      }, stats)
    end)

    it("lets a key without qps through", function()
      local client = client_for(KEY, SECRET)
      for _ = 1, 12 do
        assert(client:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "x", timeout = 1000 })
      end
    end)
  end)

  describe("/__emulator/stats", function()
    it("counts authenticated calls per key and second, and is cleared by a reset", function()
      reset_stats(emu)
      local client = client_for(KEY, SECRET)
      for _ = 1, 4 do
        assert(client:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "x", timeout = 1000 })
      end
      -- refused by the device or the platform after authentication: counted
      assert.is_nil(client:rrpc { product_key = "a1RRpcDemo", device_name = "offline", payload = "x", timeout = 1000 })
      assert.is_nil(client:rrpc { product_key = "a1RRpcDemo", device_name = "nobody", payload = "x", timeout = 1000 })
      -- not authenticated: not counted
      local _, err = client_for(KEY, "wrong"):rrpc { product_key = "a1RRpcDemo", device_name = "echo",
                                                     payload = "x", timeout = 1000 }
      assert.equal("SignatureDoesNotMatch", err.code)

      local stats = stats_of(emu)
      local mine = stats[KEY]
      assert.equal(6, mine.total)
      assert.equal(0, mine.throttled)
      assert.is_nil(mine.qps)
      local sum, max = 0, 0
      for second, count in pairs(mine.per_second) do
        assert.matches("^%d+$", second)
        sum, max = sum + count, math.max(max, count)
      end
      assert.equal(6, sum)
      assert.equal(max, mine.max_per_second)
      assert.equal(max, mine.max_accepted_per_second)
      assert.same({ total = 0, throttled = 0, max_per_second = 0, max_accepted_per_second = 0, qps = 1000,
                    per_second = {} }, stats["bench-key"])

      reset_stats(emu)
      assert.same({ total = 0, throttled = 0, max_per_second = 0, max_accepted_per_second = 0, per_second = {} },
        stats_of(emu)[KEY])
    end)

    it("answers only GET, and its reset only POST", function()
      assert.equal("405", curl("-o /dev/null -w '%{http_code}' -X POST " .. emu.url .. "/__emulator/stats"))
      assert.equal("405", curl("-o /dev/null -w '%{http_code}' " .. emu.url .. "/__emulator/stats/reset"))
    end)
  end)

  describe("the a1Bench devices", function()
    local client
    setup(function()
      client = client_for("bench-key", "benchsecret")
    end)

    it("d200 answers after 200 ms", function()
      local res, err, elapsed = timed_call(client, { product_key = "a1Bench", device_name = "d200", payload = "p",
                                                     timeout = 1000 })
      assert.is_nil(err)
      assert.equal("p", res.payload)
      assert.is_true(elapsed >= 0.2 and elapsed < 0.6, tostring(elapsed))
    end)

    it("d200n answers after about 200 ms", function()
      local res, _, elapsed = timed_call(client, { product_key = "a1Bench", device_name = "d200n", payload = "p",
                                                   timeout = 1000 })
      assert.equal("p", res.payload)
      assert.is_true(elapsed >= 0.08 and elapsed < 0.6, tostring(elapsed)) -- 6 standard deviations
    end)

    it("flaky fails about 30% of 200 calls with the listed faults", function()
      local failures_by_code, failures = {}, 0
      for i = 1, 200 do
        local res, err = client:rrpc { product_key = "a1Bench", device_name = "flaky", payload = tostring(i),
                                       timeout = 1000 }
        if res then
          assert.equal(tostring(i), res.payload)
        else
          failures = failures + 1
          failures_by_code[err.code] = (failures_by_code[err.code] or 0) + 1
        end
      end
      assert.is_true(failures >= 25 and failures <= 100, "faults: " .. failures) -- 60 expected, sd 6.5
      for code in pairs(failures_by_code) do
        -- a reset is a network error: ConnectionLost on a reused connection (libcurl is not
        -- let to write the request again), a CURLE_ code on a fresh one
        local expected = code == "InternalError" or code == "ServiceUnavailable" or code == "ConnectionLost"
          or code:find("^CURLE_") ~= nil
        assert.is_true(expected, "unexpected fault " .. code)
      end
      assert.is_not_nil(failures_by_code.InternalError)
      assert.is_not_nil(failures_by_code.ServiceUnavailable)
    end)
  end)

  describe("the access log", function()
    it("pairs each RequestId with the MessageId sent", function()
      local client = client_for(KEY, SECRET)
      local res = assert(client:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "x", timeout = 1000 })
      local line = log_line_with(emu, "rid=" .. res.request_id .. " ")
      assert.is_not_nil(line)
      assert.matches("conn=%d+ n=%d+ .* dn=echo code=SUCCESS rid=" .. res.request_id:gsub("%-", "%%-")
        .. " mid=" .. res.message_id .. " proto=HTTP/1.1 ", line)

      local _, err = client:rrpc { product_key = "a1RRpcDemo", device_name = "offline", payload = "x", timeout = 1000 }
      line = log_line_with(emu, "rid=" .. err.request_id .. " ")
      assert.is_not_nil(line)
      assert.matches(" code=OFFLINE rid=%S+ mid=%- proto=HTTP/1.1 ", line)
    end)

    it("shows rid=- mid=- for requests without a RequestId", function()
      curl(emu.url .. "/__emulator/health") -- the client POSTs: a GET is this or a stats request
      local line = log_line_with(emu, "GET 200 len=")
      assert.is_not_nil(line)
      assert.matches(" rid=%- mid=%- proto=HTTP/1.1 ", line)
    end)
  end)
end)

describe("latency from a distribution #slow", function()
  local emu, client

  setup(function()
    local path = write_registry {
      access_keys = { k = { secret = "s" } },
      products = {
        p = {
          devices = {
            late = { behaviour = "echo", latency = { dist = "fixed", ms = 1500 } },
            uniform = { behaviour = "transform", transform = "upper",
                        latency = { dist = "uniform", min_ms = 50, max_ms = 80 } },
            exponential = { behaviour = "echo", latency = { dist = "exponential", mean_ms = 5 } },
            all_faults = { behaviour = "echo", fault_rate = 1, faults = { "html502" } },
          },
        },
      },
    }
    emu = emulator.start { devices = path }
    os.remove(path)
    client = rrpc.new { access_key_id = "k", access_key_secret = "s", endpoint = emu.url }
  end)

  teardown(function()
    client:close()
    emu:stop()
  end)

  it("at or over the Timeout gives TIMEOUT after Timeout ms", function()
    local res, err, elapsed = timed_call(client, { product_key = "p", device_name = "late", payload = "x",
                                                   timeout = 1000 })
    assert.is_nil(res)
    assert.equal("device", err.kind)
    assert.equal("TIMEOUT", err.rrpc_code)
    assert.matches("^%d+$", err.message_id)
    assert.is_true(elapsed >= 1.0 and elapsed < 1.4, tostring(elapsed))
  end)

  it("delays the behaviour's own answer (uniform)", function()
    local res, _, elapsed = timed_call(client, { product_key = "p", device_name = "uniform", payload = "abc",
                                                 timeout = 1000 })
    assert.equal("ABC", res.payload)
    assert.is_true(elapsed >= 0.05 and elapsed < 0.4, tostring(elapsed))
  end)

  it("draws from an exponential distribution", function()
    for _ = 1, 5 do
      assert(client:rrpc { product_key = "p", device_name = "exponential", payload = "x", timeout = 8000 })
    end
  end)

  it("fault_rate 1 always answers a fault from the list", function()
    local _, err = client:rrpc { product_key = "p", device_name = "all_faults", payload = "x", timeout = 1000 }
    assert.equal("http", err.kind)
    assert.equal(502, err.status)
  end)
end)

describe("registry checks for the load fields", function()
  local function start_error(access_key, device)
    local path = write_registry {
      access_keys = { k = access_key or { secret = "s" } },
      products = { p = { devices = { d = device or { behaviour = "echo" } } } },
    }
    local ok, err = pcall(emulator.start, { devices = path })
    os.remove(path)
    assert.is_false(ok)
    return err
  end

  local cases = {
    { "a qps below 1", { secret = "s", qps = 0 }, nil,
      "access_keys.k.qps: must be a positive integer" },
    { "an unknown distribution", nil, { behaviour = "echo", latency = { dist = "gamma", ms = 1 } },
      "devices.d.latency.dist: must be one of exponential, fixed, normal, uniform" },
    { "a missing parameter", nil, { behaviour = "echo", latency = { dist = "uniform", min_ms = 1 } },
      'devices.d.latency.max_ms: is required: dist "uniform" takes min_ms, max_ms' },
    { "a parameter of another distribution", nil, { behaviour = "echo", latency = { dist = "fixed", ms = 1, mean_ms = 2 } },
      'devices.d.latency.mean_ms: unknown field: dist "fixed" takes ms' },
    { "a negative latency", nil, { behaviour = "echo", latency = { dist = "normal", mean_ms = -1, stddev_ms = 2 } },
      "devices.d.latency.mean_ms: must be a non-negative number" },
    { "min_ms over max_ms", nil, { behaviour = "echo", latency = { dist = "uniform", min_ms = 5, max_ms = 2 } },
      "devices.d.latency.min_ms: must not exceed max_ms" },
    { "latency with slow", nil, { behaviour = "slow", latency_ms = 5, latency = { dist = "fixed", ms = 1 } },
      "devices.d.latency: does not apply to behaviours hang, silent, slow" },
    { "a fault_rate over 1", nil, { behaviour = "echo", fault_rate = 1.5 },
      "devices.d.fault_rate: must be a probability from 0 to 1" },
    { "an unknown fault", nil, { behaviour = "echo", fault_rate = 0.1, faults = { "reset", "explode" } },
      "devices.d.faults[2]: must be one of " },
    { "faults without fault_rate", nil, { behaviour = "echo", faults = { "reset" } },
      "devices.d.faults: needs a fault_rate" },
  }
  for _, case in ipairs(cases) do
    local name, access_key, device, message = (table.unpack or unpack)(case)
    it("refuses " .. name, function()
      assert.matches(message, start_error(access_key, device), 1, true)
    end)
  end
end)
