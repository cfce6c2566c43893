-- Entry points called from nginx.conf: start-up, the API at "/", the ECS
-- metadata service under /latest/, the health check, the usage statistics, the
-- arrival counts, the metadata service's mode and the 404 for every other path.
local cjson = require "cjson"
local ngx_process = require "ngx.process"
local actions = require "rrpc_emulator.actions"
local arrivals = require "rrpc_emulator.arrivals"
local auth = require "rrpc_emulator.auth"
local broker = require "rrpc_emulator.broker"
local metadata = require "rrpc_emulator.metadata"
local registry_loader = require "rrpc_emulator.registry"
local reply = require "rrpc_emulator.reply"
local usage = require "rrpc_emulator.usage"
local vanish = require "rrpc_emulator.vanish"

local reject = reply.reject

local handler = {}

local registry

-- Runs in init_by_lua (the master process, at start and at each reload): a bad registry
-- stops nginx. With --vanish-port, the vanish listener's address (vanish.lua); with
-- --mqtt-port, the broker's address and the emulator's credentials there (broker.lua).
local mqtt_broker_pid

function handler.init(devices_path, vanish_host, vanish_port, mqtt)
  registry = registry_loader.load(devices_path)
  vanish.configure(vanish_host, vanish_port)
  if mqtt then
    broker.configure(mqtt.host, mqtt.port, mqtt.user, mqtt.password)
    mqtt_broker_pid = mqtt.broker_pid
  end
end

-- Runs in each worker: without a seed of their own, all workers would draw the
-- same latencies and faults. The first worker of a generation a vanish reload started
-- carries the vanish on.
function handler.init_worker()
  math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
  vanish.init_worker()
  broker.init_worker()
end

-- Adds decoded arguments to `params`; a name given twice is refused rather
-- than guessed at, since client and server could sign different values.
local function add_args(params, args)
  for name, value in pairs(args) do
    if type(value) == "table" or params[name] ~= nil then
      reject(400, "InvalidParameter", "The parameter " .. reply.printable(name) .. " is given more than once.")
    end
    params[name] = value == true and "" or value -- a bare "name" means an empty value
  end
  return params
end

local function is_form(content_type)
  return content_type ~= nil and content_type:lower():find("^%s*application/x%-www%-form%-urlencoded") ~= nil
end

-- {method, query (URI args), params (URI + form args), headers (lower-case
-- names), body (raw bytes)}.
local function read_request()
  local method = ngx.req.get_method()
  if method ~= "GET" and method ~= "POST" then
    reject(403, "UnsupportedHTTPMethod", "This http method is not supported.")
  end
  ngx.req.read_body()
  -- client_body_buffer_size equals client_max_body_size, so bodies stay in memory.
  local body = ngx.req.get_body_data()
  if not body and ngx.req.get_body_file() then
    error("request body was buffered to a file")
  end
  local query = add_args({}, ngx.req.get_uri_args(0))
  local params = add_args({}, query)
  if method == "POST" and is_form(ngx.var.content_type) then
    add_args(params, assert(ngx.req.get_post_args(0)))
  end
  return {
    method = method,
    query = query,
    params = params,
    headers = ngx.req.get_headers(0),
    body = body or "",
  }
end

-- Sets an access-log field ($rrpc_<field>) right away, so that it shows even
-- when the client gives up on a sleeping handler.
local function note(field, value)
  if type(value) == "string" and value ~= "" then
    ngx.var["rrpc_" .. field] = reply.printable(value)
  end
end

-- A V1 request without Format (or with Format=XML) gets XML, as the platform answers it;
-- V3 is answered in JSON.
local function wants_xml(request)
  local format = request.params.Format
  return not request.headers.authorization and (format == nil or format == "" or format:upper() == "XML")
end

local function process_api()
  local request = read_request()
  ngx.ctx.rrpc_xml = wants_xml(request)
  -- before any check: a copy with a used nonce is refused, but it did arrive
  local arrival = arrivals.count(request)
  if arrival then
    ngx.var.rrpc_arrival = arrival
  end
  note("pk", request.params.ProductKey)
  note("dn", request.params.DeviceName)
  local action, key_id, key = auth.authenticate(request, registry, actions, note)
  usage.admit(key_id, key)
  return actions[action](request.params, registry)
end

local function reject_unknown_path()
  reject(404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method.")
end

-- Turns a thrown error into an outcome: rejections as they are, anything else
-- (an emulator bug) into a logged InternalError rather than nginx's HTML 500.
local function outcome_of_error(err)
  if reply.is_rejection(err) then
    return reply.from_rejection(err)
  end
  ngx.log(ngx.ERR, debug.traceback(tostring(err), 2))
  return reply.from_rejection({ status = 500, code = "InternalError",
                                message = "The emulator failed: see its error log." })
end

local function serve(respond)
  local request_id = reply.request_id()
  local _, outcome = xpcall(respond, outcome_of_error)
  ngx.var.rrpc_code = outcome.code
  return reply.send(outcome, request_id)
end

function handler.api()
  return serve(process_api)
end

function handler.unknown_path()
  return serve(reject_unknown_path)
end

function handler.metadata()
  return metadata.serve(registry)
end

function handler.metadata_mode()
  return metadata.configure()
end

-- The master PID lets a test harness tell its own emulator from another one
-- that already listens on the port it tried. With --vanish-port, x-emulator-vanish says
-- whether the vanish listener is back ("listening") or a vanish is under way. With
-- --mqtt-port, x-emulator-broker-pid is the broker's PID and x-emulator-mqtt says how many
-- workers have their connection to it up ("2/2").
function handler.health()
  ngx.header["Content-Type"] = "text/plain"
  ngx.header["x-emulator-pid"] = ngx_process.get_master_pid()
  if vanish.enabled() then
    ngx.header["x-emulator-vanish"] = vanish.phase()
  end
  if broker.enabled() then
    ngx.header["x-emulator-broker-pid"] = mqtt_broker_pid
    ngx.header["x-emulator-mqtt"] = broker.connected_workers() .. "/" .. ngx.worker.count()
  end
  ngx.print("ok")
end

-- GET: the per-AccessKey counts (usage.lua) and the metadata service's request
-- counts as JSON; POST .../reset clears both.
function handler.stats()
  if ngx.req.get_method() ~= "GET" then
    return ngx.exit(ngx.HTTP_NOT_ALLOWED)
  end
  local report = usage.report(registry)
  report.metadata = metadata.counts()
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(report))
end

-- GET: how many times each RRpc request arrived (arrivals.lua); POST .../reset forgets.
function handler.arrivals()
  return arrivals.serve(false)
end

function handler.reset_arrivals()
  return arrivals.serve(true)
end

function handler.reset_stats()
  if ngx.req.get_method() ~= "POST" then
    return ngx.exit(ngx.HTTP_NOT_ALLOWED)
  end
  usage.reset()
  metadata.reset_counts()
  return ngx.exit(ngx.HTTP_NO_CONTENT)
end

return handler
