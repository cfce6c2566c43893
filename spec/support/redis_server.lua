-- Starts and stops Debian's redis-server for busted specs: in the foreground, on a free
-- port of 127.0.0.1, from a temp dir, with nothing saved; stopped by PID.
--
--   local redis_server = require "redis_server"
--   local r = redis_server.start{ password = nil }   -- r.url ("redis://127.0.0.1:<port>/0"), r.port, r.pid
--   -- TLS only (certificates: spec/support/tls.lua): r.url is "rediss://127.0.0.1:<port>/0"
--   local r = redis_server.start{ tls = { cert =, key =, ca = } }
--   r:cli("GET", "k")   -- redis-cli's output
--   r:kill()            -- SIGKILL, by PID; r:restart() starts it again on the same port
--   r:pause() / r:resume()   -- SIGSTOP / SIGCONT: a Redis that answers nothing, then again
--   r:stop()            -- SIGTERM, wait for the exit, remove the temp dir; idempotent
local process = require "process"
local system = require "system"

local redis_server = {}

local quote = process.quote

local Redis = {}
Redis.__index = Redis

local function cli_command(port, options)
  return ("redis-cli -h 127.0.0.1 -p %d%s%s"):format(port,
    options.password and (" --no-auth-warning -a " .. quote(options.password)) or "",
    options.tls and (" --tls --cacert " .. quote(options.tls.ca)) or "")
end

local function launch(options, port)
  return process.start_server {
    name = "redis",
    command = function(drawn, dir)
      local tls = options.tls
      local listen = tls and ("--port 0 --tls-port %d --tls-cert-file %s --tls-key-file %s --tls-ca-cert-file %s "
        .. "--tls-auth-clients no"):format(port or drawn, quote(tls.cert), quote(tls.key), quote(tls.ca))
        or ("--port %d"):format(port or drawn)
      -- its log on standard error, where process.start_server looks for a port in use
      return ("cd %s && exec redis-server %s --bind 127.0.0.1 --save '' --appendonly no --dir %s --logfile /dev/stderr%s")
        :format(
        quote(dir), listen, quote(dir), options.password and (" --requirepass " .. quote(options.password)) or "")
    end,
    healthy = function(drawn, pid)
      local out = process.output(cli_command(port or drawn, options) .. " INFO server 2>&1")
      return out:match("process_id:(%d+)") == tostring(pid)
    end,
    ready = function(drawn, pid, dir)
      local p = port or drawn
      return setmetatable({ port = p, pid = pid, dir = dir, options = options,
        url = ("%s://%s127.0.0.1:%d/0"):format(options.tls and "rediss" or "redis",
          options.password and (":" .. options.password .. "@") or "", p),
      }, Redis)
    end,
  }
end

function redis_server.start(options)
  return launch(options or {})
end

function Redis:cli(...)
  local argv = {}
  for i, a in ipairs { ... } do argv[i] = quote(tostring(a)) end
  return process.output(cli_command(self.port, self.options) .. " " .. table.concat(argv, " ") .. " 2>&1")
end

local function wait_gone(pid)
  local deadline = system.monotime() + 5
  while process.alive(pid) and system.monotime() < deadline do system.sleep(0.01) end
end

function Redis:kill()
  os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
  wait_gone(self.pid)
  os.execute("rm -rf " .. quote(self.dir))
  self.killed = true
end

-- Again on the same port, empty (nothing was saved): a restarted Redis.
function Redis:restart()
  if not self.killed then self:kill() end
  local again = launch(self.options, self.port)
  self.pid, self.dir, self.killed = again.pid, again.dir, false
end

function Redis:pause()
  os.execute("kill -STOP " .. self.pid)
end

function Redis:resume()
  os.execute("kill -CONT " .. self.pid)
end

function Redis:stop()
  if self.stopped then return end
  self.stopped = true
  if not self.killed then
    self:resume()
    process.terminate(self.pid)
    os.execute("rm -rf " .. quote(self.dir))
  end
end

return redis_server
