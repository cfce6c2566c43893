-- Processes that call the emulator under a quota at the same time (each one
-- spec/support/quota_worker.lua), for the specs of rrpc.quota and `make bench`.
--
--   local quota_run = require "quota_run"
--   local running = quota_run.start { { mode = "batch" | "single", endpoint =, key =, secret =,
--                                       quota = { url =, key =, qps = } | { process = {...} },
--                                       seconds =, device = "echo", concurrency = 50 }, ... }
--   local results = quota_run.wait(running, limit_s)
--   -- results[i]: the worker's JSON line (sent, ok, codes, stats, state, why, slowest_s),
--   -- with stderr (its log lines) and took (seconds)
local cjson = require "cjson"
local process = require "process"
local system = require "system"

local quota_run = {}

local ROOT = debug.getinfo(1, "S").source:match("^@(.-)/?spec/support/quota_run%.lua$") or ""
if ROOT == "" then ROOT = "." end
-- the VM running this, and its build of rrpc.core
local VM = rawget(_G, "jit") and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))

function quota_run.start(list, vm)
  vm = vm or VM
  local running = {}
  for i, w in ipairs(list) do
    local out, err = os.tmpname(), os.tmpname()
    local command = ("cd %s && LUA_PATH='./lua/?.lua;./spec/support/?.lua;;' LUA_CPATH='./build/%s/?.so;;' "
      .. "%s spec/support/quota_worker.lua %s %s %s %s %s %s %s %s"):format(process.quote(ROOT), vm, vm, w.mode,
      process.quote(w.endpoint), w.key, w.secret, process.quote(cjson.encode(w.quota)), w.seconds, w.device or "echo",
      w.concurrency or 50)
    local pid = tonumber(process.output(command .. " </dev/null >" .. out .. " 2>" .. err .. " & echo $!"):match("%d+"))
    running[i] = { pid = pid, out = out, err = err, started = system.monotime() }
  end
  return running
end

function quota_run.wait(running, limit)
  local deadline = system.monotime() + limit
  local results = {}
  for i, r in ipairs(running) do
    while process.alive(r.pid) and system.monotime() < deadline do system.sleep(0.05) end
    if process.alive(r.pid) then
      os.execute("kill -KILL " .. r.pid)
      error("worker " .. i .. " still running after " .. limit .. " s", 2)
    end
    local out = process.read_file(r.out)
    local ok, doc = pcall(cjson.decode, out:match("[^\n]+") or "")
    if not (ok and type(doc) == "table") then error("worker " .. i .. ": " .. out .. process.read_file(r.err), 2) end
    doc.stderr = process.read_file(r.err)
    doc.took = system.monotime() - r.started
    results[i] = doc
    os.remove(r.out)
    os.remove(r.err)
  end
  return results
end

--- quota_run.count_lines(text, plain) --> how many lines hold plain
function quota_run.count_lines(text, plain)
  local n = 0
  for line in text:gmatch("[^\n]+") do
    if line:find(plain, 1, true) then n = n + 1 end
  end
  return n
end

return quota_run
