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
local system = require "system"
local suite_log = require "suite_log"

local emulator = {}

local START_TIMEOUT_S = 5
local STOP_TIMEOUT_S = 5
local PORT_ATTEMPTS = 5

-- The repository root, found from this file's path (spec/support/emulator.lua).
local ROOT = (debug.getinfo(1, "S").source:match("^@(.-)/?spec/support/emulator%.lua$") or "")
if ROOT == "" then
  ROOT = "."
end

local function quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

local function command_output(command)
  local pipe = assert(io.popen(command))
  local output = pipe:read("*a")
  pipe:close()
  return output
end

local function read_file(path)
  local file = io.open(path, "rb")
  if not file then
    return ""
  end
  local text = file:read("*a")
  file:close()
  return text
end

-- A zombie (exited, not yet reaped by its parent) counts as gone.
local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  local state = stat:match("^%d+ %(.*%) (%a)")
  return state ~= nil and state ~= "Z"
end

-- The health check answers with the nginx master PID, so an emulator that was
-- already listening on the port is not mistaken for ours. `url` is the base URL;
-- HTTPS is checked without verifying the certificate (-k): specs test that.
local function answers_health(url, pid)
  local headers = command_output("curl -s -k -m 1 -o /dev/null -D - " .. url .. "/__emulator/health")
  return headers:match("^HTTP/%S+ 200") ~= nil and headers:lower():match("\nx%-emulator%-pid: (%d+)") == tostring(pid)
end

-- SIGTERM (nginx's fast shutdown, which also stops its workers), then SIGKILL
-- if the master is still there after STOP_TIMEOUT_S.
local function terminate(pid)
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  local deadline = system.monotime() + STOP_TIMEOUT_S
  while alive(pid) and system.monotime() < deadline do
    system.sleep(0.05)
  end
  if alive(pid) then
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  end
end

local Emulator = {}
Emulator.__index = Emulator

-- Starts emulator/run on `port` (and `tls_port` when options.tls is set); returns
-- the emulator, or nil, the error text and whether a port was taken (worth another try).
local function launch(port, tls_port, options, dir)
  local access_log = dir .. "/access.log"
  local stderr = dir .. "/stderr.log"
  local tls_options = ""
  if options.tls then
    tls_options = string.format(" --tls-port %d --tls-cert %s --tls-key %s",
      tls_port, quote(options.tls.cert), quote(options.tls.key))
  end
  local command = string.format("%s/emulator/run --port %d --devices %s --workers %d --log %s%s"
    .. " </dev/null >%s 2>%s & echo $!",
    quote(ROOT), port, quote(options.devices), options.workers, quote(access_log), tls_options,
    quote(dir .. "/stdout.log"), quote(stderr))
  local pid = tonumber(command_output(command):match("%d+"))
  local url = "http://127.0.0.1:" .. port
  local https_url = options.tls and "https://127.0.0.1:" .. tls_port
  local deadline = system.monotime() + START_TIMEOUT_S
  while system.monotime() < deadline do
    if not alive(pid) then
      local errors = read_file(stderr)
      return nil, errors, errors:find("Address already in use", 1, true) ~= nil
    end
    if answers_health(url, pid) and (not https_url or answers_health(https_url, pid)) then
      return setmetatable({
        url = url,
        port = port,
        https_url = https_url,
        tls_port = https_url and tls_port,
        pid = pid,
        log = access_log,
        stderr = stderr,
        dir = dir,
      }, Emulator)
    end
    system.sleep(0.05)
  end
  terminate(pid)
  return nil, "no answer within " .. START_TIMEOUT_S .. " s\n" .. read_file(stderr), false
end

-- options: devices (default emulator/devices.json in the repository), workers (default 1),
-- tls = { cert = PEM file, key = PEM file } (default none: no HTTPS listener).
function emulator.start(options)
  options = options or {}
  if options.tls and not (options.tls.cert and options.tls.key) then
    error("emulator.start: tls needs cert and key", 2)
  end
  local settings = {
    devices = options.devices or ROOT .. "/emulator/devices.json",
    workers = options.workers or 1,
    tls = options.tls,
  }
  local failure
  for _ = 1, PORT_ATTEMPTS do
    local dir = command_output("mktemp -d /tmp/rrpc-emulator-spec.XXXXXX"):match("[^\n]+")
    local port = math.random(20000, 45000)
    local tls_port = port < 45000 and port + 1 or port - 1 -- a neighbour: both are retried if taken
    local instance, err, port_taken = launch(port, tls_port, settings, dir)
    if instance then
      return instance
    end
    os.execute("rm -rf " .. quote(dir))
    failure = err
    if not port_taken then
      break
    end
  end
  error("the RRpc emulator did not start: " .. failure, 2)
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
  terminate(self.pid)
  suite_log.keep("emulator", { self.log, self.stderr })
  os.execute("rm -rf " .. quote(self.dir))
end

return emulator
