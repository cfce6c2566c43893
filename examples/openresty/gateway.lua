-- An HTTP gateway to RRpc, on nginx with its Lua module (rrpc.ngx: no worker ever blocks).
--
--   POST /devices/{product_key}/{device_name}/rrpc[?timeout=ms&topic=/pk/dn/user/x]
--        body: the raw payload      -> 200 with the device's reply as the body
--   POST /products/{product_key}/batch[?timeout=ms&concurrency=n]
--        body: {"devices": ["dn", ...], "payload": "text" | "payload_base64": "..."}
--        -> 200 with {"summary": {...}, "results": [{"device": .., ...}, ...]} in input order
--
-- Outcomes map to statuses: device TIMEOUT 504, OFFLINE/HALFCONN 503, throttling 429
-- (the platform's, or no slot of the shared quota within max_quota_wait) with
-- Retry-After, unknown or inactive device or product 404, bad input 400, anything else
-- 502. Every answer carries X-Rrpc-Request-Id and X-Rrpc-Message-Id when the platform
-- gave them. A client that leaves ends its request (lua_check_client_abort, see
-- nginx.conf.in): nothing more is sent for it.
-- Settings come from the environment: RRPC_ACCESS_KEY_ID and RRPC_ACCESS_KEY_SECRET when
-- set, else the credentials of the official chain (rrpc.new's: ALIBABA_CLOUD_ACCESS_KEY_*,
-- profile files, the ECS RAM role), RRPC_ENDPOINT (the platform's or the emulator's), RRPC_IOT_INSTANCE_ID, RRPC_QPS,
-- RRPC_MAX_QUOTA_WAIT (ms); RRPC_QUOTA_REDIS_URL (redis://[:password@]host[:port][/db]):
-- the quota shared through Redis with every other gateway and process on the same
-- RRPC_QUOTA_REDIS_KEY (default: the AccessKey ID) instead of this nginx's shared dict.
local rrpc_ngx = require "rrpc.ngx"
local cjson = require "cjson.safe"

local gateway = {}

local MAX_PAYLOAD = 256 * 1024
local QPS = tonumber(os.getenv("RRPC_QPS") or "") or 1000 -- the account's RRpc quota
local MAX_QUOTA_WAIT = tonumber(os.getenv("RRPC_MAX_QUOTA_WAIT") or "") -- nil: rrpc.ngx's default
-- A 429 whose error says no retry_after (iot.messagebroker.RateLimit) still says when:
-- the library's first wait for throttling, in whole seconds.
local DEFAULT_RETRY_AFTER_MS = rrpc_ngx.limits.THROTTLE_DELAY.default

local function env(name)
  local value = os.getenv(name)
  if value ~= "" then return value end
end

-- This worker's metrics: counted here, on the call path, with no lock; flushed to the
-- shared dict rrpc_metrics by a timer (gateway.init_worker), from which GET /metrics
-- renders the sum over every worker.
local collector = rrpc_ngx.metrics.new()
local FLUSH_INTERVAL = tonumber(os.getenv("RRPC_METRICS_FLUSH") or "") or 1 -- seconds
local flushed = {}

local function flush_metrics()
  local dict = ngx.shared.rrpc_metrics
  for key, value in pairs(collector:snapshot()) do
    local delta = value - (flushed[key] or 0)
    if delta ~= 0 or flushed[key] == nil then -- a series is shown from its first flush
      local _, err = dict:incr(key, delta, 0)
      if err then ngx.log(ngx.ERR, "gateway: metrics: ", err) else flushed[key] = value end
    end
  end
end

function gateway.init_worker()
  local ok, err = ngx.timer.every(FLUSH_INTERVAL, flush_metrics)
  if not ok then ngx.log(ngx.ERR, "gateway: cannot start the metrics timer: ", err) end
end

-- GET /metrics: every worker's counts, as last flushed (at most FLUSH_INTERVAL old).
function gateway.metrics()
  local dict, series = ngx.shared.rrpc_metrics, {}
  for _, key in ipairs(dict:get_keys(0)) do series[key] = dict:get(key) end
  ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
  ngx.print(rrpc_ngx.metrics.render(series))
end

local REDIS_URL = os.getenv("RRPC_QUOTA_REDIS_URL")
local quota -- this worker's: through Redis when RRPC_QUOTA_REDIS_URL is set
local client -- one per worker, created on first use
function gateway.client()
  if not client then
    if REDIS_URL and REDIS_URL ~= "" then
      quota = rrpc_ngx.quota.redis { url = REDIS_URL, qps = QPS,
        key = env("RRPC_QUOTA_REDIS_KEY") or env("RRPC_ACCESS_KEY_ID") or env("ALIBABA_CLOUD_ACCESS_KEY_ID") }
    end
    client = rrpc_ngx.new(collector:attach {
      access_key_id = env("RRPC_ACCESS_KEY_ID"), -- when absent, the official chain
      access_key_secret = env("RRPC_ACCESS_KEY_SECRET"),
      endpoint = os.getenv("RRPC_ENDPOINT"),
      iot_instance_id = os.getenv("RRPC_IOT_INSTANCE_ID"),
      quota = quota,
      quota_dict = not quota and "rrpc_quota" or nil,
      qps = QPS,
      max_quota_wait = MAX_QUOTA_WAIT,
    })
  end
  return client
end

local function status_of(err)
  if err.code == "UpstreamTimeout" then return 504 end
  if err.code == "ClientClosedRequest" then return 499 end -- nobody is there to read it
  if err.kind == "device" then
    if err.rrpc_code == "TIMEOUT" then return 504 end
    if err.rrpc_code == "OFFLINE" or err.rrpc_code == "HALFCONN" then return 503 end
    return 502
  end
  if err.code:find("^Throttling") or err.code == "iot.messagebroker.RateLimit" then return 429 end
  if err.code == "iot.device.NotExistedDevice" or err.code == "iot.prod.NotExistedProduct"
     or err.code == "iot.device.InactiveDevice" then
    return 404
  end
  if err.kind == "invalid" then return 400 end
  return 502
end

local function error_fields(err)
  return { kind = err.kind, code = err.code, message = err.message, rrpc_code = err.rrpc_code,
           request_id = err.request_id, message_id = err.message_id, delivered = err.delivered,
           retryable = err.retryable, retry_after = err.retry_after, attempts = err.attempts }
end

local function send_json(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(value))
  return ngx.exit(status)
end

local function refuse(status, code, message)
  return send_json(status, { error = { kind = "invalid", code = code, message = message } })
end

-- A query parameter that must be a whole number: the number, nil when absent, or false
-- and the message for a 400.
local function query_integer(query, name)
  local text = query[name]
  if text == nil then return nil end
  if type(text) ~= "string" or not text:match("^%d+$") then
    return false, ("query parameter '%s' must be a whole number, got %s"):format(name,
      type(text) == "string" and ("%q"):format(text) or "it more than once or without a value")
  end
  return tonumber(text)
end

-- The worker's client; without credentials, false and why (answered 503, never signed
-- with a key of the gateway's own).
local function client_or_why()
  local ok, c = pcall(gateway.client)
  if ok then return c end
  return false, tostring(c):gsub("^[^:\n]*:%d+: ", "")
end

local function no_client(why)
  return send_json(503, { error = { kind = "credentials", code = "CredentialsUnavailable", message = why,
                                     delivered = "no", retryable = true } })
end

local function read_body()
  ngx.req.read_body()
  return ngx.req.get_body_data() or ""
end

function gateway.device()
  local product_key, device_name = ngx.var.uri:match("^/devices/([^/]+)/([^/]+)/rrpc$")
  if not product_key then return refuse(404, "NotFound", "POST /devices/{product_key}/{device_name}/rrpc") end
  if ngx.req.get_method() ~= "POST" then return refuse(405, "MethodNotAllowed", "use POST") end
  local query = ngx.req.get_uri_args()
  local payload = read_body()
  if #payload > MAX_PAYLOAD then
    return refuse(400, "PayloadTooLarge", ("payload is %d bytes, more than %d"):format(#payload, MAX_PAYLOAD))
  end
  local timeout, bad = query_integer(query, "timeout")
  if timeout == false then return refuse(400, "InvalidArgument", bad) end
  local request = {
    product_key = product_key, device_name = device_name, payload = payload, timeout = timeout, topic = query.topic,
  }
  local c, why = client_or_why()
  if not c then return no_client(why) end
  local problem = c:check(request)
  if problem then return refuse(400, "InvalidArgument", problem.message) end
  local res, err = c:rrpc(request)
  local outcome = res or err
  ngx.header["X-Rrpc-Request-Id"] = outcome.request_id
  ngx.header["X-Rrpc-Message-Id"] = outcome.message_id
  ngx.header["X-Rrpc-Attempts"] = outcome.attempts
  ngx.header["X-Gateway-Worker-Pid"] = ngx.worker.pid()
  if res then
    ngx.header["Content-Type"] = "application/octet-stream"
    ngx.print(res.payload)
    return ngx.exit(200)
  end
  ngx.header["X-Rrpc-Delivered"] = err.delivered
  local status = status_of(err)
  if err.retry_after or status == 429 then -- whole seconds, rounded up
    ngx.header["Retry-After"] = math.max(1, math.ceil((err.retry_after or DEFAULT_RETRY_AFTER_MS) / 1000))
  end
  return send_json(status, { error = error_fields(err) })
end

function gateway.batch()
  local product_key = ngx.var.uri:match("^/products/([^/]+)/batch$")
  if not product_key then return refuse(404, "NotFound", "POST /products/{product_key}/batch") end
  if ngx.req.get_method() ~= "POST" then return refuse(405, "MethodNotAllowed", "use POST") end
  local query = ngx.req.get_uri_args()
  local body = cjson.decode(read_body())
  if type(body) ~= "table" or type(body.devices) ~= "table" then
    return refuse(400, "InvalidBody", 'body must be JSON {"devices": [...], "payload": "..."}')
  end
  local payload = body.payload
  if body.payload_base64 then payload = rrpc_ngx.b64decode(tostring(body.payload_base64)) end
  if type(payload) ~= "string" then
    return refuse(400, "InvalidBody", "payload (text) or payload_base64 (strict Base64) is required")
  end
  local requests = {}
  for i, device in ipairs(body.devices) do -- a name, or {"device_name": .., "payload": ..}
    requests[i] = type(device) == "string" and { device_name = device } or device
  end
  local timeout, bad = query_integer(query, "timeout")
  if timeout == false then return refuse(400, "InvalidArgument", bad) end
  local concurrency, bad_concurrency = query_integer(query, "concurrency")
  if concurrency == false then return refuse(400, "InvalidArgument", bad_concurrency) end
  local opts = {
    concurrency = concurrency or 100,
    qps = QPS,
    defaults = { product_key = product_key, payload = payload, timeout = timeout },
  }
  local problem = rrpc_ngx.check_batch(opts)
  if problem then return refuse(400, "InvalidArgument", problem.message) end
  local c, why = client_or_why()
  if not c then return no_client(why) end
  local results, summary = rrpc_ngx.batch(c, requests, opts)
  local out = {}
  for i, r in ipairs(results) do
    local device = body.devices[i]
    if r.res then
      out[i] = { device = device, status = 200, payload_base64 = rrpc_ngx.b64encode(r.res.payload),
                 message_id = r.res.message_id, request_id = r.res.request_id, attempts = r.res.attempts }
    else
      out[i] = { device = device, status = status_of(r.err), error = error_fields(r.err) }
    end
  end
  return send_json(200, { summary = summary, results = out })
end

-- 200 "ok", with the master's and this worker's PIDs (to tell our nginx from another).
function gateway.health()
  local pid_file = io.open(ngx.config.prefix() .. "nginx.pid")
  ngx.header["X-Gateway-Master-Pid"] = pid_file and pid_file:read("*l")
  if pid_file then pid_file:close() end
  ngx.header["X-Gateway-Worker-Pid"] = ngx.worker.pid()
  if quota then ngx.header["X-Gateway-Quota"] = (quota:state()) end -- shared | fallback
  ngx.say("ok")
end

return gateway
