-- What the commands share: failures the user can act on (one line and an exit status),
-- the client they call through, and the names the user knows options by.
local rrpc = require "rrpc"
local output = require "rrpc.cli.output"

local common = {}

local EXIT = output.EXIT

-- A failure the user can act on: one line on standard error and an exit status.
local Failure = {}
Failure.__index = Failure
common.Failure = Failure

function common.fail(status, message)
  error(setmetatable({ status = status, message = message }, Failure), 0)
end

function common.is_failure(value)
  return getmetatable(value) == Failure
end

--- common.refusal(message) --> what a library error raised for a bad argument says,
-- "bad argument #1 to 'new' (option 'region' must ...)" --> "option 'region' must ...", or nil
function common.refusal(message)
  message = tostring(message):gsub("^[^:\n]*:%d+: ", "")
  return message:match("^bad argument #%d+ to '[^']*' %((.*)%)$")
end

--- common.renamed(message, names) --> the library's "option 'timeout' ..." as the user knows
-- it: names maps the library's option names to the command line's ("option '--timeout'")
function common.renamed(message, names)
  return (message:gsub("^option '([%w_]+)'", function(name)
    return names[name] or ("option '" .. name .. "'")
  end))
end

-- The command line's names of the library's options, where they came from: the option
-- given, else the environment variable.
function common.option_names(opts, payload_label)
  local function named(option, variable)
    if variable and not opts[option:gsub("^%-%-", ""):gsub("%-", "_")] then
      return "environment variable " .. variable
    end
    return "option '" .. option .. "'"
  end
  return {
    timeout = "option '--timeout'", topic = "option '--topic'", product_key = "option '--product-key'",
    device_name = "option '--device'", payload = payload_label or "the payload",
    region = named("--region", "RRPC_REGION"), endpoint = named("--endpoint", "RRPC_ENDPOINT"),
    iot_instance_id = named("--instance", "RRPC_IOT_INSTANCE_ID"), ca_file = "option '--ca-file'",
    signature = "option '--signature'", nonce = "option '--nonce'", timestamp = "option '--timestamp'",
    concurrency = "option '--concurrency'", qps = "option '--qps'",
  }
end

--- common.check_request(request, names) -- fails (bad input) with the library's objection
-- to a request, in the command line's names
function common.check_request(request, names)
  local problem = rrpc.check_request(request)
  if problem then common.fail(EXIT.invalid, common.renamed(problem.message, names)) end
end

--- common.retry_policy(retries) --> a policy that sends again up to `retries` times
function common.retry_policy(retries)
  if retries == 0 then return rrpc.retry.none end
  return rrpc.retry.new { max_attempts = retries + 1 }
end

--- common.open_client(opts, env, names) --> client
-- Credentials come only from the library's chain (environment, profile files, ECS role):
-- a secret on the command line would show in ps and in the shell's history.
-- collector: an rrpc.metrics collector fed by the client's calls, or nil.
function common.open_client(opts, env, names, collector)
  local provider, why = rrpc.credentials.chain { profile = opts.profile, getenv = env.getenv }
  if not provider then common.fail(EXIT.auth, why) end
  local options = {
    credentials = provider,
    -- an explicit --region beats the environment's endpoint
    endpoint = opts.endpoint or (not opts.region and env.getenv("RRPC_ENDPOINT")) or nil,
    region = opts.region or env.getenv("RRPC_REGION"),
    iot_instance_id = opts.instance or env.getenv("RRPC_IOT_INSTANCE_ID"),
    signature = opts.signature,
    ca_file = opts.ca_file,
    user_agent = "rrpc-cli",
  }
  local ok, client = pcall(rrpc.new, collector and collector:attach(options) or options)
  if not ok then
    local refusal = common.refusal(client)
    if refusal then common.fail(EXIT.invalid, common.renamed(refusal, names)) end
    error(client, 0)
  end
  return client
end

return common
