-- Starts and stops the OpenResty gateway (examples/openresty/run) for busted specs.
--
--   local gateway = require "gateway_server"
--   local g = gateway.start{ endpoint = emu.url, workers = 1, qps = 1000, include = nil }
--   -- g.url, g.pid, g.log (access log), g.stderr
--   g:stop()  -- SIGTERM, wait for the exit; idempotent
local system = require "system"
local suite_log = require "suite_log"

local gateway = {}

local START_TIMEOUT_S, STOP_TIMEOUT_S, PORT_ATTEMPTS = 5, 5, 5

local ROOT = debug.getinfo(1, "S").source:match("^@(.-)/?spec/support/gateway_server%.lua$") or ""
if ROOT == "" then ROOT = "." end

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
  if not file then return "" end
  local text = file:read("*a")
  file:close()
  return text
end

local function alive(pid)
  local state = read_file("/proc/" .. pid .. "/stat"):match("^%d+ %(.*%) (%a)")
  return state ~= nil and state ~= "Z"
end

local function terminate(pid)
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  local deadline = system.monotime() + STOP_TIMEOUT_S
  while alive(pid) and system.monotime() < deadline do system.sleep(0.05) end
  if alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
end

-- Ours answers its health check with our PID as the master's.
local function answers_health(port, pid)
  local headers = command_output("curl -s -m 1 -o /dev/null -D - http://127.0.0.1:" .. port .. "/__gateway/health")
  return headers:lower():match("\nx%-gateway%-master%-pid: (%d+)") == tostring(pid)
end

local Gateway = {}
Gateway.__index = Gateway

local function launch(port, o, dir)
  local stderr = dir .. "/stderr.log"
  local command = ("%s/examples/openresty/run --port %d --endpoint %s --workers %d --qps %d --log %s%s"
    .. " </dev/null >%s 2>%s & echo $!"):format(quote(ROOT), port, quote(o.endpoint), o.workers, o.qps,
    quote(dir .. "/access.log"), o.include and (" --include " .. quote(o.include)) or "",
    quote(dir .. "/stdout.log"), quote(stderr))
  local pid = tonumber(command_output(command):match("%d+"))
  local deadline = system.monotime() + START_TIMEOUT_S
  while system.monotime() < deadline do
    if not alive(pid) then
      local errors = read_file(stderr)
      return nil, errors, errors:find("Address already in use", 1, true) ~= nil
    end
    if answers_health(port, pid) then
      return setmetatable({ url = "http://127.0.0.1:" .. port, port = port, pid = pid,
                            log = dir .. "/access.log", stderr = stderr, dir = dir }, Gateway)
    end
    system.sleep(0.05)
  end
  terminate(pid)
  return nil, "no answer within " .. START_TIMEOUT_S .. " s\n" .. read_file(stderr), false
end

function gateway.start(options)
  local o = { endpoint = options.endpoint, workers = options.workers or 1, qps = options.qps or 1000,
              include = options.include }
  local failure
  for _ = 1, PORT_ATTEMPTS do
    local dir = command_output("mktemp -d /tmp/rrpc-gateway-spec.XXXXXX"):match("[^\n]+")
    local instance, err, port_taken = launch(math.random(20000, 45000), o, dir)
    if instance then return instance end
    os.execute("rm -rf " .. quote(dir))
    failure = err
    if not port_taken then break end
  end
  error("the gateway did not start: " .. tostring(failure), 2)
end

function Gateway:stop()
  if self.stopped then return end
  self.stopped = true
  terminate(self.pid)
  suite_log.keep("gateway", { self.log, self.stderr })
  os.execute("rm -rf " .. quote(self.dir))
end

return gateway
