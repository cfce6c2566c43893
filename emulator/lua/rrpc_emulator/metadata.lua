-- The ECS instance metadata service (http://100.100.100.200 on an ECS instance)
-- in its hardened mode, for the RAM-role credential source: a session token from
-- PUT /latest/api/token is needed to list the instance's RAM roles and to fetch a
-- role's temporary STS credentials. Every answer is text/plain, the credentials'
-- JSON included.
--
-- Tokens, the service's mode (ok, down, slow; set at run time through
-- /__emulator/metadata) and the request counts live in the rrpc_credentials
-- shared dict, so all workers share them.
local cjson = require "cjson"
local sts = require "rrpc_emulator.sts"

local TOKEN_PATH = "/latest/api/token"
local ROLES_PATH = "/latest/meta-data/ram/security-credentials/"
local TOKEN_TTL_HEADER = "x-aliyun-ecs-metadata-token-ttl-seconds"
local TOKEN_HEADER = "x-aliyun-ecs-metadata-token"
local MAX_TOKEN_TTL_S = 21600
local MAX_DELAY_MS = 600000

-- The request counts reported by /__emulator/stats, one per kind of request.
local COUNTED = { "token", "role", "credentials" }

local store = ngx.shared.rrpc_credentials

local metadata = {}

local function iso8601(epoch)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", epoch)
end

local function answer(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "text/plain"
  ngx.print(body)
end

local function single_header(name)
  local value = ngx.req.get_headers(0)[name]
  if type(value) == "table" then
    return nil
  end
  return value
end

-- "ok", "down" or "slow", and the delay of "slow" in milliseconds.
local function current_mode()
  local mode, delay_ms = (store:get("metadata_mode") or "ok 0"):match("^(%a+) (%d+)$")
  return mode, tonumber(delay_ms)
end

local function issue_token()
  if ngx.req.get_method() ~= "PUT" then
    return answer(405, "Method Not Allowed")
  end
  local ttl_text = single_header(TOKEN_TTL_HEADER)
  local ttl_s = ttl_text and ttl_text:find("^%d+$") and tonumber(ttl_text)
  if not ttl_s or ttl_s < 1 or ttl_s > MAX_TOKEN_TTL_S then
    return answer(400, "X-aliyun-ecs-metadata-token-ttl-seconds must be an integer from 1 to " .. MAX_TOKEN_TTL_S)
  end
  local token = sts.random_alphanumeric(56)
  assert(store:set("token\n" .. token, true, ttl_s))
  return answer(200, token)
end

local function has_valid_token()
  local token = single_header(TOKEN_HEADER)
  return token ~= nil and store:get("token\n" .. token) ~= nil
end

-- The fields in the real service's order, pretty-printed like the documented examples.
-- (Built by hand: cjson would escape the "/" of the token and reorder the fields.)
local function credentials_json(credential)
  local fields = {
    { "AccessKeyId", credential.id },
    { "AccessKeySecret", credential.secret },
    { "Expiration", iso8601(credential.expires) },
    { "SecurityToken", credential.token },
    { "LastUpdated", iso8601(credential.issued) },
    { "Code", "Success" },
  }
  local lines = {}
  for i, field in ipairs(fields) do
    lines[i] = '  "' .. field[1] .. '" : "' .. field[2] .. '"'
  end
  return "{\n" .. table.concat(lines, ",\n") .. "\n}"
end

-- Sorted role names, one a line, or nil when there is none (an ECS instance has
-- at most one role: a registry with several lists them all).
local function role_list(registry)
  local names = {}
  for name in pairs(registry.ram_roles) do
    names[#names + 1] = name
  end
  table.sort(names)
  return names[1] and table.concat(names, "\n")
end

-- Every path under /latest/.
function metadata.serve(registry)
  local path = ngx.var.uri
  local kind
  if path == TOKEN_PATH then
    kind = "token"
  elseif path == ROLES_PATH then
    kind = "role"
  elseif path:sub(1, #ROLES_PATH) == ROLES_PATH then
    kind = "credentials"
  end
  if kind then
    assert(store:incr("count\n" .. kind, 1, 0))
  end

  local mode, delay_ms = current_mode()
  if mode == "down" then
    return answer(503, "Service Unavailable")
  end
  if mode == "slow" then
    ngx.sleep(delay_ms / 1000)
  end

  if kind == "token" then
    return issue_token()
  end
  if not kind then
    return answer(404, "Not Found")
  end
  if ngx.req.get_method() ~= "GET" then
    return answer(405, "Method Not Allowed")
  end
  if not has_valid_token() then
    return answer(401, "Unauthorized")
  end
  if kind == "role" then
    local roles = role_list(registry)
    if not roles then
      return answer(404, "Not Found") -- an instance without a RAM role
    end
    return answer(200, roles)
  end
  local role = registry.ram_roles[path:sub(#ROLES_PATH + 1)]
  if not role then
    return answer(404, "Not Found")
  end
  return answer(200, credentials_json(sts.issue(role.ttl_s)))
end

-- The mode and delay asked for by the query of POST /__emulator/metadata, or
-- nil, nil and what is wrong with it.
local function requested_mode(args)
  for name in pairs(args) do
    if name ~= "mode" and name ~= "delay_ms" then
      return nil, nil, "unknown parameter " .. name
    end
  end
  local mode, delay_text = args.mode, args.delay_ms
  if mode ~= "ok" and mode ~= "down" and mode ~= "slow" then
    return nil, nil, "mode must be ok, down or slow"
  end
  if mode ~= "slow" then
    if delay_text ~= nil then
      return nil, nil, "delay_ms applies to mode=slow only"
    end
    return mode, 0
  end
  local delay_ms = type(delay_text) == "string" and delay_text:find("^%d+$") and tonumber(delay_text)
  if not delay_ms or delay_ms > MAX_DELAY_MS then
    return nil, nil, "mode=slow needs delay_ms, an integer from 0 to " .. MAX_DELAY_MS
  end
  return mode, delay_ms
end

-- GET /__emulator/metadata: the mode; POST ...?mode=ok|down|slow[&delay_ms=N]
-- sets it (delay_ms with slow only, and required there). Answers the mode as JSON.
function metadata.configure()
  local method = ngx.req.get_method()
  if method == "POST" then
    local mode, delay_ms, problem = requested_mode(ngx.req.get_uri_args(0))
    if not mode then
      return answer(400, problem)
    end
    assert(store:set("metadata_mode", mode .. " " .. delay_ms))
  elseif method ~= "GET" then
    return ngx.exit(ngx.HTTP_NOT_ALLOWED)
  end
  local mode, delay_ms = current_mode()
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode { mode = mode, delay_ms = delay_ms })
end

-- {token = n, role = n, credentials = n}: requests per kind since the start or
-- the last reset, whatever their answer.
function metadata.counts()
  local counts = {}
  for _, kind in ipairs(COUNTED) do
    counts[kind] = store:get("count\n" .. kind) or 0
  end
  return counts
end

function metadata.reset_counts()
  for _, kind in ipairs(COUNTED) do
    store:delete("count\n" .. kind)
  end
end

return metadata
