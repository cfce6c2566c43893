-- rrpc.quota: one limit for every call of a client, and with Redis for every process on
-- one key. Its options; the process quota for single calls (Throttling.Quota beyond
-- max_quota_wait) and batches; then real redis-server (started here on a free port,
-- stopped by PID) under several processes at once, counted at the emulator: the busiest
-- second never above qps, single calls and batches mixed, two keys side by side, Redis
-- killed and restarted, paused, and a wrong password.
local rrpc = require "rrpc"
local core = require "rrpc.core"
local cjson = require "cjson"
local emulator = require "emulator"
local process = require "process"
local quota_run = require "quota_run"
local redis_server = require "redis_server"
local system = require "system"

local KEY, SECRET = "testid", "testsecret"
local KEY_B, SECRET_B = "LTAI5tRRpcDemoKey", "RRpcDemoSecretNotForProduction"
local PK = "a1RRpcDemo"

describe("rrpc.quota: options", function()
  local function message_of(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    return tostring(err)
  end

  it("refuses bad options of rrpc.quota.redis at creation, naming the option", function()
    local cases = {
      { {}, "option 'key' is required" },
      { { key = "a" }, "option 'url' is required" },
      { { url = "http://127.0.0.1", key = "a" }, "option 'url' must start with redis:// or rediss://" },
      { { url = "redis://", key = "a" }, "option 'url' has no host" },
      { { url = "redis://h:99999", key = "a" }, "option 'url' has a port outside 1..65535" },
      { { url = "redis://h/x", key = "a" }, "option 'url' may have only a database number after the host" },
      { { url = "redis://h", key = "a b" }, "option 'key' must be 1..200 letters" },
      { { url = "redis://h", key = "a", qps = 0 }, "option 'qps' must be in 1..1000000, got 0" },
      { { url = "redis://h", key = "a", qps = 10, fallback_qps = 20 }, "option 'fallback_qps' must be in 1..10 (qps), got 20" },
      { { url = "redis://h", key = "a", timeout = 0 }, "option 'timeout' must be in 1..60000, got 0" },
      { { url = "redis://h", key = "a", colour = 1 }, "unknown option 'colour'" },
      { { url = "rediss://h", key = "a" }, "option 'url': rediss:// (TLS) is not supported in plain Lua" },
    }
    for _, case in ipairs(cases) do
      local message = message_of(function() rrpc.quota.redis(case[1]) end)
      assert.matches("bad argument #1 to 'redis' (" .. case[2], message, 1, true)
    end
  end)

  it("never shows the URL's password in its refusals", function()
    local message = message_of(function() rrpc.quota.redis { url = "redis://:hunter2@h/x", key = "a" } end)
    assert.is_nil(message:find("hunter2", 1, true))
    local q = rrpc.quota.redis { url = "redis://:hunter2@127.0.0.1:1/0", key = "a" }
    assert.is_nil(tostring(q):find("hunter2", 1, true))
    q:close()
  end)

  it("reads the URL as Redis users write it", function()
    local quota = require "rrpc.quota"
    assert.same({ tls = false, host = "10.0.0.5", port = 6380, db = 3, password = "p@ss:w" },
      quota.parse_redis_url("redis://:p%40ss%3Aw@10.0.0.5:6380/3"))
    assert.same({ tls = true, host = "::1", port = 6379, db = 0, username = "app", password = "pw" },
      quota.parse_redis_url("rediss://app:pw@[::1]"))
  end)

  it("rrpc.new takes only a quota from rrpc.quota, and max_quota_wait in 0..60000", function()
    assert.matches("option 'quota' must be a quota from rrpc.quota", message_of(function()
      rrpc.new { access_key_id = KEY, access_key_secret = SECRET, quota = {} } end), 1, true)
    assert.matches("option 'max_quota_wait' must be in 0..60000, got -1", message_of(function()
      rrpc.new { access_key_id = KEY, access_key_secret = SECRET, max_quota_wait = -1 } end), 1, true)
    assert.matches("option 'burst' must be in 1..5, got 6", message_of(function()
      rrpc.quota.process { qps = 5, burst = 6 } end), 1, true)
  end)
end)

describe("rrpc.quota.process", function()
  local emu

  setup(function() emu = emulator.start {} end)
  teardown(function() emu:stop() end)

  local function stats(key)
    return cjson.decode(process.output("curl -s " .. emu.url .. "/__emulator/stats")).keys[key] or { total = 0 }
  end

  it("holds single calls and batches of its clients to one qps; beyond max_quota_wait, Throttling.Quota at once",
    function()
      os.execute("curl -s -X POST " .. emu.url .. "/__emulator/stats/reset >/dev/null")
      local q = rrpc.quota.process { qps = 10, burst = 1 }
      local a = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url, quota = q,
                           max_quota_wait = 150 }
      local b = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url, quota = q }
      local requests = {}
      for i = 1, 15 do requests[i] = { product_key = PK, device_name = "echo", payload = "b" .. i } end
      local t = core.monotime()
      local _, summary = rrpc.batch(b, requests, { qps = 1000 })
      assert.equal(15, summary.ok)
      assert.is_true(core.monotime() - t > 1.2, "15 calls at 10/s took " .. (core.monotime() - t))
      -- right after the batch the next slot is 100 ms away: within 150 ms
      assert.truthy(a:rrpc { product_key = PK, device_name = "echo", payload = "s1" })
      -- the one after that too; then the batch of b takes the next second's slots
      local refused = 0
      for i = 1, 5 do
        local res, err = a:rrpc { product_key = PK, device_name = "echo", payload = "s" .. i + 1 }
        if not res then
          refused = refused + 1
          assert.equal("Throttling.Quota", err.code)
          assert.equal("no", err.delivered)
          assert.is_true(err.retry_after >= 1 and err.retry_after <= 1000)
        end
      end
      assert.equal(0, refused) -- 10/s with 150 ms to wait: each gets its slot
      a:close()
      b:close()
      system.sleep(0.3)
      assert.is_true(stats(KEY).max_per_second <= 10, "busiest second " .. stats(KEY).max_per_second)
      assert.equal("local", (q:state()))
    end)

  it("refuses a single call at once when its slot is beyond max_quota_wait", function()
    local q = rrpc.quota.process { qps = 1, burst = 1 }
    local c = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url, quota = q,
                         max_quota_wait = 0 }
    assert.truthy(c:rrpc { product_key = PK, device_name = "echo", payload = "one" })
    local t = core.monotime()
    local res, err = c:rrpc { product_key = PK, device_name = "echo", payload = "two" }
    assert.is_nil(res)
    assert.equal("Throttling.Quota", err.code)
    assert.is_true(core.monotime() - t < 0.05)
    assert.matches("within max_quota_wait (0 ms)", err.message, 1, true)
    c:close()
  end)
end)

local start_workers, wait_workers, count_lines = quota_run.start, quota_run.wait, quota_run.count_lines

describe("rrpc.quota.redis: many processes, one key #slow", function()
  local emu, redis

  setup(function()
    emu = emulator.start { workers = 2 }
    redis = redis_server.start {}
  end)

  teardown(function()
    if redis then redis:stop() end
    if emu then emu:stop() end
  end)

  local function reset() os.execute("curl -s -X POST " .. emu.url .. "/__emulator/stats/reset >/dev/null") end
  local function key_stats(key)
    return cjson.decode(process.output("curl -s " .. emu.url .. "/__emulator/stats")).keys[key] or
      { total = 0, max_per_second = 0, per_second = {} }
  end
  local function worker(mode, seconds, qkey, qps, extra)
    local w = { mode = mode, endpoint = emu.url, key = KEY, secret = SECRET, seconds = seconds,
                quota = { url = redis.url, key = qkey, qps = qps } }
    for k, v in pairs(extra or {}) do w[k] = v end
    return w
  end

  it("keeps 3 batches and single calls in 4 processes within qps, and uses nearly all of it", function()
    reset()
    local QPS, SECONDS = 200, 4
    local results = wait_workers(start_workers {
      worker("batch", SECONDS, "shared-a", QPS), worker("batch", SECONDS, "shared-a", QPS),
      worker("batch", SECONDS, "shared-a", QPS), worker("single", SECONDS, "shared-a", QPS),
    }, SECONDS + 10)
    system.sleep(0.3)
    local key = key_stats(KEY)
    local ok, round_trips = 0, 0
    for _, r in ipairs(results) do
      assert.equal(r.sent, r.ok, cjson.encode(r.codes))
      assert.equal("shared", r.state)
      assert.equal(0, r.stats.fallback_sends)
      assert.equal("", r.stderr)
      ok = ok + r.ok
      round_trips = round_trips + r.stats.round_trips
    end
    assert.is_true(results[4].ok >= 20, "single calls: " .. results[4].ok)
    assert.equal(ok, key.total)
    assert.is_true(key.max_per_second <= QPS, "busiest second: " .. key.max_per_second)
    -- about 4 s of 195/s (the slots' spacing leaves 2.5%) and the calls in flight at the end
    assert.is_true(ok >= 0.85 * QPS * SECONDS, "sent " .. ok .. " in " .. SECONDS .. " s at " .. QPS .. "/s")
    assert.is_true(round_trips / ok < 0.6, ("%.2f round trips per call"):format(round_trips / ok))
  end)

  it("lets a single call with max_quota_wait = 0 wait for the lease's answer, not for a slot", function()
    local q = rrpc.quota.redis { url = redis.url, key = "no-wait", qps = 100 }
    local c = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url, quota = q,
                         max_quota_wait = 0 }
    local ok = 0
    for i = 1, 20 do
      local res, err = c:rrpc { product_key = PK, device_name = "echo", payload = "nw" .. i }
      if res then ok = ok + 1 else assert.equal("Throttling.Quota", err.code) end
      system.sleep(0.02) -- 10 ms between slots at 100/s
    end
    c:close()
    q:close()
    -- on the answer of a lease, or on a slot that was there; refused (at once) when the next
    -- slot leased ahead was not due yet
    assert.is_true(ok >= 10, "sent " .. ok)
    assert.equal("shared", (q:state()))
  end)

  it("keeps two keys side by side, each to its own qps", function()
    reset()
    local QPS, SECONDS = 120, 3
    local b = { key = KEY_B, secret = SECRET_B }
    local results = wait_workers(start_workers {
      worker("batch", SECONDS, "acct-a", QPS), worker("batch", SECONDS, "acct-a", QPS),
      worker("batch", SECONDS, "acct-b", QPS, b), worker("batch", SECONDS, "acct-b", QPS, b),
    }, SECONDS + 10)
    system.sleep(0.3)
    local a_stats, b_stats = key_stats(KEY), key_stats(KEY_B)
    for _, r in ipairs(results) do assert.equal(r.sent, r.ok) end
    for name, s in pairs { a = a_stats, b = b_stats } do
      assert.is_true(s.max_per_second <= QPS, name .. ": busiest second " .. s.max_per_second)
      -- neither key's calls take the other's slots (sharing them would give each about half;
      -- the workers' start-up on a busy machine costs part of the first second)
      assert.is_true(s.total >= 0.75 * QPS * SECONDS, name .. ": " .. s.total)
    end
  end)

  it("falls back to a local share when Redis is killed, says so once, and rejoins when it is back", function()
    reset()
    local QPS, SECONDS = 200, 7
    local running = start_workers {
      worker("batch", SECONDS, "restart", QPS), worker("batch", SECONDS, "restart", QPS),
      worker("single", SECONDS, "restart", QPS),
    }
    system.sleep(2)
    redis:kill()
    local killed_at = system.gettime()
    system.sleep(2.5)
    redis:restart()
    local back_at = system.gettime()
    local results = wait_workers(running, SECONDS + 10)
    system.sleep(0.3)
    local key = key_stats(KEY)
    for i, r in ipairs(results) do
      assert.is_true(r.took < SECONDS + 3, "worker " .. i .. " took " .. r.took)
      assert.equal(r.sent, r.ok, cjson.encode(r.codes))
      assert.equal("shared", r.state, r.stderr)
      assert.equal(1, count_lines(r.stderr, "on the fallback of 25 calls/s"), r.stderr)
      assert.equal(1, count_lines(r.stderr, "Redis answers again"), r.stderr)
      -- 2.5 s at 25/s, less the time to notice
      assert.is_true(r.stats.fallback_sends >= 20 and r.stats.fallback_sends <= 80,
        "fallback sends: " .. r.stats.fallback_sends)
    end
    assert.is_true(key.max_per_second <= QPS, "busiest second: " .. key.max_per_second)
    -- while Redis was gone, three hosts at their fallback of 25/s each
    for second, n in pairs(key.per_second) do
      local s = tonumber(second)
      if s > killed_at + 1 and s + 1 < back_at then
        assert.is_true(n <= 3 * 25 + 3, ("second %d: %d calls"):format(s, n))
      end
    end
  end)

  it("falls back when Redis stops answering and rejoins when it answers again, never hanging a call", function()
    reset()
    local QPS, SECONDS = 200, 4
    local running = start_workers {
      worker("batch", SECONDS, "paused", QPS), worker("single", SECONDS, "paused", QPS),
    }
    system.sleep(1)
    redis:pause()
    system.sleep(1.5)
    redis:resume()
    local results = wait_workers(running, SECONDS + 10)
    system.sleep(0.3)
    for i, r in ipairs(results) do
      assert.is_true(r.took < SECONDS + 3, "worker " .. i .. " took " .. r.took)
      assert.equal(r.sent, r.ok)
      assert.equal("shared", r.state, r.stderr)
      assert.equal(1, count_lines(r.stderr, "Redis did not answer within 200 ms"), r.stderr)
      assert.equal(1, count_lines(r.stderr, "Redis answers again"), r.stderr)
    end
    -- a single call waited at most a timeout for Redis, then its fallback's slot; or, back
    -- on the shared quota, the hold of the first host back (a probe interval, a timeout, 50 ms)
    assert.is_true(results[2].slowest_s < 0.5 + 0.25, "slowest single call " .. results[2].slowest_s)
    assert.is_true(key_stats(KEY).max_per_second <= QPS, "busiest second: " .. key_stats(KEY).max_per_second)
  end)
end)

describe("rrpc.quota.redis: a Redis with a password #slow", function()
  local emu, redis
  local PASSWORD = "quota-spec-password"

  setup(function()
    emu = emulator.start {}
    redis = redis_server.start { password = PASSWORD }
  end)

  teardown(function()
    if redis then redis:stop() end
    if emu then emu:stop() end
  end)

  it("falls back on a wrong password, says so once without the password, and shares with the right one", function()
    local url = ("redis://127.0.0.1:%d/0"):format(redis.port)
    local running = start_workers {
      { mode = "single", endpoint = emu.url, key = KEY, secret = SECRET, seconds = 2,
        quota = { url = url, password = "wrong-password", key = "pw", qps = 80 } },
      { mode = "single", endpoint = emu.url, key = KEY, secret = SECRET, seconds = 2,
        quota = { url = ("redis://:%s@127.0.0.1:%d/1"):format(PASSWORD, redis.port), key = "pw", qps = 80 } },
      { mode = "single", endpoint = emu.url, key = KEY, secret = SECRET, seconds = 2,
        quota = { url = url, key = "pw", qps = 80 } },
    }
    local results = wait_workers(running, 10)
    local wrong, right, none = results[1], results[2], results[3]
    assert.equal("fallback", wrong.state)
    assert.matches("WRONGPASS", wrong.why)
    assert.equal(1, count_lines(wrong.stderr, "WRONGPASS"), wrong.stderr)
    assert.equal(1, count_lines(none.stderr, "NOAUTH"), none.stderr)
    for _, r in ipairs(results) do
      assert.is_nil(r.stderr:find("wrong-password", 1, true))
      assert.is_nil(r.stderr:find(PASSWORD, 1, true))
      assert.equal(r.sent, r.ok)
    end
    -- 2 s at the fallback of 80 / 8 = 10 calls/s
    assert.is_true(wrong.ok >= 15 and wrong.ok <= 25, "sent on the fallback: " .. wrong.ok)
    assert.equal("shared", right.state)
    assert.is_true(right.ok >= 100, "sent on the shared quota: " .. right.ok)
  end)
end)
