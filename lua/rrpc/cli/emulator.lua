-- rrpc emulator: the local stand-in of the RRpc endpoint (emulator/run: nginx + Lua) in
-- the foreground. It is started first; the commands to call it are printed only once it
-- listens on the port (and it is ours that listens); a port in use or a bad registry is
-- one line. SIGINT or SIGTERM stops it.
local cjson = require "cjson.safe"
local rrpc = require "rrpc"
local common = require "rrpc.cli.common"
local output = require "rrpc.cli.output"

local emulator = {}

local EXIT, fail = output.EXIT, common.fail
local limits = rrpc.limits
local WATCH_INTERVAL_MS = limits.CLI_WATCH_INTERVAL_MS

local function shell_quote(text)
  if text:match("^[%w%.,_/:@%%+=-]+$") then return text end
  return "'" .. text:gsub("'", "'\\''") .. "'"
end
emulator.shell_quote = shell_quote

local function read_all(path)
  local handle = io.open(path, "rb")
  if not handle then return nil end
  local text = handle:read("*a")
  handle:close()
  return text
end

local function process_running(pid)
  local stat = read_all("/proc/" .. pid .. "/stat")
  local state = stat and stat:match("^%d+ %(.*%) (%a)")
  return state ~= nil and state ~= "Z"
end

-- The inodes of the sockets listening on 127.0.0.1:port (or every address) in
-- /proc/net/tcp and tcp6, each with whether it is on every address.
local function listeners(port)
  local hex_port = ("%04X"):format(port)
  local found = {}
  for _, file in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    for line in (read_all(file) or ""):gmatch("[^\n]+") do
      -- sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      local fields = {}
      for field in line:gmatch("%S+") do fields[#fields + 1] = field end
      local address, p = (fields[2] or ""):match("^(%x+):(%x+)$")
      local state, inode = fields[4], fields[10]
      if address and p == hex_port and state == "0A" and inode then -- LISTEN
        local loopback = address == "0100007F" or address == "0000000000000000FFFF00000100007F"
        local any = address:find("^0+$") ~= nil
        if loopback or any then found[#found + 1] = inode end
      end
    end
  end
  return found
end

-- Whether process pid holds the socket with that inode.
local function holds(pid, inode)
  local pipe = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  local listing = pipe:read("*a")
  pipe:close()
  return listing:find("socket:[" .. inode .. "]", 1, true) ~= nil
end

--- find(env) --> the emulator's directory: <repo>/emulator from a checkout (or a luarocks
-- tree that copied it beside bin/), $(PREFIX)/share/rrpc/emulator when installed
local function find(env)
  local places = env.emulator_dirs or {}
  for _, dir in ipairs(places) do
    if read_all(dir .. "/run") then return dir end
  end
  fail(EXIT.other, "cannot find the emulator: looked for " .. table.concat(places, "/run and ") .. "/run")
end

-- The names of a registry section's entries that are tables, sorted. The emulator checks
-- the registry itself; here a malformed one only means no example to print.
local function sorted_entries(section)
  local names = {}
  for name, entry in pairs(type(section) == "table" and section or {}) do
    if type(name) == "string" and type(entry) == "table" then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

--- demo_identity(registry_path) --> key id, secret, product key, device name, instance id
-- (nil when the registry has no usable key or device): an active key on the emulator's
-- clock, and a device that echoes without delay, preferring products without an instance.
local function demo_identity(registry_path)
  local registry = cjson.decode(read_all(registry_path) or "")
  if type(registry) ~= "table" then return nil end
  local key_id, secret
  for _, id in ipairs(sorted_entries(registry.access_keys)) do
    local key = registry.access_keys[id]
    if type(key.secret) == "string" and not key.inactive and (key.clock_offset_s or 0) == 0 and not key.qps then
      key_id, secret = id, key.secret
      break
    end
  end
  if not key_id then return nil end
  for _, with_instance in ipairs { false, true } do
    for _, product_key in ipairs(sorted_entries(registry.products)) do
      local product = registry.products[product_key]
      if (product.instance_id ~= nil) == with_instance then
        for _, device_name in ipairs(sorted_entries(product.devices)) do
          local device = product.devices[device_name]
          if (device.behaviour == "echo" or device.behaviour == "transform") and device.active ~= false
             and not (device.latency or device.fault_rate) then
            return key_id, secret, product_key, device_name, product.instance_id
          end
        end
      end
    end
  end
  return nil
end

-- The one line that says why the emulator did not start, from what it wrote.
local function why_not_started(text, port)
  local registry = text:match("init_by_lua error: ([^\n]+)")
  if registry then return "bad registry: " .. registry end
  if text:find("bind%(%) to [^\n]* failed %(98: Address already in use%)") then
    return ("port %d is in use by another program (rrpc emulator --port P takes another)"):format(port)
  end
  local last
  for line in text:gmatch("[^\n]+") do
    local said = line:match("%[emerg%] %d+#%d+: (.*)") or line:match("^rrpc emulator: (.*)")
    if said and not said:find("^http") then last = said end
  end
  return last or ("it exited: " .. output.one_line(text:sub(1, 300)))
end

local function banner(env, url, registry_name, registry_path)
  local program = env.program or "rrpc"
  local key_id, secret, product_key, device_name, instance_id = demo_identity(registry_path)
  local lines = { ("rrpc emulator on %s (devices: %s); Ctrl-C stops it. In another shell:"):format(url, registry_name) }
  if key_id then
    local instance = instance_id and (" --instance " .. shell_quote(instance_id)) or ""
    lines[#lines + 1] = ("  export RRPC_ENDPOINT=%s ALIBABA_CLOUD_ACCESS_KEY_ID=%s"
      .. " ALIBABA_CLOUD_ACCESS_KEY_SECRET=%s"):format(url, shell_quote(key_id), shell_quote(secret))
    lines[#lines + 1] = ("  %s call --product-key %s --device %s%s --payload hello"):format(
      shell_quote(program), shell_quote(product_key), shell_quote(device_name), instance)
    lines[#lines + 1] = ("  printf '%%s,%%s\\n' %s %s | %s batch --devices - --payload hello%s"):format(
      shell_quote(product_key), shell_quote(device_name), shell_quote(program), instance)
  else
    lines[#lines + 1] = ("  export RRPC_ENDPOINT=%s  (and a key of %s in ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET)"):format(
      url, registry_name)
  end
  env.stdout:write(table.concat(lines, "\n") .. "\n")
  env.stdout:flush()
end

-- Copies what the emulator wrote on its standard error since `from` to ours (its start-up
-- line is the banner's business); returns where it got to.
local function relay(env, path, from)
  local text = read_all(path) or ""
  if #text > from then
    local new = text:sub(from + 1):gsub("rrpc emulator: http[^\n]*\n", "")
    if new ~= "" then
      env.stderr:write(new)
      env.stderr:flush()
    end
  end
  return #text
end

local function stop(pid)
  if process_running(pid) then os.execute("kill -TERM " .. pid .. " 2>/dev/null") end
  for _ = 1, 50 do
    if not process_running(pid) then return end
    rrpc.signals.wait(100)
  end
  os.execute("kill -KILL " .. pid .. " 2>/dev/null")
end

function emulator.run(opts, env)
  local signals = env.signals
  local dir = find(env)
  local port = opts.port or limits.CLI_EMULATOR_PORT
  local url = "http://127.0.0.1:" .. port
  if #listeners(port) > 0 then
    fail(EXIT.other, ("port %d is in use by another program (rrpc emulator --port P takes another)"):format(port))
  end
  local pid_file, err_file = os.tmpname(), os.tmpname()
  -- Lua cannot exec, so the emulator (emulator/run execs nginx) runs as a child, which
  -- writes its PID to a file for us. A watchdog beside it stops it once this process is
  -- gone (or a zombie): SIGKILL leaves rrpc no chance to do it.
  local child = io.popen(([[
echo $$ >%s
rrpc_pid=$PPID
running() { state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]; }
( while running $$; do
    running "$rrpc_pid" || { kill -TERM $$; break; }
    sleep %s
  done ) </dev/null >/dev/null 2>&1 &
exec %s --port %d%s </dev/null 2>%s]]):format(shell_quote(pid_file), WATCH_INTERVAL_MS / 1000,
    shell_quote(dir .. "/run"), port, (opts.devices and (" --devices " .. shell_quote(opts.devices)) or "")
      .. (opts.mqtt_port and (" --mqtt-port " .. opts.mqtt_port) or ""),
    shell_quote(err_file)), "w")
  local pid
  local function cleanup()
    os.remove(pid_file)
    os.remove(err_file)
  end
  local waited, start_ms = 0, limits.CLI_EMULATOR_START_S * 1000
  -- its PID, then until it listens (ours on our port), exits, or a signal comes
  local ready, interrupted
  while waited < start_ms do
    pid = pid or tonumber((read_all(pid_file) or ""):match("%d+"))
    if pid then
      if not process_running(pid) then break end
      for _, inode in ipairs(listeners(port)) do
        if holds(pid, inode) then ready = true end
      end
      if ready then break end
    end
    if signals.wait(WATCH_INTERVAL_MS / 4) then
      interrupted = signals.take()[1]
      break
    end
    waited = waited + WATCH_INTERVAL_MS / 4
  end
  if not ready then
    if pid then stop(pid) end
    child:close()
    local said = read_all(err_file) or ""
    cleanup()
    if interrupted then return 128 + rrpc.signals.number(interrupted) end
    fail(EXIT.other, "the emulator did not start: " .. (pid and why_not_started(said, port)
      or "it wrote no PID"))
  end
  banner(env, url, opts.devices or "the default registry", opts.devices or (dir .. "/devices.json"))
  local relayed = relay(env, err_file, 0)
  while process_running(pid) do
    if signals.wait(WATCH_INTERVAL_MS) then
      interrupted = interrupted or signals.take()[1]
      stop(pid)
    end
    relayed = relay(env, err_file, relayed)
  end
  relay(env, err_file, relayed)
  local _, how, code = child:close()
  cleanup()
  if interrupted then return 128 + rrpc.signals.number(interrupted) end
  if how == "signal" then return 128 + code end
  return code or 0
end

return emulator
