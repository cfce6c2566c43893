-- Real devices on the emulator's MQTT broker (emulator/run --mqtt-port): mosquitto with
-- the emulator's plugin, devices of the official Node.js device SDK
-- (spec/support/node_device.js) and mosquitto_pub / mosquitto_sub as device clients,
-- client:rrpc and Pub through the emulator's two nginx workers.
local rrpc = require "rrpc"
local cjson = require "cjson"
local emulator = require "emulator"
local mqtt_devices = require "mqtt_devices"
local process = require "process"
local system = require "system"

local PK, FLEET = "a1Mqtt", "a1Fleet"
local FLEET_SIZE = 100
local CUSTOM_TOPIC = "/" .. PK .. "/beta/user/rpc"

local function secret_of(name)
  return "Secret-" .. name .. "-0123456789"
end

local function mqtt_device(name)
  return { behaviour = "mqtt", secret = secret_of(name) }
end

local function fleet_name(i)
  return ("dev-%03d"):format(i)
end

-- Devices of product a1Mqtt: alpha and beta answer (echo), quiet never does, never has no
-- client; gone, dying and stopped get a process of their own in the specs that end them.
local function registry()
  local devices = { echo = { behaviour = "echo" } }
  for _, name in ipairs { "alpha", "beta", "quiet", "never", "gone", "dying", "stopped", "shell" } do
    devices[name] = mqtt_device(name)
  end
  local fleet = {}
  for i = 1, FLEET_SIZE do
    fleet[fleet_name(i)] = mqtt_device(fleet_name(i))
  end
  return {
    access_keys = { testid = { secret = "testsecret" } },
    products = {
      [PK] = { devices = devices },
      [FLEET] = { devices = fleet },
      -- the published vector of ../shared/reference/ALIBABA-API.md, section 5
      pk = { devices = { device = { behaviour = "mqtt", secret = "secret" } } },
    },
  }
end

local function node_spec(name, answer, extra)
  local spec = { productKey = PK, deviceName = name, deviceSecret = secret_of(name), answer = answer }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return spec
end

local function device(name, extra)
  local d = { product_key = PK, device_name = name, secret = secret_of(name) }
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

local function hex(bytes)
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- Deterministic bytes of every value (a linear congruential generator).
local function binary(length, seed)
  local bytes, x = {}, seed or 12345
  for i = 1, length do
    x = (x * 1103515245 + 12345) % 2147483648
    bytes[i] = string.char(math.floor(x / 65536) % 256)
  end
  return table.concat(bytes)
end

local ALL_BYTES = (function()
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  return table.concat(t)
end)()

describe("#slow #mqtt real devices on the emulator's MQTT broker", function()
  local emu, client, devices, fleet, registry_path

  local function call(name, payload, extra)
    local args = { product_key = PK, device_name = name, payload = payload or "ping", timeout = 2000 }
    for k, v in pairs(extra or {}) do args[k] = v end
    return client:rrpc(args)
  end

  setup(function()
    mqtt_devices.install()
    registry_path = os.tmpname()
    process.write_file(registry_path, cjson.encode(registry()))
    emu = emulator.start { devices = registry_path, mqtt = true, workers = 2 }
    client = rrpc.new { endpoint = emu.url, access_key_id = "testid", access_key_secret = "testsecret" }
    devices = mqtt_devices.node(emu, {
      node_spec("alpha", "echo"),
      node_spec("beta", "echo", { topic = CUSTOM_TOPIC, subscribe = { "/" .. PK .. "/beta/user/get" } }),
      node_spec("quiet", "none"),
    })
    local list = {}
    for i = 1, FLEET_SIZE do
      list[i] = { productKey = FLEET, deviceName = fleet_name(i), deviceSecret = secret_of(fleet_name(i)),
                  answer = "echo" }
    end
    fleet = mqtt_devices.node(emu, list)
    devices:wait("^ready ", 3)
    fleet:wait("^ready ", FLEET_SIZE, 20)
  end)

  teardown(function()
    if devices then devices:stop() end
    if fleet then fleet:stop() end
    if client then client:close() end
    if emu then emu:stop() end
    os.remove(registry_path)
  end)

  describe("authentication", function()
    local function publish(d)
      d.args = d.args or ("-t /" .. d.product_key .. "/" .. d.device_name .. "/user/update -m hi")
      return mqtt_devices.mosquitto("mosquitto_pub", emu, d)
    end

    local function refused(d)
      local rc, out = publish(d)
      assert.equal(5, rc, out)
      assert.matches("not authori[sz]ed", out)
    end

    it("accepts the published vector", function()
      local rc, out = publish { product_key = "pk", device_name = "device", secret = "x",
                                client_id = "12345|securemode=3,signmethod=hmacsha1,timestamp=789|",
                                password = "FAFD82A3D602B37FB0FA8B7892F24A477F851A14" }
      assert.equal(0, rc, out)
      rc, out = publish { product_key = "pk", device_name = "device", secret = "x",
                          client_id = "12345|securemode=3,signmethod=hmacsha256,timestamp=789|",
                          password = "6074A46A91B1EBB2CC4EA42790AD0E80202C9843859FC292E57C4EB19FAD9E57" }
      assert.equal(0, rc, out)
    end)

    it("accepts every sign method, with or without timestamp and client id, and extra parameters", function()
      for _, extra in ipairs {
        { method = "sha1", timestamp = "1700000000000" }, { method = "sha256" }, { method = "md5", timestamp = "1" },
        { id = "" }, { id = "a1Mqtt&alpha" },
      } do
        local rc, out = publish(device("alpha", extra))
        assert.equal(0, rc, out)
      end
      local client_id, username, password = mqtt_devices.credentials(device("alpha", { id = "sdk" }))
      local rc, out = publish(device("alpha", {
        client_id = client_id:gsub("|$", ",lan=JS|Broswer ,_v=1.2.8,ext=1|"), username = username,
        password = password:upper() }))
      assert.equal(0, rc, out)
    end)

    it("refuses a wrong secret, an unknown device or product and a malformed client id", function()
      refused(device("alpha", { secret = "wrong-secret" }))
      refused(device("nobody"))
      refused { product_key = "a1Nowhere", device_name = "alpha", secret = secret_of("alpha") }
      refused(device("echo", { secret = "anything" })) -- a simulated device cannot connect
      local _, username, password = mqtt_devices.credentials(device("alpha", { id = "x" }))
      for _, client_id in ipairs {
        "x", "x|", "x|signmethod=hmacsha1|", "x|securemode=2,signmethod=hmacsha1|",
        "x|securemode=3|", "x|securemode=3,signmethod=hmacsha512|", "x|securemode=3,signmethod=hmacsha1|tail",
        "x|securemode=3,securemode=3,signmethod=hmacsha1|", "x|securemode=3,signmethod=hmacsha1,timestamp=12a|",
        "x|securemode=3,signmethod=hmacsha1,=1|", "x|securemode=3,signmethod=hmacsha1,timestamp=1|",
      } do
        refused(device("alpha", { client_id = client_id, username = username, password = password }))
      end
      refused(device("alpha", { username = "alpha", password = password }))
      refused(device("alpha", { username = "alpha&" .. PK .. "&x", password = password }))
      local rc, out = process.output(("mosquitto_pub -h 127.0.0.1 -p %d -t /x -m y 2>&1; echo rc=$?")
        :format(emu.mqtt_port)):match("rc=(%d+)"), nil
      assert.equal("5", rc, out)
    end)

    it("refuses the Node SDK with a wrong secret", function()
      local d = mqtt_devices.node(emu, { node_spec("gone", "echo", { deviceSecret = "wrong" }) })
      finally(function() d:stop() end)
      d:wait("^refused gone")
      assert.equal(0, d:count("^ready"))
    end)
  end)

  describe("topics", function()
    it("keeps a device to its own topics", function()
      local sub = function(filters)
        local args = "-W 1 -v"
        for _, f in ipairs(filters) do args = args .. " -t " .. process.quote(f) end
        return select(2, mqtt_devices.mosquitto("mosquitto_sub", emu, device("alpha", { id = "acl", args = args })))
      end
      for _, filter in ipairs { "/sys/" .. PK .. "/beta/rrpc/request/+", "#", "/sys/+/+/rrpc/request/+", "$rrpc/#",
                                "/ext/rrpc/+/" .. PK .. "/beta/user/rpc", "/" .. PK .. "/+/user/get" } do
        assert.matches("All subscription requests were denied", sub { filter }, 1, true)
      end
      assert.matches("Timed out", sub { "/sys/" .. PK .. "/alpha/#", "/" .. PK .. "/alpha/user/+",
                                        "/ext/rrpc/+/" .. PK .. "/alpha/user/x" }, 1, true)
      -- what alpha publishes on another device's topics, or as a request to itself, goes nowhere
      for _, topic in ipairs { "/sys/" .. PK .. "/quiet/rrpc/request/1", "/" .. PK .. "/beta/user/get",
                               "/sys/" .. PK .. "/alpha/rrpc/request/2", "$rrpc/reply/sys/" .. PK .. "/quiet/x" } do
        local rc = mqtt_devices.mosquitto("mosquitto_pub", emu, device("alpha", { id = "acl", args = "-t "
          .. process.quote(topic) .. " -m intruder" }))
        assert.equal(0, rc)
      end
      assert(client:request("Pub", { ProductKey = PK, TopicFullName = "/" .. PK .. "/beta/user/get",
                                     MessageContent = rrpc.b64encode("legit") }))
      devices:wait("^message beta /" .. PK .. "/beta/user/get " .. hex("legit"))
      assert.equal(0, devices:count(hex("intruder")))
    end)

    it("never hands a device its own answer on a custom topic back as a request", function()
      local before = devices:count("^request beta /ext/rrpc/")
      local res = assert(call("beta", "custom", { topic = CUSTOM_TOPIC }))
      assert.equal("custom", res.payload)
      devices:wait("^request beta /ext/rrpc/" .. res.message_id .. CUSTOM_TOPIC .. " " .. hex("custom"))
      system.sleep(0.3)
      assert.equal(before + 1, devices:count("^request beta /ext/rrpc/"))
      -- the default topic of beta answers too, and alpha has no custom topic
      assert.equal("plain", assert(call("beta", "plain")).payload)
      local _, err = call("alpha", "x", { topic = "/" .. PK .. "/alpha/user/rpc", timeout = 1000 })
      assert.equal("TIMEOUT", err.code)
    end)
  end)

  describe("client:rrpc", function()
    it("gets the device's answer byte for byte: every byte value, 256 KB", function()
      for _, payload in ipairs { ALL_BYTES, binary(256 * 1024), "\0" } do
        local res = assert(call("alpha", payload, { timeout = 5000 }))
        assert.equal(#payload, #res.payload)
        assert.is_true(res.payload == payload)
        assert.equal("SUCCESS", res.rrpc_code)
        assert.matches("^%d+$", res.message_id)
      end
      devices:wait("^request alpha /sys/" .. PK .. "/alpha/rrpc/request/%d+ " .. hex(ALL_BYTES) .. "$")
    end)

    it("answers 100 concurrent calls to one device and to 100 devices, each its own", function()
      local requests = {}
      for i = 1, 100 do
        requests[#requests + 1] = { product_key = PK, device_name = "alpha", payload = "one-" .. i .. binary(i, i) }
      end
      for i = 1, FLEET_SIZE do
        requests[#requests + 1] = { product_key = FLEET, device_name = fleet_name(i), payload = "many-" .. i }
      end
      local results, summary = rrpc.batch(client, requests, { concurrency = 200, qps = 100000, retry = false,
                                                              defaults = { timeout = 5000 } })
      assert.equal(#requests, summary.ok)
      for i, r in ipairs(results) do
        assert.is_true(r.res.payload == requests[i].payload, "call " .. i)
      end
      for i = 1, FLEET_SIZE do
        fleet:wait("^request " .. fleet_name(i):gsub("%-", "%%-") .. " ")
      end
    end)

    it("answers TIMEOUT after Timeout when the device does not answer", function()
      for _, timeout in ipairs { 1000, 1500 } do
        local started = system.monotime()
        local res, err = call("quiet", "anyone?", { timeout = timeout })
        local elapsed = system.monotime() - started
        assert.is_nil(res)
        assert.equal("TIMEOUT", err.code)
        assert.matches("^%d+$", err.message_id)
        assert.is_true(elapsed >= timeout / 1000 - 0.01 and elapsed < timeout / 1000 + 0.3, elapsed)
      end
    end)

    it("answers OFFLINE at once for a device with no connection, and after it disconnects", function()
      local started = system.monotime()
      local _, err = call("never")
      assert.equal("OFFLINE", err.code)
      assert.is_nil(err.message_id)
      assert.is_true(system.monotime() - started < 0.5)
      local d = mqtt_devices.node(emu, { node_spec("gone", "echo") })
      finally(function() d:stop() end)
      d:wait("^ready gone")
      assert.equal("back", assert(call("gone", "back")).payload)
      d:stop()
      -- the broker notices the closed connection at once; a call already under way would
      -- be HALFCONN, then OFFLINE
      local code
      local deadline = system.monotime() + 2
      repeat
        local _, e = call("gone", "anyone?")
        code = e and e.code
      until code == "OFFLINE" or system.monotime() > deadline
      assert.equal("OFFLINE", code)
    end)

    it("answers HALFCONN when the device's connection ends before it answers", function()
      local d = mqtt_devices.node(emu, { node_spec("dying", "exit") })
      finally(function() d:stop() end)
      d:wait("^ready dying")
      local started = system.monotime()
      local _, err = call("dying", "last words", { timeout = 5000 })
      assert.equal("HALFCONN", err.code)
      assert.matches("^%d+$", err.message_id)
      assert.is_true(system.monotime() - started < 2)
      assert.equal("OFFLINE", select(2, call("dying")).code)
    end)

    it("answers a device of mosquitto_sub and mosquitto_pub (examples/device.sh)", function()
      local d = device("shell", { id = "shell" })
      local client_id, username, password = mqtt_devices.credentials(d)
      local pid = tonumber(process.output(("%s/examples/device.sh %s %s %s %d >/dev/null 2>&1 & echo $!"):format(
        ".", PK, "shell", process.quote(secret_of("shell")), emu.mqtt_port)):match("%d+"))
      finally(function() process.terminate(pid) end)
      local res
      local deadline = system.monotime() + 5
      repeat
        res = call("shell", "from a shell", { timeout = 1000 })
      until res or system.monotime() > deadline
      assert.equal("from a shell", res and res.payload)
      assert(client_id and username and password)
    end)
  end)

  describe("Pub", function()
    it("delivers MessageContent through the broker to the device's subscription", function()
      local payload = ALL_BYTES
      for _, qos in ipairs { 0, 1 } do
        local doc = assert(client:request("Pub", { ProductKey = PK, TopicFullName = "/" .. PK .. "/beta/user/get",
                                                   MessageContent = rrpc.b64encode(payload .. qos), Qos = qos }))
        assert.is_true(doc.Success)
        devices:wait("^message beta /" .. PK .. "/beta/user/get " .. hex(payload .. qos) .. "$")
      end
    end)

    it("delivers to mosquitto_sub", function()
      local out = os.tmpname()
      local d = device("alpha", { id = "pubsub", args = "-t /" .. PK .. "/alpha/user/get -C 1 -W 5 -F %x" })
      local client_id, username, password = mqtt_devices.credentials(d)
      local pid = tonumber(process.output(("mosquitto_sub -h 127.0.0.1 -p %d -i %s -u %s -P %s %s >%s 2>&1 & echo $!")
        :format(emu.mqtt_port, process.quote(client_id), process.quote(username), process.quote(password), d.args,
        process.quote(out))):match("%d+"))
      finally(function()
        process.terminate(pid)
        os.remove(out)
      end)
      -- a QoS 0 message before the subscription is lost: publish until one arrives
      local deadline = system.monotime() + 5
      while process.alive(pid) and system.monotime() < deadline do
        assert(client:request("Pub", { ProductKey = PK, TopicFullName = "/" .. PK .. "/alpha/user/get",
                                       MessageContent = rrpc.b64encode(ALL_BYTES) }))
        system.sleep(0.05)
      end
      assert.equal(hex(ALL_BYTES), process.read_file(out):match("%x+"))
    end)
  end)

  describe("the emulator's workers", function()
    it("each get the answers to their own calls", function()
      local requests = {}
      for i = 1, 300 do
        local name = i % 3 == 0 and "alpha" or fleet_name(i % FLEET_SIZE + 1)
        requests[i] = { product_key = i % 3 == 0 and PK or FLEET, device_name = name, payload = "w" .. i }
      end
      -- which worker accepts a connection is the kernel's choice: on a busy machine one may
      -- take them all, so batches go on (at most 5) until both workers have served calls
      local pids, count = {}, 0
      for _ = 1, 5 do
        -- a client of its own each time: new connections
        local round = rrpc.new { endpoint = emu.url, access_key_id = "testid", access_key_secret = "testsecret" }
        local results, summary = rrpc.batch(round, requests, { concurrency = 100, qps = 100000, retry = false })
        round:close()
        assert.equal(#requests, summary.ok)
        for i, r in ipairs(results) do
          assert.equal(requests[i].payload, r.res.payload)
        end
        system.sleep(0.3) -- the access log is flushed every 100 ms
        for _, line in ipairs(emu:log_lines()) do
          local pid = line:match(" pid=(%d+) .* code=SUCCESS")
          if pid and line:find("pk=" .. FLEET, 1, true) then pids[pid] = true end
        end
        count = 0
        for _ in pairs(pids) do count = count + 1 end
        if count == 2 then break end
      end
      assert.equal(2, count)
    end)
  end)

  describe("bad packets", function()
    -- Sends `bytes` on a raw TCP connection to the broker and holds it open briefly.
    local function send_raw(bytes)
      local file = os.tmpname()
      process.write_file(file, bytes)
      os.execute(("timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d && cat %s >&3 && sleep 0.2' 2>/dev/null")
        :format(emu.mqtt_port, process.quote(file)))
      os.remove(file)
    end

    it("crash neither the broker nor the emulator", function()
      package.path = "emulator/lua/?.lua;" .. package.path
      local codec = require "rrpc_emulator.mqtt"
      local client_id, username, password = mqtt_devices.credentials(device("alpha", { id = "raw" }))
      local connect = codec.connect { client_id = client_id, username = username, password = password }
      for _, bytes in ipairs {
        "SSH-2.0-OpenSSH_9.2p1\r\n\0\255\255\255\255\127", "\16\255\255\255\255\15", binary(4096, 7),
        "\16\12\0\4MQTT\4\194\0\60\0\0", -- a CONNECT whose strings run past its end
        connect .. "\48\255\255\255\127", -- a device's PUBLISH announcing 256 MB
        connect .. "\48\5\0\200abc", -- a PUBLISH whose topic is longer than the packet
        connect .. codec.publish("/sys/" .. PK .. "/alpha/rrpc/response/1", binary(100, 3)) .. "\240\0",
        connect .. codec.subscribe(1, "/sys/" .. PK .. "/alpha/#", 3), -- QoS 3
      } do
        send_raw(bytes)
      end
      assert.is_true(process.alive(emu.broker_pid))
      assert.equal("still here", assert(call("alpha", "still here")).payload)
      assert.is_nil(process.read_file(emu.stderr):find("runtime error", 1, true))
    end)
  end)
end)

describe("#slow #mqtt the emulator's MQTT broker", function()
  it("stops with the emulator, killed or not, and leaves nothing listening", function()
    for _, how in ipairs { "stop", "kill" } do
      local e = emulator.start { mqtt = true }
      assert.is_true(process.alive(e.broker_pid))
      if how == "kill" then e:kill() end
      e:stop()
      assert.is_false(process.alive(e.broker_pid))
      local out = process.output(("mosquitto_pub -h 127.0.0.1 -p %d -t /x -m y 2>&1"):format(e.mqtt_port))
      assert.matches("refused", out)
    end
  end)

  it("answers HALFCONN for a stopped device once the broker gives up on it, then OFFLINE", function()
    local path = os.tmpname()
    process.write_file(path, cjson.encode(registry()))
    local e = emulator.start { devices = path, mqtt = true }
    local c = rrpc.new { endpoint = e.url, access_key_id = "testid", access_key_secret = "testsecret" }
    -- keepalive 1 s: mosquitto gives up after 1.5 s of silence, checking every 5 s or so
    local d = mqtt_devices.node(e, { node_spec("stopped", "echo") }, { keepalive = 1 })
    finally(function()
      d:stop()
      c:close()
      e:stop()
      os.remove(path)
    end)
    d:wait("^ready stopped")
    d:signal("STOP")
    local codes = {}
    local deadline = system.monotime() + 25
    repeat
      local _, err = c:rrpc { product_key = PK, device_name = "stopped", payload = "are you there?", timeout = 8000 }
      codes[#codes + 1] = err.code
    until err.code ~= "TIMEOUT" or system.monotime() > deadline
    assert.equal("HALFCONN", codes[#codes], table.concat(codes, " "))
    local _, err = c:rrpc { product_key = PK, device_name = "stopped", payload = "and now?", timeout = 1000 }
    assert.equal("OFFLINE", err.code)
  end)
end)
