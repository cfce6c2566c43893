-- A hostile far side: the emulator's a1Hostile devices answer with broken HTTP, broken
-- or oversized bodies and JSON the platform never sends. Every call ends with a clear error
-- of the right kind (never a Lua error), says honestly that the device may have the message
-- (the request had been sent), ends within connect_timeout + Timeout + timeout_margin, and
-- keeps the client's memory within max_response_bytes; single calls and batches alike.
local rrpc = require "rrpc"
local client_module = require "rrpc.client"
local core = require "rrpc.core"
local emulator = require "emulator"
local process = require "process"

local KEY, SECRET = "testid", "testsecret"
local PK = "a1Hostile"
local CONNECT_TIMEOUT, TIMEOUT, MARGIN = 1000, 1000, 500
local TIME_BOUND_S = (CONNECT_TIMEOUT + TIMEOUT + MARGIN) / 1000
local SLACK_S = 0.5 -- scheduling, and the emulator's first deflate of its bomb
local DEFAULT_MAX_RESPONSE = 8 * 1024 * 1024
-- As emulator/lua/rrpc_emulator/hostile.lua sends it in the error's Message.
local INVALID_UTF8 = "bad bytes: \128 \192\175 \237\160\128 \255 \226\130"
local OVERFLOWING_MESSAGE_ID = "123456789012345678901234567890"

-- Each fault mode: the device, the error's kind and code, and a text its message holds
-- (our own messages only: libcurl's wording is its own). `waits`: the far side sends
-- nothing more, so only the client's timeout ends the call.
local FAULTS = {
  { device = "malformed-json", kind = "http", code = "HTTP200", says = "invalid JSON (Expected comma" },
  { device = "bad-json", kind = "http", code = "HTTP200", says = "invalid JSON" },
  { device = "empty-200", kind = "http", code = "HTTP200", says = "invalid JSON" },
  { device = "deep-nesting", kind = "http", code = "HTTP200", says = "too many nested data structures" },
  { device = "html502", kind = "http", code = "HTTP502", status = 502, says = "not the platform's JSON" },
  { device = "wrong-rrpc-code", kind = "http", code = "InvalidResponse", says = "field 'RrpcCode' must be a string, got number" },
  { device = "wrong-payload", kind = "http", code = "InvalidResponse", says = "field 'PayloadBase64Byte' must be a string, got table" },
  { device = "wrong-message-id", kind = "http", code = "InvalidResponse", says = "field 'MessageId' must be a 64-bit integer, got string" },
  { device = "wrong-success", kind = "http", code = "InvalidResponse", says = "field 'Success' must be a boolean, got string" },
  { device = "wrong-code", kind = "http", code = "InvalidResponse", says = "field 'Code' must be a string, got table" },
  { device = "invalid-utf8", kind = "api", code = "iot.messagebroker.RrpcFailed", says = INVALID_UTF8 },
  { device = "huge-body", kind = "network", code = "ResponseTooLarge", says = "max_response_bytes (8388608)" },
  { device = "huge-length", kind = "network", code = "ResponseTooLarge", says = "max_response_bytes (8388608)" },
  { device = "deflate-bomb", kind = "network", code = "ResponseTooLarge", says = "max_response_bytes (8388608)" },
  { device = "truncated-body", kind = "network", code = "CURLE_PARTIAL_FILE" },
  { device = "reset", kind = "network", code = "CURLE_GOT_NOTHING" },
  { device = "rst", kind = "network", code = "CURLE_RECV_ERROR" },
  { device = "rst-mid-body", kind = "network", code = "CURLE_RECV_ERROR" },
  { device = "broken-chunked", kind = "network", code = "CURLE_RECV_ERROR" },
  { device = "garbage", kind = "network", code = "CURLE_UNSUPPORTED_PROTOCOL" },
  { device = "hang", kind = "network", code = "CURLE_OPERATION_TIMEDOUT", waits = true },
  { device = "partial-headers", kind = "network", code = "CURLE_OPERATION_TIMEDOUT", waits = true },
}

-- Faults that end the connection without an answer: on a reused connection libcurl would
-- write the request once more on a new one, which rrpc refuses (ConnectionLost).
local DROPS_CONNECTION = { reset = true, rst = true }

local function request_to(device, payload)
  return { product_key = PK, device_name = device, payload = payload or "ping", timeout = TIMEOUT }
end

local function echo_request(payload)
  return { product_key = "a1RRpcDemo", device_name = "echo", payload = payload, timeout = TIMEOUT }
end

-- The error every fault mode must give, field by field.
local function assert_fault(fault, err, where)
  where = where .. ": " .. tostring(err)
  assert.is_true(rrpc.is_error(err), where)
  assert.equal(fault.kind, err.kind, where)
  assert.equal(fault.code, err.code, where)
  assert.equal("maybe", err.delivered, where) -- the request had been sent
  assert.is_false(err.retryable, where)
  if fault.kind ~= "network" then
    assert.equal(fault.status or 200, err.status, where)
  end
  if fault.says then
    assert.is_truthy(err.message:find(fault.says, 1, true), where)
  end
  assert.is_string(tostring(err))
end

describe("a hostile far side #slow", function()
  local emu

  local function new_client(opts)
    local o = { endpoint = emu.url, access_key_id = KEY, access_key_secret = SECRET,
                connect_timeout = CONNECT_TIMEOUT, timeout_margin = MARGIN }
    for k, v in pairs(opts or {}) do o[k] = v end
    return rrpc.new(o)
  end

  setup(function()
    emu = emulator.start {}
  end)

  teardown(function()
    emu:stop()
  end)

  describe("one call per fault mode, on a fresh connection", function()
    for _, fault in ipairs(FAULTS) do
      it(("%s: %s %s, within the time bound"):format(fault.device, fault.kind, fault.code), function()
        local c = new_client()
        local started = core.monotime()
        local res, err = c:rrpc(request_to(fault.device))
        local elapsed = core.monotime() - started
        c:close()
        assert.is_nil(res)
        assert_fault(fault, err, fault.device)
        assert.is_true(elapsed <= TIME_BOUND_S + SLACK_S, ("%s took %.2f s"):format(fault.device, elapsed))
        if fault.waits then
          assert.is_true(elapsed >= TIME_BOUND_S - 0.1, ("%s ended early, %.2f s"):format(fault.device, elapsed))
        end
      end)
    end

    it("a MessageId too large for 64 bits is not the platform's (its field is a Long)", function()
      local c = new_client()
      local res, err = c:rrpc(request_to("message-id-overflow", "still here"))
      c:close()
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal("InvalidResponse", err.code)
      assert.equal("maybe", err.delivered)
      assert.is_false(err.retryable)
      assert.equal("field 'MessageId' must be a 64-bit integer, got 30 digits", err.message)
    end)

    it("a MessageId is exact up to the largest 64-bit integer, and refused above it", function()
      local function answer(message_id)
        return client_module.interpret({}, { outcome = function(doc) return doc end }, 200, {},
          '{"RequestId":"r","Success":true,"RrpcCode":"SUCCESS","MessageId":' .. message_id .. '}')
      end
      for _, id in ipairs { "0", "889455942124347392", "9007199254740993", "9223372036854775807" } do
        assert.equal(id, assert(answer(id)).MessageId)
      end
      for _, id in ipairs { "9223372036854775808", "10000000000000000000", OVERFLOWING_MESSAGE_ID } do
        local doc, err = answer(id)
        assert.is_nil(doc, id)
        assert.equal("InvalidResponse", err.code, id)
      end
    end)

    it("invalid UTF-8 in a message comes back byte for byte, neither checked nor replaced", function()
      local c = new_client()
      local _, err = c:rrpc(request_to("invalid-utf8"))
      c:close()
      assert.equal(INVALID_UTF8, err.message)
      assert.is_truthy(tostring(err):find(INVALID_UTF8, 1, true))
    end)
  end)

  it("one client goes on after each fault mode, on its kept-alive connection", function()
    local c = new_client()
    for i, fault in ipairs(FAULTS) do
      local _, err = c:rrpc(request_to(fault.device))
      if DROPS_CONNECTION[fault.device] and err.code == "ConnectionLost" then
        assert.equal("network", err.kind)
        assert.equal("maybe", err.delivered)
        assert.is_false(err.retryable)
      else
        assert_fault(fault, err, fault.device .. " after a reused connection")
      end
      local payload = "after " .. fault.device .. " #" .. i
      local res = assert(c:rrpc(echo_request(payload)))
      assert.equal(payload, res.payload)
    end
    c:close()
  end)

  it("client:request checks the same fields, the MessageId's range among them", function()
    local c = new_client()
    local function request(device)
      return c:request("RRpc", { ProductKey = PK, DeviceName = device, RequestBase64Byte = rrpc.b64encode("x"),
                                 Timeout = TIMEOUT }, { timeout = TIMEOUT })
    end
    for _, device in ipairs { "wrong-message-id", "wrong-success", "wrong-code" } do
      local _, err = request(device)
      assert.equal("InvalidResponse", err.code, device)
    end
    local _, err = request("deep-nesting")
    assert.equal("HTTP200", err.code)
    local doc, overflow = request("message-id-overflow")
    assert.is_nil(doc)
    assert.equal("InvalidResponse", overflow.code)
    c:close()
  end)

  describe("rrpc.batch and rrpc.each", function()
    it("every fault mode at once: each accounted for once, as a single call reports it, within the bound", function()
      local requests = { echo_request("first") }
      for _, fault in ipairs(FAULTS) do requests[#requests + 1] = request_to(fault.device) end
      requests[#requests + 1] = echo_request("beside the faults")
      local c = new_client()
      local started = core.monotime()
      -- as many connections as calls: each fault meets a fresh one, as in a single call
      local results, summary = rrpc.batch(c, requests, { concurrency = #requests })
      local elapsed = core.monotime() - started
      c:close()
      assert.equal(#requests, summary.total)
      assert.equal(2, summary.ok)
      assert.equal(#FAULTS, summary.failed)
      assert.equal(#requests, summary.attempts) -- nothing here is safe to send again
      assert.equal("first", results[1].res.payload)
      for i, fault in ipairs(FAULTS) do
        assert_fault(fault, results[i + 1].err, "batch " .. fault.device)
      end
      assert.equal("beside the faults", results[#requests].res.payload)
      assert.is_true(elapsed <= TIME_BOUND_S + SLACK_S, ("the batch took %.2f s"):format(elapsed))
    end)

    it("round after round of faults on a few reused connections: nothing lost, nothing duplicated", function()
      local ROUNDS = 3
      local plan = {} -- index -> the fault, or the echo's payload
      local function source()
        local n = #plan + 1
        local round = math.floor((n - 1) / (2 * #FAULTS))
        if round >= ROUNDS then return nil end
        local slot = (n - 1) % (2 * #FAULTS)
        if slot % 2 == 0 then
          local fault = FAULTS[slot / 2 + 1]
          if fault.waits then fault = FAULTS[1] end -- keep the rounds quick
          plan[n] = fault
          return request_to(fault.device)
        end
        plan[n] = "echo #" .. n
        return echo_request(plan[n])
      end
      local c = new_client()
      local seen, count = {}, 0
      for index, res, err in rrpc.each(c, source, { concurrency = 4 }) do
        assert.is_nil(seen[index], "index " .. index .. " twice")
        seen[index], count = true, count + 1
        local expected = plan[index]
        if type(expected) == "string" then
          assert.equal(expected, assert(res, tostring(err)).payload)
        else
          assert.is_nil(res)
          assert.equal("maybe", err.delivered, tostring(err))
        end
      end
      c:close()
      assert.equal(#plan, count)
      assert.equal(ROUNDS * 2 * #FAULTS, count)
    end)
  end)

  describe("max_response_bytes", function()
    -- A child process per measurement: the peak RSS (VmHWM) of this busted process says
    -- nothing about one call. It warms up (libcurl, TLS libraries, the connection), then
    -- reports the peak before and after the call to `device`.
    local CHILD = [[
      local rrpc = require "rrpc"
      local function kb(field)
        for line in io.lines("/proc/self/status") do
          local v = line:match("^" .. field .. ":%s*(%d+)")
          if v then return tonumber(v) end
        end
      end
      local url, device, max = arg[1], arg[2], tonumber(arg[3])
      local c = rrpc.new { endpoint = url, access_key_id = "testid", access_key_secret = "testsecret",
                           max_response_bytes = max }
      assert(c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "warm up" })
      local before = kb("VmHWM")
      local _, err = c:rrpc { product_key = "a1Hostile", device_name = device, payload = "x", timeout = 1000 }
      print(err and err.code or "ok", before, kb("VmHWM"))
    ]]
    local VM = rawget(_G, "jit") and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
    local script

    setup(function()
      script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(CHILD)
      f:close()
    end)

    teardown(function()
      os.remove(script)
    end)

    local function peak_growth(device, max)
      local out = process.output(("LUA_PATH='./lua/?.lua;;' LUA_CPATH=%s %s %s %s %s %d 2>&1"):format(
        process.quote(package.cpath:match("^[^;]+") .. ";;"), VM, script, emu.url, device, max))
      local code, before, after = out:match("^(%S+)%s+(%d+)%s+(%d+)")
      assert(code, out)
      return code, (tonumber(after) - tonumber(before)) * 1024
    end

    for _, max in ipairs { 1024 * 1024, DEFAULT_MAX_RESPONSE } do
      for _, device in ipairs { "huge-body", "huge-length", "deflate-bomb" } do
        it(("%s (64 MiB) stops at %d bytes: ResponseTooLarge, peak memory within the limit"):format(device, max),
          function()
            local code, growth = peak_growth(device, max)
            assert.equal("ResponseTooLarge", code)
            -- the body buffer holds at most max bytes; the rest is libcurl's and the allocator's
            assert.is_true(growth <= max + 2 * 1024 * 1024, ("peak grew by %d bytes"):format(growth))
          end)
      end
    end

    -- 100 huge answers in flight at once: without a budget for the whole client, each
    -- holds up to max_response_bytes (8 MiB), about 800 MB in all.
    local BATCH_CHILD = [[
      local rrpc = require "rrpc"
      local url, memory = arg[1], tonumber(arg[2])
      local c = rrpc.new { endpoint = url, access_key_id = "testid", access_key_secret = "testsecret",
                           max_response_memory = memory }
      local requests = {}
      for i = 1, 100 do
        requests[i] = { product_key = "a1Hostile", device_name = "huge-body", payload = "x" .. i, timeout = 8000 }
      end
      local results = rrpc.batch(c, requests, { concurrency = 100 })
      local codes = {}
      for _, r in ipairs(results) do
        local e = r.err
        local key = e and (e.code .. "/" .. e.delivered .. "/" .. tostring(e.retryable)) or "ok"
        codes[key] = (codes[key] or 0) + 1
      end
      local after = assert(c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "after" })
      for line in io.lines("/proc/self/status") do
        local peak = line:match("^VmHWM:%s*(%d+)")
        if peak then io.write("peak ", peak, " ", after.payload) end
      end
      for key, n in pairs(codes) do io.write(" ", key, "=", n) end
      print()
    ]]

    local function batch_of_huge(memory)
      local child = os.tmpname()
      process.write_file(child, BATCH_CHILD)
      local out = process.output(("LUA_PATH='./lua/?.lua;;' LUA_CPATH=%s %s %s %s %d 2>&1"):format(
        process.quote(package.cpath:match("^[^;]+") .. ";;"), VM, child, emu.url, memory))
      os.remove(child)
      local peak, after, codes = out:match("^peak (%d+) (%S+)(.*)")
      assert(peak, out)
      local counts = {}
      for key, n in codes:gmatch("(%S+)=(%d+)") do counts[key] = tonumber(n) end
      return tonumber(peak) * 1024, after, counts
    end

    for _, memory in ipairs { 16 * 1024 * 1024, 64 * 1024 * 1024 } do
      it(("100 huge answers in flight, max_response_memory %d MiB: peak memory within the limit"):format(memory / 2^20), function()
        local peak, after, counts = batch_of_huge(memory)
        -- each call ends on the budget or on its own limit, having been sent; none is retried
        local ended = (counts["ResponseMemoryExceeded/maybe/false"] or 0) + (counts["ResponseTooLarge/maybe/false"] or 0)
        assert.equal(100, ended)
        assert.is_true((counts["ResponseMemoryExceeded/maybe/false"] or 0) > 0)
        assert.equal("after", after) -- the budget is free again once the batch is over
        -- the buffers may hold up to twice what they count, plus the interpreter and libcurl
        assert.is_true(peak <= 2 * memory + 24 * 1024 * 1024, ("peak RSS %d bytes"):format(peak))
      end)
    end

    it("bounds ordinary answers too", function()
      local c = new_client { max_response_bytes = 64 * 1024 }
      local _, err = c:rrpc(echo_request(("x"):rep(100 * 1024))) -- answered in about 133 KB of Base64
      assert.equal("ResponseTooLarge", err.code)
      assert.equal("maybe", err.delivered)
      assert(c:rrpc(echo_request(("x"):rep(40 * 1024)))) -- answered in about 54 KB
      c:close()
    end)
  end)
end)

-- Bodies the emulator does not send, straight to the client's interpretation of an answer.
describe("answers of the wrong shape", function()
  local c, call

  setup(function()
    c = rrpc.new { endpoint = "http://127.0.0.1:9", access_key_id = KEY, access_key_secret = SECRET }
    call = client_module.prepare_rrpc(c, "rrpc", echo_request("x"), nil, 1)
  end)

  teardown(function()
    c:close()
  end)

  local function interpret(body, status)
    return client_module.interpret({}, call, status or 200, { ["x-acs-request-id"] = "FROM-HEADER" }, body)
  end

  local OK_HEAD = '{"RequestId":"R","Success":true,"RrpcCode":"SUCCESS",'
  local CASES = {
    -- body, the error's code (nil: a success) and a text of its message
    { OK_HEAD .. '"MessageId":1.5,"PayloadBase64Byte":"eA=="}', "InvalidResponse",
      "field 'MessageId' must be a 64-bit integer, got number" },
    { OK_HEAD .. '"MessageId":1e400,"PayloadBase64Byte":"eA=="}', "InvalidResponse", "field 'MessageId'" },
    { OK_HEAD .. '"MessageId":-5,"PayloadBase64Byte":"eA=="}', "InvalidResponse", "field 'MessageId'" },
    { OK_HEAD .. '"MessageId":"12x","PayloadBase64Byte":"eA=="}', "InvalidResponse", "field 'MessageId'" },
    { OK_HEAD .. '"MessageId":true,"PayloadBase64Byte":"eA=="}', "InvalidResponse", "got boolean" },
    { OK_HEAD .. '"PayloadBase64Byte":"e A=="}', "InvalidResponse", "reply payload is not Base64" },
    { OK_HEAD .. '"PayloadBase64Byte":["eA=="]}', "InvalidResponse", "field 'PayloadBase64Byte'" },
    { '{"RequestId":7,"Success":true,"RrpcCode":"SUCCESS"}', "InvalidResponse", "field 'RequestId' must be a string, got number" },
    { '{"RequestId":"R","Success":false,"Code":"X","Message":{"a":1}}', "InvalidResponse", "field 'Message'" },
    { '{"RequestId":"R","Success":false,"Code":"X","ErrorMessage":false}', "InvalidResponse", "field 'ErrorMessage'" },
    { '{"RequestId":"R","Success":1,"RrpcCode":"SUCCESS"}', "InvalidResponse", "field 'Success'" },
    { '{"RequestId":"R","Success":true}', "InvalidResponse", "response has no RrpcCode" },
    { '{"RequestId":"R","Success":true,"RrpcCode":null}', "InvalidResponse", "response has no RrpcCode" },
    { '{"RequestId":"R","Success":true,"RrpcCode":{}}', "InvalidResponse", "field 'RrpcCode'" },
    { '{"RrpcCode":"SUCCESS"}\0{"MessageId":1}', "HTTP200", "a NUL byte at character 23" },
    { '[1,2,3]', "HTTP200", "not an object" },
    { '"SUCCESS"', "HTTP200", "not an object" },
    { ("["):rep(1001) .. ("]"):rep(1001), "HTTP200", "too many nested" },
    -- JSON null is an absent field; an absent payload is an empty reply
    { '{"RequestId":"R","Success":true,"RrpcCode":"SUCCESS","MessageId":null,"PayloadBase64Byte":null}' },
    { '{"RequestId":null,"Success":null,"Code":null,"RrpcCode":"SUCCESS"}' },
    -- device states with odd codes are device errors, the code as sent
    { '{"RequestId":"R","Success":true,"RrpcCode":"\255\254"}', "\255\254", "device state" },
  }

  for i, case in ipairs(CASES) do
    local body, code, says = case[1], case[2], case[3]
    it(("#%d: %s"):format(i, code or "a success"), function()
      local res, err = interpret(body)
      if not code then
        assert(res, tostring(err))
        assert.is_string(res.payload)
        assert.is_true(res.message_id == nil or res.message_id:find("^%d+$") ~= nil)
        return
      end
      assert.is_nil(res)
      assert.is_true(rrpc.is_error(err))
      assert.equal(code, err.code, tostring(err))
      assert.equal("maybe", err.delivered)
      assert.is_truthy(err.message:find(says, 1, true), tostring(err))
    end)
  end

  it("takes the header's RequestId when the body's is unusable, and judges a 4xx as refused", function()
    local _, err = interpret('{"RequestId":[],"Code":"X"}', 400)
    assert.equal("InvalidResponse", err.code)
    assert.equal("FROM-HEADER", err.request_id)
    assert.equal("no", err.delivered)
  end)
end)
