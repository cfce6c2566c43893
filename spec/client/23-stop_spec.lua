-- Stopping a batch and the building blocks of the command line: rrpc.signals (deferred
-- signals, a batch's wait ended by one, force_after), rrpc.each's should_stop (drain:
-- nothing more started, the calls in flight finish; cancel: they are dropped, Cancelled
-- and delivered "maybe"), rrpc.check_request and client:sign_rrpc (the steps of a signed
-- request, the token masked), against the emulator.
local rrpc = require "rrpc"
local cjson = require "cjson"
local emulator = require "emulator"
local process = require "process"
local system = require "system"

local KEY, SECRET, PK = "testid", "testsecret", "a1RRpcDemo"

local function own_pid()
  local stat = assert(io.open("/proc/self/stat")):read("*a")
  return tonumber(stat:match("^(%d+)"))
end

-- Sends the signals to this process, `seconds` apart, from a background shell (os.execute
-- waiting for its command ignores SIGINT meanwhile, as system() does).
local function signal_later(signals, seconds)
  local words = {}
  for signal in signals:gmatch("%w+") do words[#words + 1] = ("sleep %s; kill -%s %d"):format(seconds, signal, own_pid()) end
  os.execute(("(%s) >/dev/null 2>&1 &"):format(table.concat(words, "; ")))
end

local function wait_for_signals(n)
  local got, deadline = {}, system.monotime() + 5
  while #got < n and system.monotime() < deadline do
    rrpc.signals.wait(100)
    for _, name in ipairs(rrpc.signals.take()) do got[#got + 1] = name end
  end
  return got
end

describe("rrpc.signals", function()
  after_each(function() rrpc.signals.unwatch() end)

  it("counts watched signals in the order they came, and forgets what came before watch", function()
    rrpc.signals.watch { "INT", "TERM", "USR1" }
    signal_later("USR1 INT TERM", 0.05)
    assert.same({ "USR1", "INT", "TERM" }, wait_for_signals(3))
    assert.same({}, rrpc.signals.take())
    signal_later("INT", 0)
    assert.is_true(rrpc.signals.wait(5000))
    rrpc.signals.watch { "INT" }
    assert.same({}, rrpc.signals.take())
  end)

  it("wait returns as soon as one comes (at once if one is waiting), false after the time", function()
    rrpc.signals.watch { "INT" }
    local started = system.monotime()
    assert.is_false(rrpc.signals.wait(200))
    assert.is_true(system.monotime() - started >= 0.19)
    signal_later("INT", 0.2)
    started = system.monotime()
    assert.is_true(rrpc.signals.wait(5000))
    local took = system.monotime() - started
    assert.is_true(took >= 0.15 and took < 2, tostring(took))
    assert.is_true(rrpc.signals.wait(5000)) -- not taken yet
    assert.same({ "INT" }, rrpc.signals.take())
  end)

  it("names numbers and refuses what it does not know", function()
    assert.equal(2, rrpc.signals.number("INT"))
    assert.equal(15, rrpc.signals.number("TERM"))
    assert.has_error(function() rrpc.signals.watch { "KILL" } end,
      "bad argument #1 to 'watch' (entry 1: no signal \"KILL\" (INT, TERM, HUP, QUIT, USR1, USR2))")
    assert.has_error(function() rrpc.signals.watch("INT") end,
      "bad argument #1 to 'watch' (array of signal names expected, got string)")
    assert.has_error(function() rrpc.signals.watch({ "INT" }, { force_after = -1 }) end,
      "bad argument #2 to 'watch' (option 'force_after' must be in 0..1000, got -1)")
    assert.has_error(function() rrpc.signals.wait(-1) end)
    assert.has_error(function() rrpc.signals.number("SIGINT") end)
  end)

  it("unwatch gives the previous handling back; force_after ends a process that did not take them", function()
    local vm = rawget(_G, "jit") and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
    local script = [[
      local rrpc = require "rrpc"
      rrpc.signals.watch({ "TERM" }, { force_after = %d })
      local pid = tonumber(io.open("/proc/self/stat"):read("*a"):match("^(%%d+)"))
      os.execute("kill -TERM " .. pid); os.execute("kill -TERM " .. pid)
      io.write(#rrpc.signals.take(), " taken;")
      os.execute("kill -TERM " .. pid); os.execute("kill -TERM " .. pid)
      io.write(" alive;")
      io.flush()
      %s
      os.execute("kill -TERM " .. pid)
      io.write(" survived")
    ]]
    local function run(force_after, extra)
      local path = os.tmpname()
      process.write_file(path, script:format(force_after, extra))
      local out = process.output(("(LUA_PATH='./lua/?.lua;;' LUA_CPATH='./build/%s/?.so;;' %s %s) 2>/dev/null; echo \" [$?]\""):format(
        vm, vm, path))
      os.remove(path)
      return out
    end
    assert.equal("2 taken; alive; survived [0]\n", run(0, ""))
    -- the third not taken ends it, as SIGTERM does (143)
    assert.equal("2 taken; alive; [143]\n", run(3, ""))
    assert.equal("2 taken; alive; [143]\n", run(0, "rrpc.signals.unwatch()"))
  end)
end)

describe("stopping a batch", function()
  local emu, client

  setup(function()
    emu = emulator.start {}
    client = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url }
  end)

  teardown(function()
    rrpc.signals.unwatch()
    client:close()
    emu:stop()
  end)

  local function requests(device, n, tag)
    local list = {}
    for i = 1, n do list[i] = { product_key = PK, device_name = device, payload = tag .. i } end
    return list
  end

  -- Runs rrpc.each over `list`, with should_stop answering `decide(turn, stats, elapsed)`;
  -- returns the outcomes by index and how long it took.
  local function run(list, opts, decide)
    local started, outcomes = system.monotime(), {}
    opts.should_stop = function(stats) return decide(stats, system.monotime() - started) end
    for index, res, err in rrpc.each(client, list, opts) do
      assert.is_nil(outcomes[index], "twice: " .. index)
      outcomes[index] = { res = res, err = err }
    end
    return outcomes, system.monotime() - started
  end

  local function count(outcomes, pick)
    local n = 0
    for _, o in pairs(outcomes) do if pick(o) then n = n + 1 end end
    return n
  end

  it("drain: the calls in flight finish, nothing more starts, the rest of an array is NotStarted", function()
    emu:reset_arrivals()
    local list = requests("slow", 40, "drain") -- 1.5 s each, 10 at a time
    local outcomes, took = run(list, { concurrency = 10 }, function(_, elapsed)
      if elapsed > 0.5 then return "drain" end
    end)
    assert.is_true(took > 1.4 and took < 3, tostring(took))
    assert.equal(40, count(outcomes, function() return true end))
    assert.equal(10, count(outcomes, function(o) return o.res ~= nil end))
    for _, o in pairs(outcomes) do
      if o.err then
        assert.same({ "cancelled", "NotStarted", "no", 0 }, { o.err.kind, o.err.code, o.err.delivered, o.err.attempts })
      end
    end
    local arrivals = emu:arrivals()
    local arrived = 0
    for i = 1, 40 do arrived = arrived + (arrivals[rrpc.b64encode("drain" .. i)] or 0) end
    assert.equal(10, arrived) -- and every one that arrived has its answer
  end)

  it("drain from an iterator reads it no further; a call held by the rate limit is NotStarted", function()
    local read = 0
    local function source()
      read = read + 1
      return { product_key = PK, device_name = "echo", payload = "it" .. read }
    end
    local outcomes = run(source, { qps = 2, burst = 1 }, function(stats)
      if stats.done >= 2 then return "drain" end
    end)
    local not_started = count(outcomes, function(o) return o.err and o.err.code == "NotStarted" end)
    assert.equal(2, count(outcomes, function(o) return o.res ~= nil end))
    assert.equal(1, not_started) -- the one read and waiting for its slot
    assert.equal(3, read)
  end)

  it("cancel: the calls in flight end at once as Cancelled, delivered maybe", function()
    local list = requests("slow", 20, "cancel")
    local outcomes, took = run(list, { concurrency = 5 }, function(stats, elapsed)
      if elapsed > 0.3 then
        assert.equal(5, stats.in_flight)
        return "cancel"
      end
    end)
    assert.is_true(took < 1.2, tostring(took))
    local cancelled = count(outcomes, function(o) return o.err and o.err.code == "Cancelled" end)
    assert.equal(5, cancelled)
    for _, o in pairs(outcomes) do
      if o.err and o.err.code == "Cancelled" then
        assert.same({ "cancelled", "maybe", 1 }, { o.err.kind, o.err.delivered, o.err.attempts })
      end
    end
    assert.equal(15, count(outcomes, function(o) return o.err and o.err.code == "NotStarted" end))
  end)

  it("drain, then cancel; calls waiting for a retry keep their last error", function()
    local list = requests("slow", 4, "both")
    list[5] = { product_key = PK, device_name = "throttled", payload = "t" }
    local turns = 0
    local outcomes = run(list, { concurrency = 5 }, function(_, elapsed)
      turns = turns + 1
      if elapsed > 0.6 then return "cancel" end
      if elapsed > 0.3 then return "drain" end
    end)
    assert.equal("Throttling.User", outcomes[5].err.code) -- waiting 1 s for its retry when drained
    assert.equal(1, outcomes[5].err.attempts)
    for i = 1, 4 do assert.equal("Cancelled", outcomes[i].err.code) end
  end)

  it("a signal ends the batch's wait at once: should_stop sees it within a few milliseconds", function()
    rrpc.signals.watch { "INT" }
    finally(function() rrpc.signals.unwatch() end)
    signal_later("INT", 0.3)
    local seen_at
    local outcomes, took = run(requests("slow-timeout", 3, "sig"), { concurrency = 3 }, function(_, elapsed)
      if rrpc.signals.take()[1] then
        seen_at = elapsed
        return "cancel"
      end
    end)
    assert.is_true(seen_at >= 0.25 and seen_at < 0.6, tostring(seen_at))
    assert.is_true(took < 1, tostring(took))
    assert.equal(3, count(outcomes, function(o) return o.err and o.err.code == "Cancelled" end))
  end)

  it("should_stop must answer nil, \"drain\" or \"cancel\"", function()
    assert.has_error(function()
      run(requests("echo", 1, "bad"), {}, function() return "stop" end)
    end, "bad result from should_stop in 'each' (nil, \"drain\" or \"cancel\" expected, got \"stop\")")
    assert.has_error(function() rrpc.each(client, {}, { should_stop = true }) end,
      "bad argument #3 to 'each' (option 'should_stop' must be a function, got boolean)")
  end)

  it("rrpc.batch with should_stop accounts for every request", function()
    local results, summary = rrpc.batch(client, requests("slow", 12, "b"), {
      concurrency = 4, should_stop = function(stats) if stats.in_flight == 4 then return "drain" end end,
    })
    assert.equal(12, #results)
    assert.equal(12, summary.total)
    assert.equal(4, summary.ok)
    assert.equal(8, summary.by_code.NotStarted)
  end)
end)

describe("what the command line needs of the library", function()
  local emu, client, sts

  setup(function()
    emu = emulator.start {}
    client = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url }
    sts = rrpc.new { access_key_id = "STS.static", access_key_secret = "StsStaticSecret",
                     security_token = "CAIS+static/token==", endpoint = emu.url, signature = "v1" }
  end)

  teardown(function()
    client:close()
    sts:close()
    emu:stop()
  end)

  it("rrpc.check_request says what client:rrpc would raise for, without raising", function()
    assert.is_nil(rrpc.check_request { product_key = PK, device_name = "echo", payload = "x" })
    assert.same({ option = "timeout", message = "option 'timeout' must be in 1000..8000, got 50" },
      rrpc.check_request { product_key = PK, device_name = "echo", payload = "x", timeout = 50 })
    assert.equal("payload", rrpc.check_request { product_key = PK, device_name = "e", payload = ("x"):rep(262145) }.option)
    assert.equal("option 'device_name' is required", rrpc.check_request { product_key = PK, payload = "" }.message)
  end)

  it("client:sign_rrpc: the steps of V3 and V1 with a given timestamp and nonce, the ones the signers compute", function()
    local request = { product_key = PK, device_name = "echo", payload = "hello" }
    local given = { timestamp = "2026-01-02T03:04:05Z", nonce = "0123456789abcdef" }
    local v3 = client:sign_rrpc(request, given)
    assert.same({ "v3", "POST", emu.url .. "/" }, { v3.signature_version, v3.method, v3.url })
    assert.equal("2026-01-02T03:04:05Z", v3.headers["x-acs-date"])
    assert.equal("0123456789abcdef", v3.headers["x-acs-signature-nonce"])
    local headers = {}
    for k, v in pairs(v3.headers) do headers[k] = v end
    headers.authorization = nil
    local authorization, canonical, string_to_sign = rrpc.sign_v3 { method = "POST", host = headers.host,
      headers = headers, body = v3.body, access_key_id = KEY, access_key_secret = SECRET }
    assert.same({ authorization, canonical, string_to_sign }, { v3.authorization, v3.canonical_request, v3.string_to_sign })
    assert.equal(v3.authorization, v3.headers.authorization)
    assert.same(v3.canonical_request, client:sign_rrpc(request, given).canonical_request)

    local v1client = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url, signature = "v1" }
    finally(function() v1client:close() end)
    local v1 = v1client:sign_rrpc(request, given)
    assert.is_nil(v1.canonical_request)
    assert.is_truthy(v1.string_to_sign:find("%%26SignatureNonce%%3D0123456789abcdef%%26"))
    assert.is_truthy(v1.string_to_sign:find("%%26Timestamp%%3D2026%-01%-02T03%%253A04%%253A05Z%%26"))
    assert.is_truthy(v1.body:find("&Signature=" .. rrpc.percent_encode(v1.signature), 1, true))
  end)

  it("client:sign_rrpc masks a security token in every part, and signs as a call would", function()
    local parts = sts:sign_rrpc { product_key = PK, device_name = "echo", payload = "x" }
    local text = cjson.encode(parts)
    assert.is_nil(text:find("static/token", 1, true), text)
    assert.is_nil(text:find("static%2Ftoken", 1, true), text)
    assert.is_truthy(parts.string_to_sign:find("%26SecurityToken%3D***%26", 1, true))
    assert.is_truthy(parts.body:find("SecurityToken=***&", 1, true))
    assert.is_nil(text:find("StsStaticSecret", 1, true))
  end)

  it("client:sign_rrpc refuses a timestamp or nonce of another form, and bad requests", function()
    local request = { product_key = PK, device_name = "echo", payload = "x" }
    for _, bad in ipairs { "2026-01-02", "2026-13-02T03:04:05Z", "2026-02-30T03:04:05Z", "2026-01-02 03:04:05Z",
                           "2026-01-02T24:00:00Z", "2025-02-29T00:00:00Z" } do
      assert.has_error(function() client:sign_rrpc(request, { timestamp = bad }) end,
        ("bad argument #2 to 'sign_rrpc' (option 'timestamp' must be a UTC time YYYY-MM-DDThh:mm:ssZ, got %q)"):format(bad))
    end
    assert.has_no_error(function() client:sign_rrpc(request, { timestamp = "2024-02-29T23:59:59Z" }) end)
    assert.has_error(function() client:sign_rrpc(request, { nonce = "a b" }) end)
    assert.has_error(function() client:sign_rrpc(request, { nonce = ("x"):rep(65) }) end)
    assert.has_error(function() client:sign_rrpc({ product_key = PK, payload = "x" }) end,
      "bad argument #1 to 'sign_rrpc' (option 'device_name' is required)")
    local closed = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url }
    closed:close()
    assert.has_error(function() closed:sign_rrpc(request) end, "attempt to use a closed client in 'sign_rrpc'")
  end)
end)
