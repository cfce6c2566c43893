-- Where the AccessKey comes from, in the order of the official credential chain:
-- explicit options, environment variables, the CLI's ~/.aliyun/config.json, the INI file
-- ~/.alibabacloud/credentials, and the ECS instance's RAM role through the metadata
-- service. A provider's get() returns the current credentials and refreshes expiring ones
-- before they expire, so a long-lived client (or a batch) goes on across the refresh.
-- No error message or tostring() ever contains a secret.
--
-- HTTP (the metadata service) goes through the `fetch` a client passes to get(), its
-- transport's: inside nginx, nginx's own non-blocking machinery. A provider asked
-- without one (outside any client) fetches with libcurl.
local cjson = require "cjson.safe"
local limits = require "rrpc.limits"

local credentials = {}

local DEFAULT_METADATA = limits.METADATA_ENDPOINT
local METADATA_CONNECT_MS, METADATA_TIMEOUT_MS = limits.METADATA_CONNECT_MS, limits.METADATA_TIMEOUT_MS
local METADATA_TOKEN_TTL_S = limits.METADATA_TOKEN_TTL_S
-- Refresh when less than this is left: a fifth of the lifetime, at most 3 minutes.
local REFRESH_FRACTION, REFRESH_AT_MOST_S = 0.2, 180
-- The clock (os.time) counts whole seconds, the issuer's expiry is exact: one second more,
-- so that a call signed just before the refresh point is not already past the expiry.
local CLOCK_STEP_S = 1

local Provider = {}
Provider.__index = Provider

function Provider:__tostring()
  return ("rrpc.credentials (%s)"):format(self.source)
end

--- credentials.provider(source, fetch, clock) --> provider
-- Your own source: fetch(http) returns { access_key_id, access_key_secret, security_token,
-- expiration = epoch seconds or nil } or nil, err; clock (default os.time) tells the time.
-- http(method, url, headers, body, timeout_ms) --> status, headers, body | nil, err is
-- the client's transport, for a source that asks a service.
function credentials.provider(source, fetch, clock)
  return setmetatable({ source = source, fetch = fetch, clock = clock or os.time }, Provider)
end
local new_provider = credentials.provider

-- "2026-11-27T04:00:00Z" -> seconds since the epoch (UTC), or nil.
local function parse_utc(text)
  local y, mo, d, h, mi, s = tostring(text):match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days from civil (Howard Hinnant's algorithm), free of the local time zone
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (mo + (mo > 2 and -3 or 9)) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
end
credentials.parse_utc = parse_utc

-- Outside any client: a libcurl session of its own, made on first use.
local standalone_http
local function libcurl_http(...)
  if not standalone_http then
    local curl = require "rrpc.transport.curl"
    local state = assert(curl.open {
      connect_timeout = METADATA_CONNECT_MS, idle_timeout = limits.IDLE_TIMEOUT.default,
      max_response_bytes = limits.MAX_RESPONSE_BYTES.default,
      max_response_memory = limits.MAX_RESPONSE_MEMORY.default,
      receive_buffer_bytes = limits.RECEIVE_BUFFER_BYTES, verify = true,
    })
    standalone_http = function(...) return curl.fetch(state, ...) end
  end
  return standalone_http(...)
end

--- provider:get([http]) --> { access_key_id, access_key_secret, security_token, expiration } | nil, err
-- Cached until close to `expiration`; a failed refresh keeps credentials that are still
-- valid. http: the client's transport (see credentials.provider), libcurl without one.
function Provider:get(http)
  local c = self.cached
  if c and not c.expiration then return c end -- static, or never expire: no clock to read
  local now = self.clock()
  if c and now < c.refresh_at then return c end
  local fresh, err = self.fetch(http or libcurl_http)
  if not fresh then
    if c and now < c.expiration then return c end
    return nil, err
  end
  if fresh.expiration then
    local left = fresh.expiration - now
    fresh.refresh_at = fresh.expiration - math.min(REFRESH_AT_MOST_S, left * REFRESH_FRACTION) - CLOCK_STEP_S
  end
  self.cached = fresh
  return fresh
end

local function check_pair(where, id, secret)
  if (id == nil or id == "") ~= (secret == nil or secret == "") then
    return nil, ("%s has %s but not %s"):format(where,
      (id and id ~= "") and "an AccessKey ID" or "an AccessKey secret",
      (id and id ~= "") and "its secret" or "its ID")
  end
  return id ~= nil and id ~= ""
end

--- credentials.static{ access_key_id=, access_key_secret=, security_token= } --> provider
function credentials.static(c, source)
  local fixed = { access_key_id = c.access_key_id, access_key_secret = c.access_key_secret,
                  security_token = c.security_token }
  local provider = new_provider(source or "options", function() return fixed end)
  provider.cached = fixed -- nothing to fetch: known from the start
  return provider
end

--- credentials.environment(getenv) --> provider | nil (not set) | nil, err (half set)
-- ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET, ALIBABA_CLOUD_SECURITY_TOKEN
function credentials.environment(getenv)
  getenv = getenv or os.getenv
  local id, secret = getenv("ALIBABA_CLOUD_ACCESS_KEY_ID"), getenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
  local present, err = check_pair("the environment (ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET)", id, secret)
  if not present then return nil, err end
  return credentials.static({ access_key_id = id, access_key_secret = secret,
                              security_token = getenv("ALIBABA_CLOUD_SECURITY_TOKEN") }, "environment")
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return text
end

-- The instance metadata service (IMDSv2 style: a session token first).
local function metadata_get(http, base, path, token)
  local status, err, body = http("GET", base .. path, { ["X-aliyun-ecs-metadata-token"] = token }, "",
                                 METADATA_TIMEOUT_MS)
  if not status then return nil, ("%s: %s (%s)"):format(path, err.message, err.code) end
  if status ~= 200 then return nil, ("%s answered HTTP %d"):format(path, status) end
  return body
end

--- credentials.ecs_ram_role{ role_name = nil (asks the service), metadata_endpoint = } --> provider
function credentials.ecs_ram_role(opts)
  opts = opts or {}
  local base = (opts.metadata_endpoint or DEFAULT_METADATA):gsub("/$", "")
  local role = opts.role_name
  local token, token_expires = nil, 0
  local source = ("ECS RAM role %s via %s"):format(role or "(from the instance)", base)
  return new_provider(source, function(http)
    local function fail(why) return nil, ("ECS metadata at %s: %s"):format(base, why) end
    if os.time() >= token_expires then
      local status, err, body = http("PUT", base .. "/latest/api/token",
        { ["X-aliyun-ecs-metadata-token-ttl-seconds"] = tostring(METADATA_TOKEN_TTL_S) }, "", METADATA_TIMEOUT_MS)
      if not status then return fail(("token: %s (%s)"):format(err.message, err.code)) end
      if status ~= 200 then return fail(("token: HTTP %d"):format(status)) end
      token, token_expires = body, os.time() + METADATA_TOKEN_TTL_S - 60
    end
    if not role then
      local list, err = metadata_get(http, base, "/latest/meta-data/ram/security-credentials/", token)
      if not list then return fail(err) end
      role = list:match("^%s*([^%s]+)")
      if not role then return fail("the instance has no RAM role") end
    end
    local body, err = metadata_get(http, base, "/latest/meta-data/ram/security-credentials/" .. role, token)
    if not body then return fail(err) end
    local doc = cjson.decode(body)
    if type(doc) ~= "table" or doc.Code ~= "Success" or type(doc.AccessKeyId) ~= "string"
       or type(doc.AccessKeySecret) ~= "string" or type(doc.SecurityToken) ~= "string" then
      return fail(("credentials of role %s: not a successful credentials document"):format(role))
    end
    local expiration = parse_utc(doc.Expiration)
    if not expiration then
      return fail(("credentials of role %s: Expiration %s is not YYYY-MM-DDThh:mm:ssZ"):format(role,
        tostring(doc.Expiration)))
    end
    return { access_key_id = doc.AccessKeyId, access_key_secret = doc.AccessKeySecret,
             security_token = doc.SecurityToken, expiration = expiration }
  end)
end

-- A profile's fields, by role (mode, id, secret, token, role): strings or nil (absent or
-- JSON null). A number or anything else is an error naming the file, the profile and the
-- field, never the value.
local function profile_fields(where, p, fields)
  local values = {}
  for _, role in ipairs { "mode", "id", "secret", "token", "role" } do
    local name = fields[role]
    local value = p[name]
    if value == cjson.null then value = nil end
    if value ~= nil and type(value) ~= "string" then
      return nil, ("%s: %s must be a string, got %s"):format(where, name, type(value))
    end
    values[role] = value
  end
  return values
end

local function profile_provider(where, p, fields, opts)
  local v, why = profile_fields(where, p, fields)
  if not v then return nil, why end
  local mode = v.mode
  if fields.ak_modes[mode] then
    local present, err = check_pair(where, v.id, v.secret)
    if not present then return nil, err or (where .. " has no AccessKey") end
    if fields.token_modes[mode] and not v.token then
      return nil, where .. " is an STS profile without a token (" .. fields.token .. ")"
    end
    return credentials.static({ access_key_id = v.id, access_key_secret = v.secret,
                                security_token = fields.token_modes[mode] and v.token or nil }, where)
  elseif fields.role_modes[mode] then
    return credentials.ecs_ram_role { role_name = v.role, metadata_endpoint = opts.metadata_endpoint }
  end
  return nil, ("%s: mode %s is not supported (use %s)"):format(where, tostring(mode), fields.supported)
end

--- credentials.cli_profile{ profile=, path= } --> provider | nil (no file or profile) | nil, err
-- The CLI's ~/.aliyun/config.json: modes AK, StsToken, EcsRamRole.
function credentials.cli_profile(opts)
  local path = opts.path
  local text = read_file(path)
  if not text then return nil end
  local doc = cjson.decode(text)
  if type(doc) ~= "table" or type(doc.profiles) ~= "table" then
    return nil, ("%s: not a CLI configuration (JSON with a \"profiles\" array)"):format(path)
  end
  if doc.current ~= nil and doc.current ~= cjson.null and type(doc.current) ~= "string" then
    return nil, ("%s: current must be a string, got %s"):format(path, type(doc.current))
  end
  local name = opts.profile or (doc.current ~= cjson.null and doc.current) or "default"
  for _, p in ipairs(doc.profiles) do
    if type(p) == "table" and p.name == name then
      return profile_provider(("profile %s of %s"):format(name, path), p, {
        mode = "mode", id = "access_key_id", secret = "access_key_secret", token = "sts_token",
        role = "ram_role_name", ak_modes = { AK = true, StsToken = true }, token_modes = { StsToken = true },
        role_modes = { EcsRamRole = true }, supported = "AK, StsToken or EcsRamRole",
      }, opts)
    end
  end
  return nil
end

-- A small INI reader: [section] and key = value lines, ; and # comments.
local function parse_ini(text, path)
  local sections, current = {}, nil
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    line = line:gsub("\r$", ""):gsub("^%s+", ""):gsub("%s+$", "")
    if line ~= "" and not line:find("^[;#]") then
      local section = line:match("^%[%s*([^%]]-)%s*%]$")
      if section then
        current = {}
        sections[section] = current
      else
        local key, value = line:match("^([%w_%.%-]+)%s*=%s*(.-)$")
        if not key or not current then
          return nil, ("%s line %d: expected [section] or key = value"):format(path, n)
        end
        current[key] = value
      end
    end
  end
  return sections
end

--- credentials.ini_file{ profile=, path= } --> provider | nil | nil, err
-- ~/.alibabacloud/credentials: type = access_key | ecs_ram_role.
function credentials.ini_file(opts)
  local text = read_file(opts.path)
  if not text then return nil end
  local sections, err = parse_ini(text, opts.path)
  if not sections then return nil, err end
  local name = opts.profile or "default"
  local section = sections[name]
  if not section then return nil end
  return profile_provider(("section [%s] of %s"):format(name, opts.path), section, {
    mode = "type", id = "access_key_id", secret = "access_key_secret", token = "security_token",
    role = "role_name", ak_modes = { access_key = true, sts = true }, token_modes = { sts = true },
    role_modes = { ecs_ram_role = true }, supported = "access_key, sts or ecs_ram_role",
  }, opts)
end

--- credentials.chain{ profile=, metadata_endpoint=, getenv=, home=, fetch= } --> provider | nil, err
-- The first source that has credentials wins; the error lists where it looked. fetch:
-- the client's transport, to ask the metadata service whether the instance has a role.
function credentials.chain(opts)
  opts = opts or {}
  local getenv = opts.getenv or os.getenv
  local home = opts.home or getenv("HOME") or ""
  local profile = opts.profile or getenv("ALIBABA_CLOUD_PROFILE")
  local looked = {}

  local provider, err = credentials.environment(getenv)
  if provider or err then return provider, err end
  looked[#looked + 1] = "environment (ALIBABA_CLOUD_ACCESS_KEY_ID)"

  local cli_path = home .. "/.aliyun/config.json"
  provider, err = credentials.cli_profile { path = cli_path, profile = profile,
                                            metadata_endpoint = opts.metadata_endpoint }
  if provider or err then return provider, err end
  looked[#looked + 1] = cli_path .. (profile and (" (profile " .. profile .. ")") or "")

  local ini_path = getenv("ALIBABA_CLOUD_CREDENTIALS_FILE") or (home .. "/.alibabacloud/credentials")
  provider, err = credentials.ini_file { path = ini_path, profile = profile,
                                         metadata_endpoint = opts.metadata_endpoint }
  if provider or err then return provider, err end
  looked[#looked + 1] = ini_path .. (profile and (" [" .. profile .. "]") or "")

  if getenv("ALIBABA_CLOUD_ECS_METADATA_DISABLED") ~= "true" then
    provider = credentials.ecs_ram_role { role_name = getenv("ALIBABA_CLOUD_ECS_METADATA"),
                                          metadata_endpoint = opts.metadata_endpoint }
    local c, why = provider:get(opts.fetch)
    if c then return provider end
    looked[#looked + 1] = why
  else
    looked[#looked + 1] = "ECS metadata (disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED)"
  end
  return nil, "no credentials found; looked in: " .. table.concat(looked, "; ")
end

credentials.is_provider = function(value) return getmetatable(value) == Provider end

return credentials
