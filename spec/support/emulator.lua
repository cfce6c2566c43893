-- Starts and stops the RRpc emulator (emulator/run) for busted specs.
--
--   local emulator = require "emulator"
--   local e = emulator.start{ devices = "emulator/devices.json", workers = 1 }
--   -- e.url ("http://127.0.0.1:<port>"), e.port, e.pid, e.log (access log), e.stderr
--   e:log_lines()   -- the access-log lines so far
--   e:stop()        -- SIGTERM, wait for the exit, remove the temp files; idempotent
--
--   -- With an HTTPS listener too (certificates: spec/support/tls.lua):
--   local e = emulator.start{ tls = { cert = t.cert, key = t.key } }
--   -- e.https_url ("https://127.0.0.1:<tls port>"), e.tls_port; e.url stays plain HTTP
--
--   -- With the listener that `vanish` devices take away (emulator/README.md):
--   local e = emulator.start{ vanish = true }
--   -- e.vanish_url ("http://127.0.0.1:<vanish port>"), e.vanish_port
--   e:arrivals()            -- { [RequestBase64Byte] = times it arrived } (/__emulator/arrivals)
--   e:arrivals_of(payload)  -- how many times an RRpc request with that payload arrived
--   e:wait_listening(port)  -- true once the port accepts again, no vanish under way (5 s at most)
--   e:kill()                -- SIGKILL to the master and its workers, by PID; then e:stop()
--   emulator.start{ port = e.port }  -- again on the same port
--
--   -- With the MQTT broker (emulator/run --mqtt-port), for devices with behaviour "mqtt":
--   local e = emulator.start{ mqtt = true }
--   -- e.mqtt_port, e.mqtt_url ("mqtt://127.0.0.1:<port>"), e.broker_pid; ready once every
--   -- worker is connected to the broker; e:stop() also waits for the broker to be gone
--
-- nginx writes an access-log line just after it has sent the response, so a
-- spec that reads the log right after a request may have to wait briefly.
local cjson = require "cjson"
local process = require "process"
local suite_log = require "suite_log"
local system = require "system"

local emulator = {}

local quote, read_file = process.quote, process.read_file

-- The repository root, found from this file's path (spec/support/emulator.lua).
local ROOT = (debug.getinfo(1, "S").source:match("^@(.-)/?spec/support/emulator%.lua$") or "")
if ROOT == "" then
  ROOT = "."
end


-- The HTTPS listener takes the neighbouring port, the vanish listener the next one, the
-- MQTT broker the one after (process.start_server leaves room for them): all are retried
-- if taken.
local function tls_port_of(port)
  return port + 1
end

local function vanish_port_of(port)
  return port + 2
end

local function mqtt_port_of(port)
  return port + 3
end

-- The health check's headers (lower-cased), or nil without an answer. `url` is the base
-- URL; HTTPS is checked without verifying the certificate (-k): specs test that.
local function health_headers(url)
  local headers = process.output("curl -s -k -m 1 -o /dev/null -D - " .. url .. "/__emulator/health"):lower()
  return headers:match("^http/%S+ 200") and headers or nil
end

-- The health check answers with the nginx master PID, so an emulator that was
-- already listening on the port is not mistaken for ours.
local function answers_health(url, pid)
  local headers = health_headers(url)
  return headers ~= nil and headers:match("\nx%-emulator%-pid: (%d+)") == tostring(pid)
end

local Emulator = {}
Emulator.__index = Emulator

-- options: devices (default emulator/devices.json in the repository), workers (default 1),
-- tls = { cert = PEM file, key = PEM file } (default none: no HTTPS listener),
-- vanish = true (a vanish listener too, default none), mqtt = true (the MQTT broker too,
-- default none), port (default: a free one), keepalive_requests (emulator/run's
-- --keepalive-requests, default its own).
function emulator.start(options)
  options = options or {}
  if options.tls and not (options.tls.cert and options.tls.key) then
    error("emulator.start: tls needs cert and key", 2)
  end
  local devices = options.devices or ROOT .. "/emulator/devices.json"
  local tls, vanish, mqtt = options.tls, options.vanish, options.mqtt
  local workers = options.workers or 1
  -- a given port replaces the random one process.start_server draws
  local function port_of(drawn)
    return options.port or drawn
  end
  return process.start_server {
    name = "emulator",
    command = function(drawn, dir)
      local port = port_of(drawn)
      local tls_options = tls and string.format(" --tls-port %d --tls-cert %s --tls-key %s",
        tls_port_of(port), quote(tls.cert), quote(tls.key)) or ""
      local vanish_options = vanish and string.format(" --vanish-port %d", vanish_port_of(port)) or ""
      local mqtt_options = mqtt and string.format(" --mqtt-port %d", mqtt_port_of(port)) or ""
      local keepalive_option = options.keepalive_requests
        and string.format(" --keepalive-requests %d", options.keepalive_requests) or ""
      return string.format("%s/emulator/run --port %d --devices %s --workers %d --log %s%s%s%s%s",
        quote(ROOT), port, quote(devices), workers, quote(dir .. "/access.log"), tls_options,
        vanish_options, mqtt_options, keepalive_option)
    end,
    healthy = function(drawn, pid)
      local port = port_of(drawn)
      return answers_health("http://127.0.0.1:" .. port, pid)
        and (not tls or answers_health("https://127.0.0.1:" .. tls_port_of(port), pid))
        and (not vanish or answers_health("http://127.0.0.1:" .. vanish_port_of(port), pid))
        and (not mqtt or (health_headers("http://127.0.0.1:" .. port) or ""):match("\nx%-emulator%-mqtt: (%d+)/")
                         == tostring(workers))
    end,
    ready = function(drawn, pid, dir)
      local port = port_of(drawn)
      local broker_pid = mqtt and tonumber((health_headers("http://127.0.0.1:" .. port) or "")
        :match("\nx%-emulator%-broker%-pid: (%d+)"))
      return setmetatable({
        url = "http://127.0.0.1:" .. port,
        port = port,
        https_url = tls and "https://127.0.0.1:" .. tls_port_of(port),
        tls_port = tls and tls_port_of(port),
        vanish_url = vanish and "http://127.0.0.1:" .. vanish_port_of(port),
        vanish_port = vanish and vanish_port_of(port),
        mqtt_port = mqtt and mqtt_port_of(port),
        mqtt_url = mqtt and "mqtt://127.0.0.1:" .. mqtt_port_of(port),
        broker_pid = broker_pid,
        pid = pid,
        log = dir .. "/access.log",
        stderr = dir .. "/stderr.log",
        dir = dir,
      }, Emulator)
    end,
  }
end

function Emulator:log_lines()
  local lines = {}
  for line in read_file(self.log):gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  return lines
end

function Emulator:arrivals()
  local text = process.output("curl -s -m 5 " .. self.url .. "/__emulator/arrivals")
  local ok, doc = pcall(cjson.decode, text)
  if not ok or type(doc) ~= "table" then
    error("the emulator's arrivals are not JSON: " .. text, 2)
  end
  return doc
end

-- The RRpc requests are counted by their RequestBase64Byte.
function Emulator:arrivals_of(payload)
  return self:arrivals()[require("rrpc.core").b64encode(payload)] or 0
end

function Emulator:reset_arrivals()
  os.execute("curl -s -m 5 -X POST " .. self.url .. "/__emulator/arrivals/reset")
end

-- True once the port accepts connections again and no vanish is under way (the health
-- check's x-emulator-vanish header), so that the next vanish call starts one of its own.
function Emulator:wait_listening(port, timeout_s)
  local deadline = system.monotime() + (timeout_s or 5)
  repeat
    local headers = process.output("curl -s -m 1 -o /dev/null -D - http://127.0.0.1:" .. (port or self.port)
      .. "/__emulator/health"):lower()
    local phase = headers:match("\nx%-emulator%-vanish: (%a+)")
    if headers:match("^http/%S+ 200") and (phase == nil or phase == "listening") then
      return true
    end
    system.sleep(0.02)
  until system.monotime() > deadline
  return false
end

-- The nginx processes: the master and the workers it forked (its other child, the
-- watcher that removes the prefix, is a bash).
function Emulator:pids()
  local pids = { self.pid }
  for pid, command in process.output("ps -o pid=,comm= --ppid " .. self.pid):gmatch("(%d+)%s+(%S+)") do
    if command == "nginx" then
      pids[#pids + 1] = tonumber(pid)
    end
  end
  return pids
end

-- SIGKILL, the master first (so that it cannot fork new workers), each by its PID; returns
-- once all are gone. stop() still cleans up.
function Emulator:kill()
  local pids = self:pids()
  os.execute("kill -KILL " .. table.concat(pids, " ") .. " 2>/dev/null")
  local deadline = system.monotime() + 5
  for _, pid in ipairs(pids) do
    while process.alive(pid) and system.monotime() < deadline do
      system.sleep(0.01)
    end
  end
  self.killed = true
end

function Emulator:stop()
  if self.stopped then
    return
  end
  self.stopped = true
  if not self.killed then
    process.terminate(self.pid)
  end
  -- the kernel has sent the broker SIGTERM as nginx's master ended (emulator/run)
  local deadline = system.monotime() + 5
  while self.broker_pid and process.alive(self.broker_pid) and system.monotime() < deadline do
    system.sleep(0.02)
  end
  suite_log.keep("emulator", { self.log, self.stderr })
  os.execute("rm -rf " .. quote(self.dir))
end

return emulator
