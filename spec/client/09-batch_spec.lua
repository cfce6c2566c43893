-- Many calls at once: retry decisions and backoff, the rate limit, and batches against
-- the emulator where every request is accounted for exactly once.
local rrpc = require "rrpc"
local errors = require "rrpc.errors"
local limiter = require "rrpc.limiter"
local emulator = require "emulator"
local system = require "system"

local KEY, SECRET, PK = "testid", "testsecret", "a1RRpcDemo"

describe("retry policy", function()
  local default = rrpc.retry.default
  local function api(code, status) return errors.api(code, { status = status or 400 }) end
  local function device(code) return errors.device(code, code, {}) end

  it("by default retries only what cannot have reached the device", function()
    assert.is_true(default:allows(errors.network("CURLE_COULDNT_CONNECT", "refused", false)))
    assert.is_true(default:allows(api("Throttling.User")))
    assert.is_true(default:allows(api("ServiceUnavailable", 503)))
    assert.is_true(default:allows(api("iot.messagebroker.RateLimit", 200)))
    assert.is_false(default:allows(errors.network("CURLE_RECV_ERROR", "reset", true)))
    assert.is_false(default:allows(device("TIMEOUT")))
    assert.is_false(default:allows(device("OFFLINE")))
    assert.is_false(default:allows(device("HALFCONN")))
    assert.is_false(default:allows(device("UNKNOWN")))
    assert.is_false(default:allows(api("InternalError", 500)))
    assert.is_false(default:allows(api("SignatureNonceUsed")))
    assert.is_false(default:allows(api("SignatureDoesNotMatch")))
    assert.is_false(default:allows(api("MissingProductKey")))
    assert.is_false(default:allows(errors.http(502, "bad gateway")))
  end)

  it("retries OFFLINE and HALFCONN only where the policy says so", function()
    local p = rrpc.retry.new { retry_offline = true }
    assert.is_true(p:allows(device("OFFLINE")))
    assert.is_false(p:allows(device("HALFCONN")))
    p = rrpc.retry.new { retry_halfconn = true }
    assert.is_true(p:allows(device("HALFCONN")))
    assert.is_false(p:allows(device("OFFLINE")))
  end)

  it("retries what may have been delivered only when the caller opts in", function()
    local p = rrpc.retry.new { retry_maybe_delivered = true }
    assert.is_true(p:allows(device("TIMEOUT")))
    assert.is_true(p:allows(errors.network("CURLE_RECV_ERROR", "reset", true)))
    assert.is_true(p:allows(api("InternalError", 500)))
    assert.is_false(p:allows(api("SignatureDoesNotMatch")))
    assert.is_false(p:allows(device("OFFLINE")))
  end)

  it("stops after max_attempts", function()
    local err = api("Throttling.User")
    assert.is_number(default:delay(err, 1))
    assert.is_number(default:delay(err, 2))
    assert.is_nil(default:delay(err, 3))
    assert.is_nil(rrpc.retry.none:delay(err, 1))
  end)

  it("backs off exponentially with full jitter, from 100 ms and from 500 ms for throttling", function()
    math.randomseed(1)
    local network = errors.network("CURLE_COULDNT_CONNECT", "refused", false)
    local p = rrpc.retry.new { max_attempts = 10 }
    for attempts = 1, 9 do
      local ceiling = math.min(20000, 100 * 2 ^ (attempts - 1))
      local throttle_ceiling = math.min(20000, 500 * 2 ^ (attempts - 1))
      local sum, n = 0, 300
      for _ = 1, n do
        local d = p:delay(network, attempts)
        assert.is_true(d >= 0 and d <= ceiling)
        sum = sum + d
        local t = p:delay(api("Throttling.User"), attempts)
        assert.is_true(t >= 0 and t <= throttle_ceiling)
      end
      -- full jitter: uniform over [0, ceiling], so the mean is near the middle
      assert.is_true(math.abs(sum / n / ceiling - 0.5) < 0.1, "attempt " .. attempts)
    end
  end)

  it("never waits less than x-acs-retry-after", function()
    local err = errors.api("Throttling.User", { status = 400, retry_after = 1500 })
    for _ = 1, 50 do assert.is_true(default:delay(err, 1) >= 1500) end
  end)

  it("checks its options", function()
    assert.has_error(function() rrpc.retry.new { max_attempts = 0 } end,
      "bad argument #1 to 'retry.new' (option 'max_attempts' must be in 1..100, got 0)")
    assert.has_error(function() rrpc.retry.new { retry_timeouts = true } end,
      "bad argument #1 to 'retry.new' (unknown option 'retry_timeouts')")
  end)
end)

describe("rate limiter", function()
  -- Virtual time: ask for a slot every 0.1 ms and log the sends.
  local function simulate(qps, burst, seconds)
    local l = limiter.new(qps, burst, 0)
    local sends, now = {}, 0
    while now < seconds do
      if l:take(now) == 0 then sends[#sends + 1] = now end
      now = now + 0.0001
    end
    return sends
  end

  local function max_in_window(sends, window)
    local most, first = 0, 1
    for last = 1, #sends do
      while sends[last] - sends[first] >= window do first = first + 1 end
      most = math.max(most, last - first + 1)
    end
    return most
  end

  it("keeps every one-second window at or under qps, whatever the burst", function()
    for _, case in ipairs { { 100, 1 }, { 100, 10 }, { 100, 100 }, { 1000, 100 }, { 7, 7 } } do
      local qps, burst = case[1], case[2]
      local sends = simulate(qps, burst, 5)
      assert.is_true(max_in_window(sends, 1.0) <= qps, ("qps %d burst %d"):format(qps, burst))
      -- and gets close to the quota over time
      assert.is_true(#sends >= qps * 5 * 0.95, ("qps %d burst %d: %d sends"):format(qps, burst, #sends))
    end
  end)

  it("lets a burst go at once and then paces at qps", function()
    local sends = simulate(100, 10, 1)
    assert.is_true(sends[10] < 0.001)    -- the first ten at once
    assert.is_true(sends[11] >= 0.009)   -- the next after a token's worth of time
  end)

  it("answers how long to wait", function()
    local l = limiter.new(10, 1, 0)
    assert.equal(0, l:take(0))
    local wait = l:take(0)
    assert.is_true(wait > 0.09 and wait <= 0.1)
  end)
end)

describe("against the emulator", function()
  local emu, client

  setup(function()
    emu = emulator.start {}
    client = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url }
  end)

  teardown(function()
    client:close()
    emu:stop()
  end)

  local function requests_to(devices, n, extra)
    local list = {}
    for i = 1, n do
      local r = { product_key = PK, device_name = devices[(i - 1) % #devices + 1], payload = "p" .. i, timeout = 1000 }
      for k, v in pairs(extra or {}) do r[k] = v end
      list[i] = r
    end
    return list
  end

  -- Requests of one device the emulator logged, waiting briefly for the last lines.
  local function logged(device, at_least)
    local deadline = system.monotime() + 2
    local lines
    repeat
      lines = {}
      for _, line in ipairs(emu:log_lines()) do
        if line:find(" dn=" .. device .. " ", 1, true) then lines[#lines + 1] = line end
      end
      if #lines >= (at_least or 0) then break end
      system.sleep(0.02)
    until system.monotime() > deadline
    return lines
  end

  describe("client:rrpc with a retry policy", function()
    it("retries throttling with fresh nonces, honouring x-acs-retry-after", function()
      local before = #logged("throttled")
      local started = system.monotime()
      local res, err = client:rrpc { product_key = PK, device_name = "throttled", payload = "x",
                                     retry = rrpc.retry.default }
      assert.is_nil(res)
      assert.equal("Throttling.User", err.code)
      assert.equal(3, err.attempts)
      assert.is_true(system.monotime() - started >= 2.0) -- two waits of at least 1000 ms
      local lines = logged("throttled", before + 3)
      assert.equal(before + 3, #lines)
      for i = before + 1, #lines do assert.matches("code=Throttling.User", lines[i]) end
    end)

    it("does not retry without a policy, nor what may have been delivered", function()
      local _, err = client:rrpc { product_key = PK, device_name = "unavailable", payload = "x" }
      assert.equal(1, err.attempts)
      _, err = client:rrpc { product_key = PK, device_name = "silent", payload = "x", timeout = 1000,
                             retry = rrpc.retry.default }
      assert.equal("TIMEOUT", err.rrpc_code)
      assert.equal(1, err.attempts)
      _, err = client:rrpc { product_key = PK, device_name = "offline", payload = "x", retry = {} }
      assert.equal(1, err.attempts)
    end)

    it("retries OFFLINE and TIMEOUT when told to", function()
      local _, err = client:rrpc { product_key = PK, device_name = "offline", payload = "x",
                                   retry = { retry_offline = true, base_delay = 10 } }
      assert.equal(3, err.attempts)
      _, err = client:rrpc { product_key = PK, device_name = "silent", payload = "x", timeout = 1000,
                             retry = { retry_maybe_delivered = true, max_attempts = 2, base_delay = 10 } }
      assert.equal(2, err.attempts)
    end)

    it("retries a refused connection, and succeeds on the first good attempt", function()
      local dead = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = "http://127.0.0.1:9" }
      local _, err = dead:rrpc { product_key = PK, device_name = "echo", payload = "x",
                                 retry = { base_delay = 10 } }
      dead:close()
      assert.equal("CURLE_COULDNT_CONNECT", err.code)
      assert.equal(3, err.attempts)
      local res = assert(client:rrpc { product_key = PK, device_name = "echo", payload = "x", retry = {} })
      assert.equal(1, res.attempts)
    end)

    it("rejects a retry option of the wrong type", function()
      assert.has_error(function()
        client:rrpc { product_key = PK, device_name = "echo", payload = "x", retry = 3 }
      end, "bad argument #1 to 'rrpc' (option 'retry' must be a policy (rrpc.retry.new{...}), a table of its options or false, got number)")
    end)
  end)

  describe("rrpc.batch", function()
    it("returns every outcome in input order, with a summary that adds up", function()
      local devices = { "echo", "upper", "offline", "no-such-device", "halfconn", "unknown" }
      local requests = requests_to(devices, 120)
      local results, summary = rrpc.batch(client, requests, { concurrency = 20 })
      assert.equal(120, #results)
      for i, r in ipairs(results) do
        local device = requests[i].device_name
        if device == "echo" then
          assert.equal("p" .. i, r.res.payload)
        elseif device == "upper" then
          assert.equal(("p" .. i):upper(), r.res.payload)
        else
          assert.is_nil(r.res)
          assert.is_true(rrpc.is_error(r.err))
        end
        assert.equal(1, (r.res or r.err).attempts)
      end
      assert.same({ total = 120, ok = 40, failed = 80 }, { total = summary.total, ok = summary.ok, failed = summary.failed })
      assert.same({ SUCCESS = 40, OFFLINE = 20, HALFCONN = 20, UNKNOWN = 20, ["iot.device.NotExistedDevice"] = 20 },
        summary.by_code)
      assert.same({ device = 60, api = 20 }, summary.by_kind)
    end)

    it("takes a retry table as client:rrpc does: the batch's policy and a request's own", function()
      local results, summary = rrpc.batch(client, requests_to({ "throttled" }, 2),
        { retry = { max_attempts = 2, throttle_delay = 0 } })
      assert.same({ 2, 2 }, { results[1].err.attempts, results[2].err.attempts })
      assert.equal(2, summary.retried)
      local own = requests_to({ "throttled" }, 1, { retry = { max_attempts = 4, throttle_delay = 0 } })
      results = rrpc.batch(client, own, { retry = false })
      assert.equal(4, results[1].err.attempts) -- the request's own table wins over the batch's none
      assert.has_error(function() rrpc.batch(client, {}, { retry = { max_attempts = 0 } }) end,
        "bad argument #3 to 'batch' (option 'retry': option 'max_attempts' must be in 1..100, got 0)")
    end)

    it("accounts once for each request of a batch with offline, slow and throttled devices", function()
      local devices = { "echo", "offline", "slow", "throttled", "unavailable", "reset" }
      local requests = requests_to(devices, 36, { timeout = 3000 })
      local results, summary = rrpc.batch(client, requests, {
        concurrency = 12, retry = rrpc.retry.new { base_delay = 10, throttle_delay = 10 } })
      local count = 0
      for i = 1, #requests do
        local r = results[i]
        count = count + 1
        assert.is_true((r.res ~= nil) ~= (r.err ~= nil))
        local device = requests[i].device_name
        local outcome = r.res or r.err
        if device == "echo" or device == "slow" then
          assert.equal("p" .. i, r.res.payload)
        elseif device == "throttled" or device == "unavailable" then
          assert.equal(3, outcome.attempts) -- retried with fresh nonces: never SignatureNonceUsed
          assert.is_true(outcome.code == "Throttling.User" or outcome.code == "ServiceUnavailable")
        elseif device == "offline" then
          assert.equal("OFFLINE", r.err.rrpc_code)
          assert.equal(1, outcome.attempts)
        else
          assert.equal("maybe", r.err.delivered) -- reset: never retried by default
          assert.equal(1, outcome.attempts)
        end
      end
      assert.equal(36, count)
      assert.equal(36, summary.total)
      assert.equal(summary.total, summary.ok + summary.failed)
      assert.equal(12, summary.by_code.SUCCESS)
      assert.equal(6, summary.by_code.OFFLINE)
      assert.equal(6, summary.by_code["Throttling.User"])
      assert.equal(6, summary.by_code.ServiceUnavailable)
      assert.equal(24, summary.retried) -- 12 throttled/unavailable requests x 2 retries
    end)

    it("turns a malformed request into an invalid outcome and goes on", function()
      local requests = requests_to({ "echo" }, 5)
      requests[3] = { product_key = PK, device_name = "echo", payload = 42 }
      local results, summary = rrpc.batch(client, requests, {})
      assert.equal("InvalidArgument", results[3].err.code)
      assert.equal("invalid", results[3].err.kind)
      assert.equal("request #3: option 'payload' must be a string, got number", results[3].err.message)
      assert.equal(0, results[3].err.attempts)
      assert.equal(4, summary.ok)
    end)

    it("applies defaults to every request", function()
      local results = rrpc.batch(client, { { device_name = "echo" }, { device_name = "upper" } },
        { defaults = { product_key = PK, payload = "all" } })
      assert.equal("all", results[1].res.payload)
      assert.equal("ALL", results[2].res.payload)
    end)

    it("reports progress up to the total", function()
      local calls, last_done, last_total = 0, -1, nil
      rrpc.batch(client, requests_to({ "echo" }, 30), {
        concurrency = 5,
        on_progress = function(done, total, stats)
          calls = calls + 1
          assert.is_true(done >= last_done)
          assert.equal(done, stats.done)
          last_done, last_total = done, total
        end,
      })
      assert.is_true(calls >= 1)
      assert.equal(30, last_done)
      assert.equal(30, last_total)
    end)

    it("keeps to qps: no second of the emulator's log holds more", function()
      local qps = 15
      local before = #logged("reverse")
      local started = system.monotime()
      local _, summary = rrpc.batch(client, requests_to({ "reverse" }, 50), { concurrency = 50, qps = qps, burst = 5 })
      local elapsed = system.monotime() - started
      assert.equal(50, summary.ok)
      assert.is_true(elapsed >= (50 - qps) / qps, "took " .. elapsed) -- at least ~2.3 s
      local per_second = {}
      local lines = logged("reverse", before + 50)
      for i = before + 1, #lines do
        local second = lines[i]:match("^(%S+)")
        per_second[second] = (per_second[second] or 0) + 1
      end
      for second, n in pairs(per_second) do
        assert.is_true(n <= qps, ("%d calls in %s"):format(n, second))
      end
    end)

    it("ends at the deadline: calls in flight may have been delivered, the rest were not sent", function()
      local started = system.monotime()
      local results, summary = rrpc.batch(client, requests_to({ "slow" }, 20, { timeout = 3000 }),
        { concurrency = 4, deadline_ms = 700 })
      assert.is_true(system.monotime() - started < 1.5)
      assert.equal(20, summary.total)
      local maybe, no = 0, 0
      for i = 1, 20 do
        local err = results[i].err
        assert.equal("deadline", err.kind)
        assert.equal("DeadlineExceeded", err.code)
        if err.delivered == "maybe" then maybe = maybe + 1 else no = no + 1 end
      end
      assert.equal(4, maybe)
      assert.equal(16, no)
    end)

    it("checks its options", function()
      assert.has_error(function() rrpc.batch(client, {}, { concurrency = 0 }) end,
        "bad argument #3 to 'batch' (option 'concurrency' must be in 1..100000, got 0)")
      assert.has_error(function() rrpc.batch(client, {}, { parallel = 2 }) end,
        "bad argument #3 to 'batch' (unknown option 'parallel')")
      assert.has_error(function() rrpc.batch(client, "devices.csv") end,
        "bad argument #2 to 'batch' (array of requests or iterator function expected, got string)")
      assert.has_error(function() rrpc.batch({}, {}) end,
        "bad argument #1 to 'batch' (rrpc client expected, got table)")
    end)
  end)

  describe("rrpc.each", function()
    it("streams outcomes as they complete, reading requests only as room frees up", function()
      local made, concurrency = 0, 10
      local function requests()
        if made == 200 then return nil end
        made = made + 1
        return { product_key = PK, device_name = made % 10 == 0 and "slow" or "echo", payload = "s" .. made, timeout = 3000 }
      end
      local seen, count = {}, 0
      for index, res, err in rrpc.each(client, requests, { concurrency = concurrency }) do
        assert.is_nil(seen[index])
        seen[index] = true
        count = count + 1
        assert.equal("s" .. index, res.payload, tostring(err))
        assert.is_true(made - count <= concurrency, "read too far ahead")
      end
      assert.equal(200, count)
    end)

    it("drops the calls in flight when the loop is left early, and the client goes on", function()
      local scope = assert((loadstring or load)([[
        local rrpc, client, requests = ...
        local n = 0
        for _ in rrpc.each(client, requests, { concurrency = 5 }) do
          n = n + 1
          if n == 2 then break end
        end
        return n
      ]]))
      local n = scope(rrpc, client, requests_to({ "slow" }, 20, { timeout = 3000 }))
      assert.equal(2, n)
      local results = rrpc.batch(client, requests_to({ "echo" }, 3))
      assert.equal("p3", results[3].res.payload)
    end)
  end)
end)
