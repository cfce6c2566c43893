-- A process that calls the emulator for a while under a quota, for the specs of
-- rrpc.quota and `make bench`: a batch (rrpc.each) or single calls (client:rrpc), one
-- after another. Prints one JSON line: what it sent and what the quota did.
--
--   <lua> spec/support/quota_worker.lua MODE ENDPOINT KEY SECRET QUOTA SECONDS [DEVICE] [CONCURRENCY]
--     MODE: batch | single; QUOTA: a JSON object, the options of rrpc.quota.redis (or
--     {"process": {...}} for rrpc.quota.process)
local rrpc = require "rrpc"
local core = require "rrpc.core"
local cjson = require "cjson"

local mode, endpoint, key, secret, quota_json, seconds, device, concurrency = (table.unpack or unpack)(arg, 1)
seconds = tonumber(seconds)
local quota_opts = cjson.decode(quota_json)
local q
if quota_opts.process then
  q = rrpc.quota.process(quota_opts.process)
else
  q = rrpc.quota.redis(quota_opts)
end
local client = rrpc.new { endpoint = endpoint, access_key_id = key, access_key_secret = secret, quota = q,
                          max_quota_wait = 5000 }
local started = core.monotime()
local deadline = started + seconds
local sent, ok, codes, slowest = 0, 0, {}, 0

local function count(res, err)
  if res then ok = ok + 1 end
  local code = res and "SUCCESS" or err.code
  codes[code] = (codes[code] or 0) + 1
end

if mode == "batch" then
  local function requests()
    if core.monotime() < deadline then
      sent = sent + 1
      return { product_key = "a1RRpcDemo", device_name = device or "echo", payload = "q" .. sent }
    end
  end
  for _, res, err in rrpc.each(client, requests, { concurrency = tonumber(concurrency) or 100, qps = 1000000,
                                                 retry = false }) do
    count(res, err)
  end
else
  while core.monotime() < deadline do
    sent = sent + 1
    local t = core.monotime()
    local res, err = client:rrpc { product_key = "a1RRpcDemo", device_name = device or "echo", payload = "s" .. sent }
    slowest = math.max(slowest, core.monotime() - t)
    count(res, err)
  end
end
local stats = q:stats()
local state, why = q:state()
client:close()
q:close()
io.write(cjson.encode { mode = mode, sent = sent, ok = ok, codes = codes, wall_s = core.monotime() - started,
                        slowest_s = slowest, stats = stats, state = state, why = why or cjson.null }, "\n")
