-- End to end: real signed HTTP calls to the nginx emulator on loopback.
local rrpc = require "rrpc"
local emulator = require "emulator"
local system = require "system"

local KEY, SECRET = "LTAI5tRRpcDemoKey", "RRpcDemoSecretNotForProduction"
local PK = "a1RRpcDemo"

-- MessageIds are exact decimal strings above 2^53. Arithmetic on them needs 64-bit
-- integers (Lua 5.3+), so every VM checks them digit by digit, and 5.3+ by arithmetic too.
local TWO_TO_53 = "9007199254740992"
local function above_2_53(digits)
  return #digits > #TWO_TO_53 or (#digits == #TWO_TO_53 and digits > TWO_TO_53)
end

-- "1299" -> "1300"
local function plus_one(digits)
  local i = #digits
  while i > 0 and digits:sub(i, i) == "9" do i = i - 1 end
  if i == 0 then return "1" .. ("0"):rep(#digits) end
  return digits:sub(1, i - 1) .. string.char(digits:byte(i) + 1) .. ("0"):rep(#digits - i)
end

-- `<close>` is Lua 5.4 syntax: elsewhere such a spec is listed as pending, with the reason.
local it_lua54 = _VERSION >= "Lua 5.4" and it or function(name)
  pending(name .. " (pending: to-be-closed variables need Lua 5.4, this is "
    .. (rawget(_G, "jit") and jit.version or _VERSION) .. ")")
end

describe("client:rrpc against the emulator", function()
  local emu, client
  local seen_errors = {} -- every error of this file, checked for the secret at the end

  local function new(opts)
    local o = { access_key_id = KEY, access_key_secret = SECRET, endpoint = emu.url }
    for k, v in pairs(opts or {}) do o[k] = v end
    return rrpc.new(o)
  end

  local function call(device, args, c)
    args = args or {}
    args.product_key = args.product_key or PK
    args.device_name = device
    args.payload = args.payload or "ping"
    args.timeout = args.timeout or 1000
    local res, err = (c or client):rrpc(args)
    if err then seen_errors[#seen_errors + 1] = err end
    return res, err
  end

  local function fails(device, want, args, c)
    local res, err = call(device, args, c)
    assert.is_nil(res)
    assert.is_true(rrpc.is_error(err))
    for k, v in pairs(want) do
      assert.equal(v, err[k], ("%s: field %s of %s"):format(device, k, tostring(err)))
    end
    return err
  end

  local function random_bytes(n)
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    return table.concat(t)
  end

  setup(function()
    emu = emulator.start {}
    client = new()
  end)

  teardown(function()
    client:close()
    emu:stop()
    for _, err in ipairs(seen_errors) do
      assert.is_nil(tostring(err):find(SECRET, 1, true))
      for _, v in pairs(err) do assert.is_nil(tostring(v):find(SECRET, 1, true)) end
    end
  end)

  describe("replies", function()
    for _, signature in ipairs { "v3", "v1" } do
      for _, placement in ipairs { "body", "query" } do
        it(("echo raw bytes, %s signature, parameters in the %s"):format(signature, placement), function()
          local c = new { signature = signature, placement = placement }
          local payload = "\0bin\255ary\0 + / = & % ~ *"
          local res = assert(call("echo", { payload = payload }, c))
          c:close()
          assert.equal(payload, res.payload)
          assert.equal("SUCCESS", res.rrpc_code)
          assert.matches("^%d+$", res.message_id)
          assert.matches("^[%x%-]+$", res.request_id)
        end)
      end
    end

    it("come from the device's own logic (transform)", function()
      assert.equal("HELLO\0WORLD", assert(call("upper", { payload = "hello\0world" })).payload)
      assert.equal("cba", assert(call("reverse", { payload = "abc" })).payload)
    end)

    it("carry 256 KB of binary payload both ways, with both signatures", function()
      math.randomseed(42)
      local payload = random_bytes(256 * 1024)
      for _, signature in ipairs { "v3", "v1" } do
        local c = new { signature = signature }
        local res = assert(call("echo", { payload = payload }, c))
        c:close()
        assert.equal(#payload, #res.payload)
        assert.is_true(payload == res.payload)
      end
    end)

    it("keep MessageIds above 2^53 exact to the last digit", function()
      local previous
      for _ = 1, 5 do
        local res = assert(call("echo"))
        local digits = res.message_id
        assert.matches("^[1-9]%d*$", digits)
        assert.is_true(above_2_53(digits), digits)
        -- the emulator counts up by one; a double would have steps of 256 here
        if previous then assert.equal(plus_one(previous), digits) end
        if math.tointeger then -- the same with 64-bit integers
          local id = math.tointeger(tonumber(digits))
          assert.is_true(id > 2^53)
          assert.equal(digits, tostring(id))
          if previous then assert.equal(math.tointeger(tonumber(previous)) + 1, id) end
        end
        previous = digits
      end
    end)

    it("wait for a slow device within the timeout", function()
      local res = assert(call("slow", { timeout = 3000 }))
      assert.equal("ping", res.payload)
    end)

    it("reach a product of a purchased instance with its IotInstanceId", function()
      fails("echo", { kind = "api", code = "iot.prod.NotExistedProduct", delivered = "no" },
        { product_key = "a1InstanceOnly" })
      assert(call("echo", { product_key = "a1InstanceOnly", iot_instance_id = "iot-060a0demo" }))
      local c = new { iot_instance_id = "iot-060a0demo" }
      assert(call("echo", { product_key = "a1InstanceOnly" }, c))
      c:close()
      fails("echo", { kind = "api", code = "iot.system.InstanceNotFound" },
        { product_key = "a1InstanceOnly", iot_instance_id = "iot-nope" })
    end)

    it("go through a custom topic", function()
      assert(call("echo", { topic = "/" .. PK .. "/echo/user/cmd" }))
      fails("echo", { kind = "invalid", code = "iot.messagebroker.InvalidFormattedTopicName", delivered = "no" },
        { topic = "/other/echo/user/cmd" })
    end)
  end)

  describe("device states", function()
    it("OFFLINE was not delivered", function()
      local err = fails("offline", { kind = "device", rrpc_code = "OFFLINE", code = "OFFLINE",
                                     delivered = "no", retryable = false, status = 200 })
      assert.is_nil(err.message_id)
      assert.matches("^rrpc device error OFFLINE: device is offline %(HTTP 200, RequestId ", tostring(err))
      fails("offline-code", { kind = "device", rrpc_code = "OFFLINE",
                              code = "iot.messagebroker.OFFLINE", delivered = "no" })
    end)

    it("HALFCONN may have been delivered", function()
      local err = fails("halfconn", { kind = "device", rrpc_code = "HALFCONN", delivered = "maybe" })
      assert.matches("^%d+$", err.message_id)
      fails("halfconn-code", { kind = "device", rrpc_code = "HALFCONN",
                               code = "iot.messagebroker.HALFCONN", delivered = "maybe" })
    end)

    it("TIMEOUT arrives as the device's TIMEOUT, never as a network timeout", function()
      local err = fails("silent", { kind = "device", rrpc_code = "TIMEOUT", delivered = "maybe",
                                    retryable = false }, { timeout = 3000 })
      assert.matches("^%d+$", err.message_id)
      fails("slow-timeout", { kind = "device", rrpc_code = "TIMEOUT" }, { timeout = 1000 })
      fails("timeout-code", { kind = "device", rrpc_code = "TIMEOUT", code = "iot.messagebroker.TIMEOUT" })
    end)

    it("UNKNOWN may have been delivered", function()
      fails("unknown", { kind = "device", rrpc_code = "UNKNOWN", delivered = "maybe" })
    end)
  end)

  describe("platform errors", function()
    it("unknown or inactive targets were not delivered", function()
      fails("no-such-device", { kind = "api", code = "iot.device.NotExistedDevice", delivered = "no", status = 200 })
      fails("echo", { kind = "api", code = "iot.prod.NotExistedProduct", delivered = "no" },
        { product_key = "a1NoSuchProduct" })
      fails("inactive", { kind = "api", code = "iot.device.InactiveDevice", delivered = "no" })
    end)

    it("throttling is retryable and says when", function()
      local err = fails("throttled", { kind = "api", code = "Throttling.User", status = 400,
                                       delivered = "no", retryable = true })
      assert.equal(1000, err.retry_after)
      fails("ratelimit", { kind = "api", code = "iot.messagebroker.RateLimit", delivered = "no", retryable = true })
    end)

    it("server-side failures say whether the message may have gone out", function()
      fails("system-error", { kind = "api", code = "iot.system.SystemException", delivered = "maybe", retryable = false })
      fails("internal-error", { kind = "api", code = "InternalError", status = 500, delivered = "maybe" })
      fails("unavailable", { kind = "api", code = "ServiceUnavailable", status = 503, delivered = "no", retryable = true })
    end)

    it("an empty payload is the platform's NullMessageContent", function()
      fails("echo", { kind = "invalid", code = "iot.messagebroker.NullMessageContent", delivered = "no" },
        { payload = "" })
    end)

    it("a 256 KB payload in the query string meets the URL limit: HTTP 414, not delivered", function()
      local c = new { placement = "query" }
      fails("echo", { kind = "http", status = 414, delivered = "no", retryable = false },
        { payload = string.rep("x", 256 * 1024) }, c)
      c:close()
    end)
  end)

  describe("credentials", function()
    it("a wrong secret is SignatureDoesNotMatch, and the secret shows nowhere", function()
      local wrong = "Wrong-Secret-Value-42"
      local c = new { access_key_secret = wrong }
      local err = fails("echo", { kind = "api", code = "SignatureDoesNotMatch", status = 400, delivered = "no" }, {}, c)
      c:close()
      assert.is_nil(tostring(err):find(wrong, 1, true))
      for _, v in pairs(err) do assert.is_nil(tostring(v):find(wrong, 1, true)) end
    end)

    it("unknown, inactive and clock-skewed keys are refused with the platform's codes", function()
      for _, case in ipairs {
        { key = "LTAI-no-such-key", secret = "x", code = "InvalidAccessKeyId.NotFound", status = 404 },
        { key = "inactive-key", secret = "inactivesecret", code = "InvalidAccessKeyId.Inactive", status = 400 },
        { key = "skewed-key", secret = "skewsecret", code = "InvalidTimeStamp.Expired", status = 400 },
      } do
        for _, signature in ipairs { "v3", "v1" } do
          local c = new { access_key_id = case.key, access_key_secret = case.secret, signature = signature }
          fails("echo", { kind = "api", code = case.code, status = case.status, delivered = "no" }, {}, c)
          c:close()
        end
      end
    end)
  end)

  describe("transport failures", function()
    it("an HTML 502 page is an http error", function()
      local err = fails("html502", { kind = "http", status = 502, delivered = "maybe" })
      assert.matches("not the platform's JSON", err.message)
    end)

    it("a truncated JSON body is an http error", function()
      fails("bad-json", { kind = "http", status = 200, delivered = "maybe" })
    end)

    it("a connection closed without an answer may have been delivered", function()
      local c = new() -- a fresh connection: libcurl reports it as it is
      fails("reset", { kind = "network", code = "CURLE_GOT_NOTHING", delivered = "maybe", retryable = false }, {}, c)
      c:close()
    end)

    it("a reused connection closed without an answer is not written again", function()
      local c = new()
      assert(call("echo", {}, c)) -- the connection is now kept alive
      -- libcurl would write the request once more on a new connection: rrpc refuses that
      -- (the emulator would otherwise see it twice and refuse the repeated nonce)
      fails("reset", { kind = "network", code = "ConnectionLost", delivered = "maybe", retryable = false }, {}, c)
      c:close()
    end)

    it("headers that never come end at the derived HTTP timeout", function()
      local c = new { connect_timeout = 1000, timeout_margin = 500 }
      local started = os.time()
      fails("hang", { kind = "network", code = "CURLE_OPERATION_TIMEDOUT", delivered = "maybe" }, { timeout = 1000 }, c)
      assert.is_true(os.time() - started <= 5)
      c:close()
    end)

    it("a refused connection was not delivered and is retryable", function()
      local c = rrpc.new { access_key_id = KEY, access_key_secret = SECRET, endpoint = "http://127.0.0.1:9" }
      local err = fails("echo", { kind = "network", code = "CURLE_COULDNT_CONNECT", delivered = "no", retryable = true }, {}, c)
      assert.matches("^rrpc network error CURLE_COULDNT_CONNECT: ", tostring(err))
      c:close()
    end)
  end)

  describe("connections", function()
    local function connections_of(device)
      local conns = {}
      for _, line in ipairs(emu:log_lines()) do
        local conn, n = line:match("conn=(%d+) n=(%d+) .* dn=" .. device:gsub("%-", "%%-") .. " ")
        if conn then conns[#conns + 1] = { conn = conn, n = tonumber(n) } end
      end
      return conns
    end

    it("one client reuses its kept-alive connection for consecutive calls", function()
      local before = #connections_of("upper")
      local c = new()
      for _ = 1, 5 do assert(call("upper", { payload = "x" }, c)) end
      c:close()
      -- nginx logs a request just after answering it: give the last line a moment
      local deadline = system.monotime() + 2
      local conns = connections_of("upper")
      while #conns < before + 5 and system.monotime() < deadline do
        system.sleep(0.02)
        conns = connections_of("upper")
      end
      assert.equal(before + 5, #conns)
      local first = conns[before + 1]
      assert.equal(1, first.n) -- a new connection for a new client...
      for i = 2, 5 do          -- ...then the same one, request after request
        assert.equal(first.conn, conns[before + i].conn)
        assert.equal(i, conns[before + i].n)
      end
    end)

    it("every call carries a fresh nonce: 50 calls, none refused", function()
      for _ = 1, 50 do assert(call("echo")) end
    end)
  end)

  describe("client:request", function()
    it("calls another Iot action with the same signing and exact MessageIds", function()
      for _, signature in ipairs { "v3", "v1" } do
        local c = new { signature = signature }
        local doc = assert(c:request("Pub", { ProductKey = PK, TopicFullName = "/" .. PK .. "/echo/user/get",
                                              MessageContent = rrpc.b64encode("on"), Qos = 0 }))
        c:close()
        assert.is_true(doc.Success)
        assert.matches("^%d+$", doc.MessageId)
        assert.is_true(above_2_53(doc.MessageId), doc.MessageId)
        if math.tointeger then assert.is_true(math.tointeger(tonumber(doc.MessageId)) > 2^53) end
      end
    end)

    it("returns the platform's errors in the same shape", function()
      local doc, err = client:request("NoSuchAction", {})
      assert.is_nil(doc)
      assert.equal("api", err.kind)
      assert.equal("InvalidAction.NotFound", err.code)
      doc, err = client:request("Pub", { ProductKey = PK })
      assert.is_nil(doc)
      assert.equal("invalid", err.kind)
      assert.equal("MissingTopicFullName", err.code)
    end)
  end)

  describe("lifetime", function()
    it("close is idempotent and a closed client refuses calls", function()
      local c = new()
      assert(call("echo", {}, c))
      c:close()
      c:close()
      assert.has_error(function() c:rrpc { product_key = PK, device_name = "echo", payload = "x" } end,
        "attempt to use a closed client in 'rrpc'")
    end)

    it_lua54("a to-be-closed client is closed at the end of its scope", function()
      -- compiled at run time: `<close>` is Lua 5.4 syntax
      local scope = assert((loadstring or load)([[
        local new, call = ...
        local kept
        do
          local c <close> = new()
          assert(call("echo", {}, c))
          kept = c
        end
        return kept
      ]]))
      assert.matches("closed", tostring(scope(new, call)))
    end)

    it("clients dropped without close are collected cleanly", function()
      for _ = 1, 50 do
        local c = new()
        assert(call("echo", {}, c))
      end
      collectgarbage()
      collectgarbage()
      assert(call("echo"))
    end)
  end)
end)
