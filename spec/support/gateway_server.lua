-- Starts and stops the OpenResty gateway (examples/openresty/run) for busted specs.
--
--   local gateway_server = require "gateway_server"
--   local g = gateway_server.start{ endpoint = emu.url, workers = 1, qps = 1000, include = nil,
--                                   quota_redis = nil, quota_key = nil, -- examples/openresty/run's
--                                   env = { NAME = value } }
--   -- env: its environment beside the specs' (default: the emulator's demo key as
--   -- RRPC_ACCESS_KEY_ID and _SECRET, for the emulator the spec started; the gateway
--   -- itself has no key of its own).
--   -- g.url, g.pid, g.log (access log), g.stderr
--   g:stop()  -- SIGTERM, wait for the exit; idempotent
local process = require "process"
local suite_log = require "suite_log"

local gateway_server = {}

local quote = process.quote

local DEMO_KEY = { RRPC_ACCESS_KEY_ID = "LTAI5tRRpcDemoKey", RRPC_ACCESS_KEY_SECRET = "RRpcDemoSecretNotForProduction" }

local function env_words(vars)
  local words = { "env" }
  local names = {}
  for name in pairs(vars) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do words[#words + 1] = quote(name .. "=" .. vars[name]) end
  return table.concat(words, " ") .. " "
end

local ROOT = debug.getinfo(1, "S").source:match("^@(.-)/?spec/support/gateway_server%.lua$") or ""
if ROOT == "" then ROOT = "." end

-- Ours answers its health check with our PID as the master's.
local function answers_health(port, pid)
  local headers = process.output("curl -s -m 1 -o /dev/null -D - http://127.0.0.1:" .. port .. "/__gateway/health")
  return headers:lower():match("\nx%-gateway%-master%-pid: (%d+)") == tostring(pid)
end

local Gateway = {}
Gateway.__index = Gateway

function gateway_server.start(options)
  return process.start_server {
    name = "gateway",
    command = function(port, dir)
      return env_words(options.env or DEMO_KEY)
        .. ("%s/examples/openresty/run --port %d --endpoint %s --workers %d --qps %d --log %s%s%s%s"):format(
        quote(ROOT), port, quote(options.endpoint), options.workers or 1, options.qps or 1000,
        quote(dir .. "/access.log"), options.include and (" --include " .. quote(options.include)) or "",
        options.quota_redis and (" --quota-redis " .. quote(options.quota_redis)) or "",
        options.quota_key and (" --quota-key " .. quote(options.quota_key)) or "")
    end,
    healthy = answers_health,
    ready = function(port, pid, dir)
      return setmetatable({ url = "http://127.0.0.1:" .. port, port = port, pid = pid,
                            log = dir .. "/access.log", stderr = dir .. "/stderr.log", dir = dir }, Gateway)
    end,
  }
end

function Gateway:stop()
  if self.stopped then return end
  self.stopped = true
  process.terminate(self.pid)
  suite_log.keep("gateway", { self.log, self.stderr })
  os.execute("rm -rf " .. quote(self.dir))
end

return gateway_server
