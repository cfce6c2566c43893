-- The `vanish` behaviour: a platform node that reads a request whole and goes away
-- without answering, and whose address refuses connections for a while (the far side of
-- libcurl's "Connection died, retrying a fresh connect", emulator/README.md).
--
-- Only nginx's own mechanisms are used. `emulator/run --vanish-port PORT` writes two
-- configurations: nginx.conf (the one nginx runs; it listens on PORT too) and
-- nginx-vanished.conf (the same without that `listen`), and keeps a copy of the first as
-- nginx-listening.conf. The fault copies the vanished one over nginx.conf and sends
-- SIGHUP to the master: the master closes its copy of the listening socket while it
-- reloads, the old workers close theirs as they begin their graceful shutdown, and from
-- then on a connect to PORT is refused at once (RST). The handler waits until its own
-- connect to PORT is refused, then closes the client's connection with a FIN, without an
-- answer. The next generation of workers finds the phase in the shared dict (which a reload
-- keeps) and, after the device's refuse_ms, puts the listening configuration back with
-- another SIGHUP. Requests in progress in the old workers (the vanishing one included) go
-- on until they end; idle kept-alive connections of the old workers are closed by nginx.
--
-- The phase, in the shared dict rrpc_emulator (one key, changed by one process at a time):
--   nil         the vanish port listens
--   "removing"  a vanish request asked for the reload without the listener
--   "removed"   that generation runs; worker 0's timer will restore the listener
--   "restoring" the reload with the listener was asked for; its workers clear the phase
local ffi = require "ffi"
local ngx_process = require "ngx.process"

ffi.cdef [[
int kill(int pid, int sig);
]]

local vanish = {}

local SIGHUP = 1
local PHASE, REFUSE_MS = "vanish:phase", "vanish:refuse_ms"
-- How long the handler waits for the port to refuse connects (a reload takes a few ms).
local WAIT_REFUSED_MS = 5000
local PROBE_TIMEOUT_MS, PROBE_PAUSE_S = 200, 0.005

local config -- { host, port } of the vanish listener, or nil without --vanish-port

local function dict()
  return ngx.shared.rrpc_emulator
end

-- In init_by_lua (the master, at start and at each reload). `vanish_host` is the listen
-- address as nginx.conf has it (an IPv6 one in brackets).
function vanish.configure(vanish_host, vanish_port)
  config = vanish_port and { host = vanish_host, port = vanish_port } or nil
end

function vanish.enabled()
  return config ~= nil
end

-- "listening", or the phase of a vanish under way (health shows it).
function vanish.phase()
  return dict():get(PHASE) or "listening"
end

local function copy_file(from, to)
  local input = assert(io.open(from, "rb"))
  local text = input:read("*a")
  input:close()
  local temporary = to .. ".tmp"
  local output = assert(io.open(temporary, "wb"))
  output:write(text)
  output:close()
  assert(os.rename(temporary, to))
end

-- Makes `variant` ("vanished" or "listening") nginx's configuration and reloads it.
local function reload_as(variant)
  local prefix = ngx.config.prefix():gsub("/*$", "/")
  local ok, err = pcall(copy_file, prefix .. "nginx-" .. variant .. ".conf", prefix .. "nginx.conf")
  if not ok then
    ngx.log(ngx.ERR, "vanish: cannot switch the configuration to ", variant, ": ", err)
    return false
  end
  if ffi.C.kill(ngx_process.get_master_pid(), SIGHUP) ~= 0 then
    ngx.log(ngx.ERR, "vanish: cannot signal the master (errno ", ffi.errno(), ")")
    return false
  end
  return true
end

local function restore(premature)
  -- also when the worker exits first (premature): the listener must come back
  if dict():get(PHASE) == "removed" then
    dict():set(PHASE, "restoring")
    if not reload_as("listening") then
      dict():delete(PHASE)
    end
  end
  return premature
end

-- In each worker as it starts. Worker 0 of the generation a phase change started moves
-- the phase on.
function vanish.init_worker()
  if not config or ngx.worker.id() ~= 0 then
    return
  end
  local phase = dict():get(PHASE)
  if phase == "removing" or phase == "removed" then -- "removed": worker 0 was respawned
    dict():set(PHASE, "removed")
    local ok, err = ngx.timer.at((dict():get(REFUSE_MS) or 0) / 1000, restore)
    if not ok then
      ngx.log(ngx.ERR, "vanish: cannot schedule the listener's return: ", err)
      restore()
    end
  elseif phase == "restoring" then
    dict():delete(PHASE)
  end
end

-- true once a connect to the vanish port is refused.
local function refused()
  local probe = ngx.socket.tcp()
  probe:settimeout(PROBE_TIMEOUT_MS)
  local ok, err = probe:connect(config.host, config.port)
  if ok then
    probe:close()
    return false
  end
  return err == "connection refused"
end

-- The behaviour: the request has been read (and counted, and accepted). Takes the vanish
-- listener away unless that is already under way, waits until it refuses connects (not
-- when it is coming back: then there is nothing to wait for), and returns; the caller then
-- closes the client's connection with a FIN. Without --vanish-port it only closes.
function vanish.go_away(refuse_ms)
  if not config then
    return
  end
  if dict():add(PHASE, "removing") then
    dict():set(REFUSE_MS, refuse_ms)
    if not reload_as("vanished") then
      dict():delete(PHASE)
      return
    end
  end
  local deadline = ngx.now() + WAIT_REFUSED_MS / 1000
  while true do
    local phase = dict():get(PHASE)
    if phase ~= "removing" and phase ~= "removed" then
      return
    end
    if refused() then
      return
    end
    if ngx.now() >= deadline then
      ngx.log(ngx.ERR, "vanish: port ", config.port, " still accepts connections after ", WAIT_REFUSED_MS, " ms")
      if phase == "removing" then -- the reload did not happen: let the next vanish try again
        dict():delete(PHASE)
      end
      return
    end
    ngx.sleep(PROBE_PAUSE_S)
  end
end

return vanish
