-- Real device clients for the specs of the emulator's MQTT broker (emulator/run
-- --mqtt-port): the official Node.js device SDK (spec/support/node_device.js) and
-- mosquitto_pub / mosquitto_sub, with the platform's client id, username and password.
--
--   local mqtt_devices = require "mqtt_devices"
--   mqtt_devices.install()                       -- emulator/device-sdk/install.sh, once
--   local d = mqtt_devices.node(emu, { { productKey=, deviceName=, deviceSecret=, answer="echo" } })
--   d:wait("^ready alpha")                       -- a line of its output, or an error after 10 s
--   d:lines(), d:count("^request alpha"), d:signal("STOP"), d:stop()
--   local rc, out = mqtt_devices.mosquitto("mosquitto_pub", emu, { product_key=, device_name=,
--                                          secret=, method=, timestamp=, id=, args = "-t ... -m ..." })
--   mqtt_devices.password(secret, "<clientId><dn><pk><ts> content", "sha1")  -- hex
local cjson = require "cjson"
local process = require "process"
local system = require "system"

local quote, output, read_file = process.quote, process.output, process.read_file

local mqtt_devices = {}

local ROOT = (debug.getinfo(1, "S").source:match("^@(.-)/?spec/support/mqtt_devices%.lua$") or "")
if ROOT == "" then
  ROOT = "."
end

local installed = false

function mqtt_devices.install()
  if installed then return end
  local status = os.execute(quote(ROOT .. "/emulator/device-sdk/install.sh") .. " >/dev/null")
  assert(status == true or status == 0, "emulator/device-sdk/install.sh failed")
  installed = true
end

--- hex HMAC of `content` keyed with `secret` (method: sha1, sha256 or md5), by openssl.
function mqtt_devices.password(secret, content, method)
  local hex = output("printf '%s' " .. quote(content) .. " | openssl dgst -" .. (method or "sha1")
    .. " -hmac " .. quote(secret)):match("= (%x+)")
  return assert(hex, "openssl dgst failed")
end

--- The platform's credentials for a device: client id, username, password.
-- device: { product_key, device_name, secret, id = "<clientId>", method = "sha1", timestamp }
function mqtt_devices.credentials(device)
  local id, method = device.id or "spec", device.method or "sha1"
  local params = "securemode=3,signmethod=hmac" .. method .. (device.timestamp and ",timestamp=" .. device.timestamp or "")
  local content = (id ~= "" and "clientId" .. id or "") .. "deviceName" .. device.device_name
    .. "productKey" .. device.product_key .. (device.timestamp and "timestamp" .. device.timestamp or "")
  return id .. "|" .. params .. "|", device.device_name .. "&" .. device.product_key,
    mqtt_devices.password(device.secret, content, method)
end

--- Runs mosquitto_pub or mosquitto_sub against the emulator's broker as `device` (see
-- credentials; client_id, username, password override them); returns its exit status and
-- its output (standard output and error).
function mqtt_devices.mosquitto(tool, emu, device)
  local client_id, username, password = mqtt_devices.credentials(device)
  local command = string.format("%s -h 127.0.0.1 -p %d -i %s -u %s -P %s %s 2>&1; echo \"rc=$?\"", tool,
    emu.mqtt_port, quote(device.client_id or client_id), quote(device.username or username),
    quote(device.password or password), device.args or "")
  local text = output(command)
  local rc = tonumber(text:match("rc=(%d+)\n?$"))
  return rc, (text:gsub("rc=%d+\n?$", ""))
end

local Devices = {}
Devices.__index = Devices

--- Starts spec/support/node_device.js with `list` (its "devices") in the background.
-- options: keepalive (seconds).
function mqtt_devices.node(emu, list, options)
  mqtt_devices.install()
  local dir = output("mktemp -d /tmp/rrpc-devices-spec.XXXXXX"):match("[^\n]+")
  local config = cjson.encode { brokerUrl = emu.mqtt_url, keepalive = options and options.keepalive or 60,
                                devices = list }
  local pid = tonumber(output("node " .. quote(ROOT .. "/spec/support/node_device.js") .. " " .. quote(config)
    .. " </dev/null >" .. quote(dir .. "/out") .. " 2>" .. quote(dir .. "/err") .. " & echo $!"):match("%d+"))
  return setmetatable({ pid = pid, dir = dir, out = dir .. "/out" }, Devices)
end

function Devices:lines()
  local lines = {}
  for line in read_file(self.out):gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  return lines
end

function Devices:count(pattern)
  local n = 0
  for _, line in ipairs(self:lines()) do
    if line:find(pattern) then n = n + 1 end
  end
  return n
end

--- Waits until `n` (default 1) lines match `pattern`; errors after `timeout_s` (default 10).
function Devices:wait(pattern, n, timeout_s)
  local deadline = system.monotime() + (timeout_s or 10)
  repeat
    if self:count(pattern) >= (n or 1) then return true end
    if not process.alive(self.pid) then break end
    system.sleep(0.02)
  until system.monotime() > deadline
  error(("no %d lines %q from the devices; their output:\n%s\n%s"):format(n or 1, pattern,
    read_file(self.out), read_file(self.dir .. "/err")), 2)
end

function Devices:signal(name)
  os.execute("kill -" .. name .. " " .. self.pid .. " 2>/dev/null")
end

function Devices:stop()
  if self.stopped then return end
  self.stopped = true
  self:signal("CONT")
  process.terminate(self.pid)
  os.execute("rm -rf " .. quote(self.dir))
end

return mqtt_devices
