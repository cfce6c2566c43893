-- How fast RRpc goes through the emulator's MQTT broker to real devices (the official
-- Node.js SDK, one process for all of them):
--   1. calls per second to DEVICES devices with IN_FLIGHT calls in flight (rrpc.batch);
--   2. the latency the bridge adds: one call at a time to an `mqtt` device and to the
--      simulated `echo` device of the same emulator, median and p99 of each.
-- From the repository root, after `make build`:
--   ulimit -n 8192; LUA_PATH="./lua/?.lua;./spec/support/?.lua;;" LUA_CPATH="./build/lua5.4/?.so;;" \
--     lua5.4 emulator/bench-mqtt.lua [CALLS (20000)] [IN_FLIGHT (1000)] [WORKERS (1)]
local rrpc = require "rrpc"
local cjson = require "cjson"
local emulator = require "emulator"
local mqtt_devices = require "mqtt_devices"
local process = require "process"
local system = require "system"

local CALLS = tonumber(arg[1]) or 20000
local IN_FLIGHT = tonumber(arg[2]) or 1000
local WORKERS = tonumber(arg[3]) or 1
local DEVICES = 100
local SEQUENTIAL = 2000
local PK = "a1BenchMqtt"

local function name(i)
  return ("dev-%03d"):format(i)
end

local registry = { access_keys = { testid = { secret = "testsecret" } }, products = { [PK] = { devices = {
  echo = { behaviour = "echo" } } } } }
local list = {}
for i = 1, DEVICES do
  registry.products[PK].devices[name(i)] = { behaviour = "mqtt", secret = "secret-" .. name(i) }
  list[i] = { productKey = PK, deviceName = name(i), deviceSecret = "secret-" .. name(i), answer = "echo" }
end
local path = os.tmpname()
process.write_file(path, cjson.encode(registry))

local emu = emulator.start { devices = path, mqtt = true, workers = WORKERS }
local fleet = mqtt_devices.node(emu, list)
local ok, err = pcall(function()
  fleet:wait("^ready ", DEVICES, 30)
  local client = rrpc.new { endpoint = emu.url, access_key_id = "testid", access_key_secret = "testsecret" }

  local requests = {}
  for i = 1, CALLS do
    requests[i] = { product_key = PK, device_name = name((i - 1) % DEVICES + 1), payload = "call " .. i }
  end
  rrpc.batch(client, { table.unpack(requests, 1, 2000) }, { concurrency = IN_FLIGHT, qps = 1000000, retry = false })
  local started = system.monotime()
  local results, summary = rrpc.batch(client, requests, { concurrency = IN_FLIGHT, qps = 1000000, retry = false,
                                                          defaults = { timeout = 8000 } })
  local seconds = system.monotime() - started
  local wrong = 0
  for i, r in ipairs(results) do
    if not (r.res and r.res.payload == requests[i].payload) then wrong = wrong + 1 end
  end
  print(("throughput: %d calls to %d devices, %d in flight, %d worker(s): %.0f calls/s (%.1f s), %d ok, %d wrong")
    :format(CALLS, DEVICES, IN_FLIGHT, WORKERS, CALLS / seconds, seconds, summary.ok, wrong))

  local function latencies(device)
    local times = {}
    for i = 1, SEQUENTIAL do
      local t0 = system.monotime()
      assert(client:rrpc { product_key = PK, device_name = device, payload = "latency " .. i, timeout = 5000 })
      times[i] = (system.monotime() - t0) * 1000
    end
    table.sort(times)
    return times[math.floor(#times * 0.5)], times[math.floor(#times * 0.99)]
  end
  latencies("echo") -- warm up
  local echo_median, echo_p99 = latencies("echo")
  local mqtt_median, mqtt_p99 = latencies(name(1))
  print(("latency, one call at a time: echo median %.2f ms, p99 %.2f ms; mqtt device median %.2f ms, p99 %.2f ms;"
    .. " the bridge adds %.2f ms (median), %.2f ms (p99)"):format(echo_median, echo_p99, mqtt_median, mqtt_p99,
    mqtt_median - echo_median, mqtt_p99 - echo_p99))
  client:close()
end)
fleet:stop()
emu:stop()
os.remove(path)
assert(ok, err)
