-- Redis in plain Lua, for rrpc.quota.redis: hiredis's non-blocking API through rrpc.core
-- (src/redis.c), driven without ever blocking, so that a batch goes on with its calls
-- while a lease is in flight (its pool also wakes on the connection's socket).
--
-- The contract of a Redis link (transport/ngx_redis.lua keeps it inside nginx):
--   refuses(target) --> nil | message          a target this world cannot reach, naming
--     the option (target: host, port, db, username, password, tls, server_name,
--     timeout_ms)
--   log(message)                               a line for the operator
--   open(target) --> conn                      nothing is sent yet
--   conn:request(commands)                     sends the commands (each an array of
--     strings), after AUTH and SELECT on a new connection; inside nginx it runs to its
--     end (only the calling light thread waits)
--   conn:poll() --> nil (under way) | replies, sent | false, why [, true]
--     replies[i] = { value } or { err = "Redis's error" }; sent: core.monotime() just
--     before the commands went out; why: connect, I/O, timeout or a refused AUTH/SELECT;
--     true after it: the request was given up for a reason of the caller's (inside nginx,
--     a light thread killed with its request), not a fault of Redis's
--   conn:fd() --> fd, write | nil              the socket, while a request is under way
--   conn:wait(seconds)                         until the socket is ready, or seconds
--   conn:close()
-- Each connect and each request is bounded by target.timeout_ms.
local core = require "rrpc.core"

local M = {}

function M.refuses(target)
  if target.tls then
    return "option 'url': rediss:// (TLS) is not supported in plain Lua: rrpc.core's hiredis (Debian 12's "
      .. "libhiredis 0.14) has no TLS; use it inside nginx (rrpc.ngx.quota.redis), or redis:// to a local "
      .. "TLS tunnel"
  end
end

function M.log(message)
  io.stderr:write(message, "\n")
end

local Conn = {}
Conn.__index = Conn

function M.open(target)
  return setmetatable({ target = target, timeout = target.timeout_ms / 1000 }, Conn)
end

function Conn:fail(why)
  self.failure = why
  if self.c then
    self.c:close()
    self.c = nil
  end
end

-- A kept connection that turns out closed (Redis restarted, or dropped it idle) before
-- any reply: once more on a new one, at once.
function Conn:lost(why)
  if self.setup or self.retried or #self.replies > 0 then return self:fail("Redis connection lost: " .. why) end
  self.retried = true
  self.c:close()
  local c, err = core.redis(self.target.host, self.target.port)
  if not c then
    self.c = nil
    return self:fail("cannot connect to Redis: " .. err)
  end
  self.c, self.connecting, self.setup, self.queued, self.flushed = c, true, true, false, false
  return self:step()
end

function Conn:request(commands)
  self.commands, self.replies, self.failure, self.done = commands, {}, nil, false
  self.queued, self.flushed, self.retried = false, false, false
  self.deadline = core.monotime() + self.timeout
  if not self.c then
    local c, err = core.redis(self.target.host, self.target.port)
    if not c then return self:fail("cannot connect to Redis: " .. err) end
    self.c, self.connecting, self.setup = c, true, true
  end
  self:step()
end

-- As far as the socket allows now: connect, queue, write, read.
function Conn:step()
  local c, target = self.c, self.target
  if self.connecting then
    local ok, err = c:connected()
    if ok == nil then return self:fail("cannot connect to Redis: " .. err) end
    if not ok then return end
    self.connecting = false
  end
  if not self.queued then
    self.skip = 0
    if self.setup then
      if target.password then
        if target.username then c:append("AUTH", target.username, target.password)
        else c:append("AUTH", target.password) end
        self.skip = self.skip + 1
      end
      if target.db ~= 0 then
        c:append("SELECT", tostring(target.db))
        self.skip = self.skip + 1
      end
    end
    for _, command in ipairs(self.commands) do c:append((table.unpack or unpack)(command)) end
    self.queued, self.sent = true, core.monotime()
  end
  if not self.flushed then
    local done, err = c:write()
    if done == nil then return self:lost(err) end
    self.flushed = done
  end
  while true do
    local kind, value = c:read()
    if kind == "wait" then return end
    if kind == "io" then return self:lost(value) end
    if self.skip > 0 then
      self.skip = self.skip - 1
      if kind == "error" then return self:fail("Redis refused the connection (AUTH or SELECT): " .. value) end
    else
      self.replies[#self.replies + 1] = kind == "error" and { err = value } or { value }
      if #self.replies == #self.commands then
        self.done, self.setup = true, false
        return
      end
    end
  end
end

function Conn:poll()
  if not self.failure and not self.done then
    self:step()
    if not self.failure and not self.done and core.monotime() > self.deadline then
      self:fail(("Redis did not answer within %d ms"):format(self.target.timeout_ms))
    end
  end
  if self.failure then return false, self.failure end
  if self.done then return self.replies, self.sent end
end

function Conn:fd()
  if self.c and not self.done and not self.failure then
    return self.c:fd(), self.connecting or not self.flushed
  end
end

function Conn:wait(seconds)
  local fd, write = self:fd()
  if not fd then return end
  local left = math.min(seconds, self.deadline - core.monotime())
  self.c:wait(math.max(0, math.ceil(left * 1000)), write)
end

function Conn:close()
  if self.c then
    self.c:close()
    self.c = nil
  end
end

return M
