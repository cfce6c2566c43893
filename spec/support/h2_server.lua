-- The hostile HTTP/2 server (h2_server.py, Debian's python3-h2) for the specs, started on a
-- free port and stopped by PID.
--
--   local h2_server = require "h2_server"
--   local s = h2_server.start { cert = t.cert, key = t.key }   -- spec/support/tls.lua
--   -- s.url ("https://127.0.0.1:<port>"), s.port, s.pid
--   s:arrivals(payload)   -- how many times a request with that payload arrived
--   s:stop()
local process = require "process"
local core = require "rrpc.core"

local quote = process.quote
local SCRIPT = debug.getinfo(1, "S").source:match("^@(.*/)") .. "h2_server.py"
local PYTHON = "/usr/bin/python3" -- Debian's, with python3-h2

local Server = {}
Server.__index = Server

local h2_server = {}

function h2_server.start(options)
  local try_dir -- the try's directory (process.start_server's)
  return process.start_server {
    name = "h2-server",
    command = function(port, dir)
      try_dir = dir
      return ("exec %s %s %d %s %s %s"):format(PYTHON, quote(SCRIPT), port, quote(options.cert),
        quote(options.key), quote(dir .. "/arrivals.log"))
    end,
    healthy = function()
      return process.read_file(try_dir .. "/stdout.log"):find("ready", 1, true) ~= nil
    end,
    ready = function(port, pid, dir)
      return setmetatable({ port = port, pid = pid, dir = dir, log = dir .. "/arrivals.log",
                            url = ("https://127.0.0.1:%d"):format(port) }, Server)
    end,
  }
end

-- The RRpc requests are counted by their RequestBase64Byte, as the emulator counts them.
function Server:arrivals(payload)
  local wanted, n = " payload=" .. core.b64encode(payload) .. "\n", 0
  local text = process.read_file(self.log)
  local from = 1
  while true do
    local at = text:find(wanted, from, true)
    if not at then return n end
    n, from = n + 1, at + #wanted
  end
end

function Server:stop()
  process.terminate(self.pid)
  os.execute("rm -rf " .. quote(self.dir))
end

return h2_server
