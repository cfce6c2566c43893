-- Child processes for the specs: shell quoting and output, and servers started in the
-- background, recognised by their health check and stopped by PID.
local system = require "system"

local process = {}

local START_TIMEOUT_S, STOP_TIMEOUT_S, PORT_ATTEMPTS = 5, 5, 5

function process.quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

function process.output(command)
  local pipe = assert(io.popen(command))
  local output = pipe:read("*a")
  pipe:close()
  return output
end

function process.read_file(path)
  local file = io.open(path, "rb")
  if not file then return "" end
  local text = file:read("*a")
  file:close()
  return text
end

function process.write_file(path, bytes)
  local file = assert(io.open(path, "wb"))
  file:write(bytes)
  file:close()
end

-- A zombie (exited, not yet reaped by its parent) counts as gone.
function process.alive(pid)
  local state = process.read_file("/proc/" .. pid .. "/stat"):match("^%d+ %(.*%) (%a)")
  return state ~= nil and state ~= "Z"
end

-- SIGTERM (nginx's fast shutdown, which also stops its workers), then SIGKILL if the
-- process is still there after STOP_TIMEOUT_S.
function process.terminate(pid)
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  local deadline = system.monotime() + STOP_TIMEOUT_S
  while process.alive(pid) and system.monotime() < deadline do system.sleep(0.05) end
  if process.alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
end

-- Ports are drawn below the kernel's ephemeral range (ip_local_port_range), where no
-- connection of this machine has its local port (a load spec or a benchmark opens
-- thousands); start_server draws from the lower part, process.spare_port, for what a spec
-- starts itself, from the 2000 ports just below the range, so the two never meet.
local EPHEMERAL_LOW = (function()
  local f = io.open("/proc/sys/net/ipv4/ip_local_port_range")
  local low = f and tonumber(f:read("*l"):match("^%s*(%d+)"))
  if f then f:close() end
  return low or 32768
end)()
local SPARE_PORTS = 2000
local NEIGHBOURS = 3 -- the ports above its own that a server may take too (spec/support/emulator.lua)

function process.spare_port()
  return math.random(EPHEMERAL_LOW - SPARE_PORTS, EPHEMERAL_LOW - 1)
end

--- process.start_server{ name=, command=function(port, dir) --> shell command (backgrounded),
--    healthy=function(port, pid) --> bool, ready=function(port, pid, dir) --> instance }
-- Tries random ports until one is free; a temp dir per try, removed when the try fails.
-- The command's standard error goes to dir/stderr.log.
function process.start_server(s)
  local failure
  for _ = 1, PORT_ATTEMPTS do
    local dir = process.output("mktemp -d /tmp/rrpc-" .. s.name .. "-spec.XXXXXX"):match("[^\n]+")
    local port = math.random(10000, EPHEMERAL_LOW - SPARE_PORTS - NEIGHBOURS - 1)
    local stderr = dir .. "/stderr.log"
    local pid = tonumber(process.output(s.command(port, dir) .. " </dev/null >" .. process.quote(dir .. "/stdout.log")
      .. " 2>" .. process.quote(stderr) .. " & echo $!"):match("%d+"))
    local deadline = system.monotime() + START_TIMEOUT_S
    local port_taken = false
    failure = nil
    while system.monotime() < deadline do
      if not process.alive(pid) then
        failure = process.read_file(stderr)
        port_taken = failure:find("Address already in use", 1, true) ~= nil
        break
      end
      if s.healthy(port, pid) then return s.ready(port, pid, dir) end
      system.sleep(0.05)
    end
    if not failure then
      process.terminate(pid)
      failure = "no answer within " .. START_TIMEOUT_S .. " s\n" .. process.read_file(stderr)
    end
    os.execute("rm -rf " .. process.quote(dir))
    if not port_taken then break end
  end
  error(("the %s did not start: %s"):format(s.name, failure), 3)
end

return process
