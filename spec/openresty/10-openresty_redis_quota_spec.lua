-- rrpc.ngx.quota.redis: two nginx instances (the example gateway, --quota-redis) and plain
-- Lua processes (rrpc.quota.redis) on one key of a real redis-server, counted at the
-- emulator: the busiest second never above qps, single calls and batches mixed; Redis
-- killed and restarted under them; a wrong password.
local http = require "http"
local cjson = require "cjson"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local process = require "process"
local quota_run = require "quota_run"
local redis_server = require "redis_server"
local system = require "system"
local tls = require "tls"

local PK = "a1RRpcDemo"
-- the gateway's key (spec/support/gateway_server.lua's default), the Lua processes' too
local KEY, SECRET = "LTAI5tRRpcDemoKey", "RRpcDemoSecretNotForProduction"

local function key_stats(emu)
  return cjson.decode(process.output("curl -s " .. emu.url .. "/__emulator/stats")).keys[KEY] or
    { total = 0, max_per_second = 0, per_second = {} }
end

local function reset(emu)
  os.execute("curl -s -X POST " .. emu.url .. "/__emulator/stats/reset >/dev/null")
end

-- For `seconds`: `in_flight` single calls at all times to each gateway, and one batch of
-- `batch` devices to each at the start. Returns the statuses of the single calls, the
-- batches' answers and the slowest single call. on_tick(t): called as it goes, with the
-- seconds since the start.
local function load(gateways, seconds, in_flight, batch, on_tick)
  local pool = http.pool { max_connections = 1000 }
  local statuses, batches, slowest, started, kind = {}, {}, 0, {}, {}
  local token, open = 0, 0
  local function add(url, body, what)
    token = token + 1
    started[token], kind[token] = system.monotime(), what
    pool:add(token, "POST", url, {}, body, 30000)
    open = open + 1
  end
  local devices = {}
  for i = 1, batch do devices[i] = "echo" end
  for _, g in ipairs(gateways) do
    add(g.url .. "/products/" .. PK .. "/batch?concurrency=50", cjson.encode { devices = devices, payload = "b" }, "batch")
  end
  local t0 = system.monotime()
  local deadline = t0 + seconds
  local per_gateway = {}
  for i = 1, #gateways do per_gateway[i] = 0 end
  local of = {}
  while open > 0 or system.monotime() < deadline do
    if system.monotime() < deadline then
      for i, g in ipairs(gateways) do
        while per_gateway[i] < in_flight do
          add(g.url .. "/devices/" .. PK .. "/echo/rrpc", "s", "single")
          of[token] = i
          per_gateway[i] = per_gateway[i] + 1
        end
      end
    end
    if on_tick then on_tick(system.monotime() - t0) end
    for _, c in ipairs(http.completions(pool:run(10))) do
      open = open - 1
      local took = system.monotime() - started[c.token]
      if kind[c.token] == "batch" then
        batches[#batches + 1] = c
      else
        per_gateway[of[c.token]] = per_gateway[of[c.token]] - 1
        local status = tostring(c.status or c.code)
        statuses[status] = (statuses[status] or 0) + 1
        slowest = math.max(slowest, took)
      end
    end
  end
  pool:close()
  return statuses, batches, slowest
end

local function count_lines(path, plain)
  return quota_run.count_lines(process.read_file(path), plain)
end

describe("OpenResty gateways and Lua processes on one Redis quota #openresty #slow", function()
  local emu, redis, gateways
  local QPS = 200

  setup(function()
    emu = emulator.start { workers = 2 }
    redis = redis_server.start {}
    gateways = {}
    for i = 1, 2 do
      gateways[i] = gateway_server.start { endpoint = emu.url, workers = 1, qps = QPS, quota_redis = redis.url,
                                           quota_key = "one-account" }
    end
  end)

  teardown(function()
    for _, g in ipairs(gateways or {}) do g:stop() end
    if redis then redis:stop() end
    if emu then emu:stop() end
  end)

  local function workers(seconds)
    local list = {}
    for i, mode in ipairs { "batch", "single" } do
      list[i] = { mode = mode, endpoint = emu.url, key = KEY, secret = SECRET, seconds = seconds,
                  quota = { url = redis.url, key = "one-account", qps = QPS } }
    end
    return quota_run.start(list)
  end

  it("keeps two nginx and two Lua processes, single calls and batches, within qps, using nearly all of it", function()
    reset(emu)
    local SECONDS = 4
    local running = workers(SECONDS)
    local statuses, batches, slowest = load(gateways, SECONDS, 20, 150)
    local results = quota_run.wait(running, 15)
    system.sleep(0.3)
    local key = key_stats(emu)
    assert.is_true(key.max_per_second <= QPS, "busiest second: " .. key.max_per_second)
    -- about 4 s at 195/s, and the batches still going after
    assert.is_true(key.total >= 0.85 * QPS * SECONDS, "sent " .. key.total)
    for status in pairs(statuses) do
      assert.truthy(status == "200" or status == "429", cjson.encode(statuses))
    end
    assert.is_true((statuses["200"] or 0) >= 50, cjson.encode(statuses))
    assert.is_true(slowest < 1.5, ("a single call took %.2f s"):format(slowest)) -- max_quota_wait 1000 ms
    assert.equal(2, #batches)
    for _, b in ipairs(batches) do
      assert.equal(200, b.status, b.body)
      assert.equal(150, cjson.decode(b.body).summary.ok)
    end
    for _, r in ipairs(results) do
      assert.equal(r.sent, r.ok, cjson.encode(r.codes))
      assert.equal("shared", r.state)
    end
    for _, g in ipairs(gateways) do
      assert.equal(0, count_lines(g.stderr, "rrpc.quota.redis"), process.read_file(g.stderr))
    end
  end)

  it("falls back in each nginx when Redis is killed, says so once, and rejoins when it is back", function()
    reset(emu)
    local SECONDS = 6
    local running = workers(SECONDS)
    local killed, restarted = false, false
    local statuses, _, slowest = load(gateways, SECONDS, 10, 50, function(t)
      if not killed and t > 1.5 then
        killed = true
        redis:kill()
      elseif killed and not restarted and t > 3.5 then
        restarted = true
        redis:restart()
      end
    end)
    assert.is_true(killed and restarted)
    local results = quota_run.wait(running, 15)
    system.sleep(0.3)
    local key = key_stats(emu)
    assert.is_true(key.max_per_second <= QPS, "busiest second: " .. key.max_per_second)
    assert.is_true(slowest < 2, ("a single call took %.2f s"):format(slowest))
    for status in pairs(statuses) do
      assert.truthy(status == "200" or status == "429", cjson.encode(statuses))
    end
    for _, g in ipairs(gateways) do
      assert.equal(1, count_lines(g.stderr, "on the fallback of 25 calls/s"), process.read_file(g.stderr))
      assert.equal(1, count_lines(g.stderr, "Redis answers again"), process.read_file(g.stderr))
    end
    for _, r in ipairs(results) do
      assert.equal(r.sent, r.ok, cjson.encode(r.codes))
      assert.equal(1, quota_run.count_lines(r.stderr, "on the fallback"), r.stderr)
      assert.equal("shared", r.state)
    end
  end)
end)

describe("OpenResty gateway with a wrong Redis password #openresty #slow", function()
  local emu, redis, gw
  local PASSWORD = "gateway-spec-password"

  setup(function()
    emu = emulator.start {}
    redis = redis_server.start { password = PASSWORD }
    gw = gateway_server.start { endpoint = emu.url, workers = 1, qps = 40,
      quota_redis = ("redis://:not-the-password@127.0.0.1:%d/0"):format(redis.port) }
  end)

  teardown(function()
    if gw then gw:stop() end
    if redis then redis:stop() end
    if emu then emu:stop() end
  end)

  it("answers on its fallback, says why once without the password, and shows the state", function()
    reset(emu)
    local session = http.session {}
    for i = 1, 10 do
      local status = session:perform("POST", gw.url .. "/devices/" .. PK .. "/echo/rrpc", {}, "w" .. i, 5000)
      assert.equal(200, status)
    end
    local _, headers = session:perform("GET", gw.url .. "/__gateway/health", {}, "", 5000)
    session:close()
    assert.equal("fallback", headers["x-gateway-quota"])
    local log = process.read_file(gw.stderr)
    assert.equal(1, quota_run.count_lines(log, "WRONGPASS"), log)
    assert.is_nil(log:find("not-the-password", 1, true))
    -- 10 calls at the fallback of 40 / 8 = 5 calls/s
    system.sleep(0.3)
    assert.is_true(key_stats(emu).max_per_second <= 6, "busiest second: " .. key_stats(emu).max_per_second)
  end)
end)

describe("rrpc_ngx.quota.redis over TLS (rediss://) #openresty #slow", function()
  local emu, redis, gw, certs, include

  setup(function()
    certs = tls.generate()
    emu = emulator.start {}
    redis = redis_server.start { tls = { cert = certs.cert, key = certs.key, ca = certs.ca_file } }
    include = os.tmpname()
    process.write_file(include, ([[
      lua_ssl_trusted_certificate %s;
      location = /__spec/tls-quota {
        content_by_lua_block {
          local rrpc_ngx = require "rrpc.ngx"
          local q = rrpc_ngx.quota.redis { url = ngx.var.arg_url, key = "tls", qps = 40,
                                           server_name = ngx.var.arg_name }
          local c = rrpc_ngx.new { access_key_id = "LTAI5tRRpcDemoKey", access_key_secret = "RRpcDemoSecretNotForProduction",
                                   endpoint = os.getenv("RRPC_ENDPOINT"), quota = q }
          local res, err = c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "tls" }
          local state, why = q:state()
          ngx.print(require("cjson").encode { ok = res ~= nil, err = err and err.code, state = state, why = why or "",
                                              round_trips = q:stats().round_trips })
        }
      }
    ]]):format(certs.ca_file))
    gw = gateway_server.start { endpoint = emu.url, include = include }
  end)

  teardown(function()
    if gw then gw:stop() end
    if redis then redis:stop() end
    if emu then emu:stop() end
    if include then os.remove(include) end
    if certs then tls.remove(certs) end
  end)

  local function ask(name)
    local session = http.session {}
    local status, _, body = session:perform("GET", gw.url .. "/__spec/tls-quota?url=" .. redis.url .. "&name=" .. name,
      {}, "", 5000)
    session:close()
    assert.equal(200, status, tostring(body) .. process.read_file(gw.stderr))
    return cjson.decode(body)
  end

  it("leases over TLS, verifying Redis's certificate and name; a wrong name is a fallback, said why", function()
    local good = ask("localhost")
    assert.is_true(good.ok, good.err)
    assert.equal("shared", good.state, good.why)
    assert.is_true(good.round_trips >= 1)
    local wrong = ask("wrong.example")
    assert.is_true(wrong.ok, wrong.err) -- on its fallback
    assert.equal("fallback", wrong.state)
    assert.matches("TLS handshake with Redis failed", wrong.why, 1, true, process.read_file(gw.stderr))
  end)
end)
