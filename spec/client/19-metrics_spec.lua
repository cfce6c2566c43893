-- See every call: on_call once per call, whatever its outcome, with fields that match the
-- outcome; a hook that raises changes nothing; rrpc.metrics rendered as Prometheus text and
-- read back by a real parser (Debian's python3-prometheus-client); the gateway's /metrics
-- summed over two workers.
local rrpc = require "rrpc"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local http = require "http"
local process = require "process"

local KEY, SECRET = "testid", "testsecret"
local PK = "a1RRpcDemo"
local PYTHON = "/usr/bin/python3" -- Debian's, with python3-prometheus-client

local function request(device, extra)
  local r = { product_key = PK, device_name = device, payload = "m", timeout = 1000 }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

-- Series -> value, as prometheus_client's own text parser reads the exposition.
local function parsed(text)
  local file = os.tmpname()
  process.write_file(file, text)
  local out = process.output(PYTHON .. [[ -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
' ]] .. file .. " 2>&1")
  os.remove(file)
  local series = {}
  for name, value in out:gmatch("(%S+) (%S+)\n") do series[name] = tonumber(value) end
  assert(next(series), "the parser read nothing: " .. out)
  return series
end

describe("on_call and rrpc.metrics", function()
  local emu

  setup(function() emu = emulator.start {} end)
  teardown(function() emu:stop() end)

  local function client_with(hooks, extra)
    local opts = { endpoint = emu.url, access_key_id = KEY, access_key_secret = SECRET }
    for k, v in pairs(hooks) do opts[k] = v end
    for k, v in pairs(extra or {}) do opts[k] = v end
    return rrpc.new(opts)
  end

  -- The info's fields must say what the outcome says.
  local function assert_matches(info, res, err, where)
    assert.equal("RRpc", info.action, where)
    assert.equal(res ~= nil, info.ok, where)
    assert.is_number(info.duration_ms, where)
    assert.is_true(info.duration_ms >= 0, where)
    assert.is_number(info.quota_wait_ms, where)
    local outcome = res or err
    assert.equal(outcome.attempts, info.attempts, where)
    assert.equal(outcome.request_id, info.request_id, where)
    assert.equal(outcome.message_id, info.message_id, where)
    if res then
      assert.equal(res.rrpc_code, info.rrpc_code, where)
    else
      for _, field in ipairs { "kind", "code", "rrpc_code", "delivered", "retryable", "status" } do
        assert.equal(err[field], info[field], where .. ": " .. field)
      end
    end
    assert.is_nil(info.payload, where)
    for _, value in pairs(info) do assert.is_nil(tostring(value):find(SECRET, 1, true), where) end
  end

  it("calls on_call once for each single call, for every kind of outcome", function()
    local infos, starts = {}, 0
    local c = client_with { on_call = function(i) infos[#infos + 1] = i end, on_call_start = function() starts = starts + 1 end }
    local cases = {
      { request("echo"), "ok" },
      { request("offline"), "device" },                    -- delivered no
      { request("silent"), "device" },                     -- TIMEOUT, delivered maybe
      { request("halfconn"), "device" },
      { request("throttled", { retry = { max_attempts = 2, throttle_delay = 0 } }), "api" }, -- retried
      { request("no-such-device"), "api" },
      { { product_key = "a1Hostile", device_name = "reset", payload = "m", timeout = 1000 }, "network" }, -- maybe
    }
    for i, case in ipairs(cases) do
      local res, err = c:rrpc(case[1])
      assert.equal(i, #infos, "one on_call per call")
      assert.equal(case[2], infos[i].ok and "ok" or infos[i].kind, case[1].device_name)
      assert_matches(infos[i], res, err, case[1].device_name)
    end
    assert.equal(2, infos[5].attempts)
    assert.equal("maybe", infos[7].delivered)
    assert.equal(#cases, starts)
    local _, doc = pcall(c.request, c, "Pub", { ProductKey = PK, TopicFullName = "/a1RRpcDemo/echo/user/x",
                                                 MessageContent = rrpc.b64encode("hi") })
    assert.equal(#cases + 1, #infos)
    assert.equal("Pub", infos[#infos].action)
    assert.is_not_nil(doc)
    c:close()
    -- a network failure before anything was sent
    infos = {}
    local refused = client_with({ on_call = function(i) infos[#infos + 1] = i end }, { endpoint = "http://127.0.0.1:9" })
    local _, err = refused:rrpc(request("echo"))
    refused:close()
    assert.equal(1, #infos)
    assert.same({ "network", "no", true }, { infos[1].kind, infos[1].delivered, infos[1].retryable })
    assert.equal(err.code, infos[1].code)
  end)

  it("calls on_call once for each call of a batch: invalid requests and the deadline included", function()
    local infos = {}
    local c = client_with { on_call = function(i) infos[#infos + 1] = i end }
    local requests = { request("echo"), request("offline"), { product_key = 5 }, request("slow", { timeout = 3000 }),
                       request("upper") }
    local results = rrpc.batch(c, requests, { deadline_ms = 800 }) -- slow answers after 1.5 s
    c:close()
    assert.equal(#requests, #infos)
    local by_device = {}
    for _, i in ipairs(infos) do by_device[i.device_name or "?"] = i end
    assert_matches(by_device.echo, results[1].res, results[1].err, "echo")
    assert_matches(by_device.offline, results[2].res, results[2].err, "offline")
    assert.same({ "invalid", "InvalidArgument", 0 }, { by_device["?"].kind, by_device["?"].code, by_device["?"].attempts })
    assert.same({ "deadline", "maybe" }, { by_device.slow.kind, by_device.slow.delivered })
    assert.is_true(by_device.slow.duration_ms >= 700)
    assert_matches(by_device.upper, results[5].res, results[5].err, "upper")
  end)

  it("a hook that raises changes no outcome, breaks no batch, and is reported once", function()
    local child = os.tmpname()
    process.write_file(child, ([[
      local rrpc = require "rrpc"
      local c = rrpc.new { endpoint = %q, access_key_id = "testid", access_key_secret = "testsecret",
                           on_call = function() error("the hook broke") end }
      local res = assert(c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "still" })
      local results, summary = rrpc.batch(c, { { product_key = "a1RRpcDemo", device_name = "echo", payload = "a" },
                                              { product_key = "a1RRpcDemo", device_name = "upper", payload = "b" } })
      print(res.payload, results[1].res.payload, results[2].res.payload, summary.ok)
    ]]):format(emu.url))
    -- the interpreter running the suite (under check-memory, the sanitized one)
    local vm = arg[-1] or (rawget(_G, "jit") and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+")))
    local out = process.output(("LUA_PATH='./lua/?.lua;;' LUA_CPATH=%s %s %s 2>&1"):format(
      process.quote(package.cpath:match("^[^;]+") .. ";;"), vm, child))
    os.remove(child)
    assert.is_truthy(out:find("still\ta\tB\t2", 1, true), out)
    local _, reports = out:gsub("the on_call hook raised", "")
    assert.equal(1, reports, out)
  end)

  it("renders Prometheus text that a real parser reads, with counts that match, bounded labels, no secret", function()
    local m = rrpc.metrics.new()
    local c = client_with(m:attach {})
    for _ = 1, 3 do assert(c:rrpc(request("echo"))) end
    c:rrpc(request("offline"))
    rrpc.batch(c, { request("echo"), request("upper"), { product_key = 5 } })
    c:close()
    local text = m:render()
    assert.is_nil(text:find(SECRET, 1, true))
    assert.is_nil(text:find("echo", 1, true)) -- no device name is a label
    local s = parsed(text)
    assert.equal(5, s['rrpc_calls_total{action=RRpc,code=SUCCESS,outcome=ok}'])
    assert.equal(1, s['rrpc_calls_total{action=RRpc,code=OFFLINE,outcome=device}'])
    assert.equal(1, s['rrpc_calls_total{action=RRpc,code=InvalidArgument,outcome=invalid}'])
    assert.equal(7, s['rrpc_call_duration_seconds_count{action=RRpc}'])
    assert.equal(7, s['rrpc_call_duration_seconds_bucket{action=RRpc,le=+Inf}'])
    assert.equal(6, s['rrpc_attempts_total{action=RRpc}'])
    assert.equal(0, s['rrpc_calls_in_flight{}'])
    assert.is_not_nil(s['rrpc_quota_wait_seconds_total{action=RRpc}'])
    -- codes that do not look like the platform's are "other"
    local odd = rrpc.metrics.new()
    odd:observe { action = "RRpc", ok = false, kind = "device", code = "\255 \"x\"\n", attempts = 1, duration_ms = 1 }
    assert.equal(1, parsed(odd:render())['rrpc_calls_total{action=RRpc,code=other,outcome=device}'])
  end)

  describe("the gateway's /metrics #openresty #slow", function()
    local gw

    setup(function()
      gw = gateway_server.start { endpoint = emu.url, workers = 2 }
    end)
    teardown(function() gw:stop() end)

    it("sums every worker's calls", function()
      local pool = http.pool { max_connections = 20 }
      local workers, done = {}, 0
      for i = 1, 40 do
        pool:add(i, "POST", gw.url .. "/devices/" .. PK .. (i % 4 == 0 and "/offline" or "/echo") .. "/rrpc", {}, "x", 10000)
      end
      while done < 40 do
        for _, c in ipairs(http.completions(pool:run(200))) do
          done = done + 1
          workers[c.headers["x-gateway-worker-pid"] or "?"] = true
        end
      end
      pool:close()
      local distinct = 0
      for _ in pairs(workers) do distinct = distinct + 1 end
      process.output("sleep 1.5") -- each worker flushes its counts every second
      local session = http.session {}
      local status, headers, text = session:perform("GET", gw.url .. "/metrics", {}, "", 5000)
      session:close()
      assert.equal(200, status)
      assert.matches("^text/plain; version=0.0.4", headers["content-type"])
      local s = parsed(text)
      assert.equal(30, s['rrpc_calls_total{action=RRpc,code=SUCCESS,outcome=ok}'])
      assert.equal(10, s['rrpc_calls_total{action=RRpc,code=OFFLINE,outcome=device}'])
      assert.equal(40, s['rrpc_call_duration_seconds_count{action=RRpc}'])
      assert.equal(0, s['rrpc_calls_in_flight{}'])
      assert.equal(2, distinct) -- both workers answered (reuseport spreads 20 connections)
      assert.is_nil(text:find("LTAI5tRRpcDemoKey", 1, true))
    end)
  end)
end)
