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
-- nginx writes an access-log line just after it has sent the response, so a
-- spec that reads the log right after a request may have to wait briefly.
local process = require "process"
local suite_log = require "suite_log"

local emulator = {}

local quote, read_file = process.quote, process.read_file

-- The repository root, found from this file's path (spec/support/emulator.lua).
local ROOT = (debug.getinfo(1, "S").source:match("^@(.-)/?spec/support/emulator%.lua$") or "")
if ROOT == "" then
  ROOT = "."
end

-- The health check answers with the nginx master PID, so an emulator that was
-- already listening on the port is not mistaken for ours. `url` is the base URL;
-- HTTPS is checked without verifying the certificate (-k): specs test that.
local function answers_health(url, pid)
  local headers = process.output("curl -s -k -m 1 -o /dev/null -D - " .. url .. "/__emulator/health")
  return headers:match("^HTTP/%S+ 200") ~= nil and headers:lower():match("\nx%-emulator%-pid: (%d+)") == tostring(pid)
end

-- The HTTPS listener takes the neighbouring port: both are retried if taken.
local function tls_port_of(port)
  return port < 45000 and port + 1 or port - 1
end

local Emulator = {}
Emulator.__index = Emulator

-- options: devices (default emulator/devices.json in the repository), workers (default 1),
-- tls = { cert = PEM file, key = PEM file } (default none: no HTTPS listener).
function emulator.start(options)
  options = options or {}
  if options.tls and not (options.tls.cert and options.tls.key) then
    error("emulator.start: tls needs cert and key", 2)
  end
  local devices = options.devices or ROOT .. "/emulator/devices.json"
  local tls = options.tls
  return process.start_server {
    name = "emulator",
    command = function(port, dir)
      local tls_options = tls and string.format(" --tls-port %d --tls-cert %s --tls-key %s",
        tls_port_of(port), quote(tls.cert), quote(tls.key)) or ""
      return string.format("%s/emulator/run --port %d --devices %s --workers %d --log %s%s",
        quote(ROOT), port, quote(devices), options.workers or 1, quote(dir .. "/access.log"), tls_options)
    end,
    healthy = function(port, pid)
      return answers_health("http://127.0.0.1:" .. port, pid)
        and (not tls or answers_health("https://127.0.0.1:" .. tls_port_of(port), pid))
    end,
    ready = function(port, pid, dir)
      return setmetatable({
        url = "http://127.0.0.1:" .. port,
        port = port,
        https_url = tls and "https://127.0.0.1:" .. tls_port_of(port),
        tls_port = tls and tls_port_of(port),
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

function Emulator:stop()
  if self.stopped then
    return
  end
  self.stopped = true
  process.terminate(self.pid)
  suite_log.keep("emulator", { self.log, self.stderr })
  os.execute("rm -rf " .. quote(self.dir))
end

return emulator
