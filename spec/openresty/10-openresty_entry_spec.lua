-- How the example gateway is entered: query parameters that must be numbers (400, named),
-- a 429 always with Retry-After, credentials from the official chain like every other
-- entry point (never a demo key of its own; none at all is a 503 and nothing sent), and
-- `make gateway` (scripts/gateway.sh), which refuses ports in use and takes no other
-- server for its own.
local http = require "http"
local cjson = require "cjson"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local process = require "process"
local system = require "system"

local PK = "a1RRpcDemo"

describe("the example gateway's entry #openresty #slow", function()
  local emu, session

  local function post(url, body)
    local status, headers, reply = session:perform("POST", url, {}, body or "", 20000)
    assert(status, headers)
    return status, headers, reply
  end

  setup(function()
    emu = emulator.start {}
    session = http.session {}
  end)

  teardown(function()
    session:close()
    emu:stop()
  end)

  it("refuses query parameters that are not whole numbers, naming them; a 429 always says Retry-After", function()
    local gw = gateway_server.start { endpoint = emu.url }
    finally(function() gw:stop() end)
    local device = gw.url .. "/devices/" .. PK .. "/echo/rrpc"
    for _, case in ipairs {
      { "?timeout=abc", "query parameter 'timeout' must be a whole number, got \"abc\"" },
      { "?timeout=1e3", "query parameter 'timeout' must be a whole number, got \"1e3\"" },
      { "?timeout", "query parameter 'timeout' must be a whole number, got it more than once or without a value" },
      { "?timeout=50", "option 'timeout' must be in 1000..8000, got 50" },
    } do
      local status, _, body = post(device .. case[1], "x")
      assert.equal(400, status, case[1])
      assert.same({ "InvalidArgument", case[2] }, { cjson.decode(body).error.code, cjson.decode(body).error.message })
    end
    local status, _, body = post(gw.url .. "/products/" .. PK .. "/batch?concurrency=lots",
      cjson.encode { devices = { "echo" }, payload = "x" })
    assert.equal(400, status)
    assert.equal("query parameter 'concurrency' must be a whole number, got \"lots\"", cjson.decode(body).error.message)
    status = post(device .. "?timeout=2000", "x")
    assert.equal(200, status)
    -- iot.messagebroker.RateLimit comes without x-acs-retry-after; Throttling.User with it
    local headers
    status, headers = post(gw.url .. "/devices/" .. PK .. "/ratelimit/rrpc", "x")
    assert.same({ 429, "1" }, { status, headers["retry-after"] })
    status, headers = post(gw.url .. "/devices/" .. PK .. "/throttled/rrpc", "x")
    assert.same({ 429, "1" }, { status, headers["retry-after"] })
  end)

  it("takes its credentials from the official chain; without any it answers 503 and sends nothing", function()
    local gw = gateway_server.start { endpoint = emu.url,
      env = { ALIBABA_CLOUD_ACCESS_KEY_ID = "testid", ALIBABA_CLOUD_ACCESS_KEY_SECRET = "testsecret" } }
    local status, _, reply = post(gw.url .. "/devices/" .. PK .. "/echo/rrpc", "chain")
    gw:stop()
    assert.same({ 200, "chain" }, { status, reply })
    local signed_with
    assert.is_true((function()
      local deadline = system.monotime() + 3
      repeat
        for _, line in ipairs(emu:log_lines()) do
          if line:find(" dn=echo ", 1, true) and line:find(" key=testid ", 1, true) then signed_with = "testid" end
        end
        if signed_with then return true end
        system.sleep(0.05)
      until system.monotime() > deadline
      return false
    end)())

    local bare = gateway_server.start { endpoint = emu.url,
      env = { HOME = "/nonexistent", ALIBABA_CLOUD_ECS_METADATA_DISABLED = "true" } }
    finally(function() bare:stop() end)
    local headers, body
    status, headers, body = post(bare.url .. "/devices/" .. PK .. "/echo/rrpc", "no key at all")
    assert.equal(503, status, body)
    local err = cjson.decode(body).error
    assert.same({ "credentials", "CredentialsUnavailable", "no" }, { err.kind, err.code, err.delivered })
    assert.matches("no credentials found", err.message, 1, true)
    assert.is_nil(headers["x-rrpc-request-id"])
    status = post(bare.url .. "/products/" .. PK .. "/batch", cjson.encode { devices = { "echo" }, payload = "no key" })
    assert.equal(503, status)
    assert.equal(0, emu:arrivals_of("no key at all"))
    assert.equal(0, emu:arrivals_of("no key"))
  end)

  describe("make gateway", function()
    local function free_port()
      return process.spare_port()
    end

    -- scripts/gateway.sh in the background; its PID and the file of its output.
    local function start(emulator_port, gateway_port)
      local out = os.tmpname()
      local pid = tonumber(process.output(("EMULATOR_PORT=%d PORT=%d WORKERS=1 bash scripts/gateway.sh </dev/null"
        .. " >%s 2>&1 & echo $!"):format(emulator_port, gateway_port, process.quote(out))))
      return pid, out
    end

    local function wait_gone(pid)
      local deadline = system.monotime() + 10
      while process.alive(pid) and system.monotime() < deadline do system.sleep(0.05) end
      return not process.alive(pid)
    end

    it("refuses a port another server holds, for its emulator or its gateway, and says so", function()
      for _, which in ipairs { "emulator", "gateway" } do
        local emulator_port, gateway_port = free_port(), free_port()
        if which == "emulator" then emulator_port = emu.port else gateway_port = emu.port end
        local pid, out = start(emulator_port, gateway_port)
        assert.is_true(wait_gone(pid))
        local said = process.read_file(out)
        os.remove(out)
        assert.matches("^make gateway: port " .. emu.port .. " is in use by another program", said)
      end
    end)

    it("starts both, answers through its own emulator, and SIGTERM stops both", function()
      local emulator_port, gateway_port = free_port(), free_port()
      while gateway_port == emulator_port do gateway_port = free_port() end
      local pid, out = start(emulator_port, gateway_port)
      finally(function()
        if process.alive(pid) then process.terminate(pid) end
        os.remove(out)
      end)
      local started = (function()
        local deadline = system.monotime() + 15
        repeat
          if process.read_file(out):find("Ctrl-C stops both.", 1, true) then return true end
          system.sleep(0.1)
        until system.monotime() > deadline or not process.alive(pid)
        return false
      end)()
      assert.is_true(started, process.read_file(out))
      local status, _, reply = post("http://127.0.0.1:" .. gateway_port .. "/devices/" .. PK .. "/echo/rrpc", "mine")
      assert.same({ 200, "mine" }, { status, reply })
      os.execute("kill -TERM " .. pid)
      assert.is_true(wait_gone(pid))
      assert.equal("", process.output("curl -s -m 1 http://127.0.0.1:" .. gateway_port .. "/__gateway/health"))
      assert.equal("", process.output("curl -s -m 1 http://127.0.0.1:" .. emulator_port .. "/__emulator/health"))
    end)
  end)
end)
