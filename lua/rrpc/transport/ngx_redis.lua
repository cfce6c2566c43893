-- Redis inside nginx, for rrpc.ngx.quota.redis: lua-resty-redis (Debian's lua-nginx-redis,
-- `nginx.redis`; OpenResty's `resty.redis`) on cosockets, its connections kept alive in
-- nginx's pool (set_keepalive). A request runs to its end in the light thread that makes
-- it; the worker goes on. The contract is transport/redis.lua's. rediss:// makes a TLS
-- handshake on each new connection, verifying the certificate, for target.server_name,
-- against nginx.conf's lua_ssl_trusted_certificate.
local ngx = ngx
local core = require "rrpc.core"
local limits = require "rrpc.limits"

local ok_redis, redis = pcall(require, "resty.redis")
if not ok_redis then redis = require "nginx.redis" end

local M = {}

function M.refuses() end

function M.log(message)
  ngx.log(ngx.WARN, message)
end

local Conn = {}
Conn.__index = Conn

function M.open(target)
  -- connections differ by what AUTH and SELECT made of them
  local pool = ("rrpc_quota:%s:%d:%d:%s:%s:%s"):format(target.host, target.port, target.db,
    target.username or "", target.password and ngx.md5(target.password) or "",
    target.tls and ("tls:" .. target.server_name) or "tcp")
  return setmetatable({ target = target, pool = pool }, Conn)
end

local function value_of(v)
  if v == ngx.null then return nil end
  return v
end

-- lua-resty-redis 0.27 has no TLS option of its own: the handshake is made on its socket.
-- resty.core loses the verification's verdict when the handshake completes at once (the
-- first step, not after a wait): asked for no session it returns true for a certificate
-- that did not verify (the first command then reads "closed"); asked for one, it fails an
-- assertion instead (openresty/lua-resty-core#499, fixed upstream after the versions
-- Debian ships). So a session is asked for (and dropped) and that assertion is a failure.
local function handshake(sock, server_name)
  local done, session_or_raised, err = pcall(sock.sslhandshake, sock, nil, server_name, true)
  if not done then
    if not tostring(session_or_raised):find("assertion failed", 1, true) then
      error(session_or_raised, 0) -- not the one this stands in for
    end
    return nil, "the certificate did not verify for " .. server_name .. " (the library lost OpenSSL's reason)"
  end
  if err then return nil, tostring(err) end
  return true
end

function Conn:run(commands)
  local target = self.target
  local red = redis:new()
  red:set_timeout(target.timeout_ms)
  local ok, err = red:connect(target.host, target.port, { pool = self.pool })
  if not ok then return nil, "cannot connect to Redis: " .. tostring(err) end
  if (red:get_reused_times() or 0) == 0 then
    if target.tls then
      ok, err = handshake(rawget(red, "_sock"), target.server_name)
      if not ok then
        red:close()
        return nil, "TLS handshake with Redis failed: " .. err
      end
    end
    if target.password then
      if target.username then ok, err = red:auth(target.username, target.password)
      else ok, err = red:auth(target.password) end
      if not ok then
        red:close()
        return nil, "Redis refused the connection (AUTH or SELECT): " .. tostring(err)
      end
    end
    if target.db ~= 0 then
      ok, err = red:select(target.db)
      if not ok then
        red:close()
        return nil, "Redis refused the connection (AUTH or SELECT): " .. tostring(err)
      end
    end
  end
  local sent = core.monotime()
  red:init_pipeline(#commands)
  for _, command in ipairs(commands) do
    red[command[1]:lower()](red, unpack(command, 2))
  end
  local results
  results, err = red:commit_pipeline()
  if not results then
    red:close()
    return nil, "Redis connection lost: " .. tostring(err)
  end
  red:set_keepalive(limits.QUOTA_REDIS_KEEPALIVE_MS, limits.QUOTA_REDIS_POOL_SIZE)
  local replies = {}
  for i, r in ipairs(results) do
    if type(r) == "table" and r[1] == false then
      replies[i] = { err = tostring(r[2]) }
    else
      replies[i] = { value_of(r) }
    end
  end
  return replies, sent
end

function Conn:request(commands)
  self.replies, self.sent, self.why = nil, nil, nil
  local started = core.monotime()
  self.started = started
  local replies, sent = self:run(commands)
  if self.started ~= started then return end -- given up meanwhile (below)
  self.started = nil
  if replies then
    self.replies, self.sent = replies, sent
  else
    self.why = sent
  end
end

-- A request whose light thread nginx killed (its client left) never ends: given up after
-- twice its timeout, as no answer (not a fault of Redis's).
function Conn:poll()
  if self.why then return false, self.why end
  if self.started and core.monotime() - self.started > 2 * self.target.timeout_ms / 1000 then
    self.started = nil
    return false, "abandoned", true
  end
  return self.replies, self.sent
end

function Conn.fd() end

function Conn.wait(_, seconds)
  ngx.sleep(seconds)
end

function Conn.close() end

return M
