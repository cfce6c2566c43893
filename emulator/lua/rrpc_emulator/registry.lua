-- The registry of access keys, STS keys, RAM roles, instances, products and
-- devices (--devices FILE).
-- Loaded and checked once when nginx starts: any problem stops start-up with a
-- message naming the file and the offending entry.
local cjson = require "cjson.safe"
local devices = require "rrpc_emulator.devices"
local hostile = require "rrpc_emulator.hostile"
local latency = require "rrpc_emulator.latency"
local sign = require "rrpc_emulator.sign"

local registry = {}

local function problem(path, where, what)
  error(string.format("%s: %s: %s", path, where, what), 0)
end

local function is_object(value)
  if type(value) ~= "table" then
    return false
  end
  for key in pairs(value) do
    if type(key) ~= "string" then
      return false
    end
  end
  return true
end

local function is_array(value)
  if type(value) ~= "table" then
    return false
  end
  local count = 0
  for _ in pairs(value) do
    count = count + 1
  end
  return count == #value
end

local function is_integer(value)
  return type(value) == "number" and value == math.floor(value)
end

-- Checks `object` against `fields` (name -> {check, description, required})
-- and rejects unknown names, so a typo in the file is reported, not ignored.
local function check_fields(path, where, object, fields)
  if not is_object(object) then
    problem(path, where, "must be a JSON object")
  end
  for name, value in pairs(object) do
    local field = fields[name]
    if not field then
      problem(path, where .. "." .. name, "unknown field")
    end
    if not field.check(value) then
      problem(path, where .. "." .. name, "must be " .. field.description)
    end
  end
  for name, field in pairs(fields) do
    if field.required and object[name] == nil then
      problem(path, where .. "." .. name, "is required")
    end
  end
end

local function non_negative_number(value)
  return type(value) == "number" and value >= 0 and value < math.huge
end

local function non_empty_string(value)
  return type(value) == "string" and value ~= ""
end

local function boolean(value)
  return type(value) == "boolean"
end

local function one_of(set)
  return function(value)
    return set[value] ~= nil
  end
end

local function names_of(set)
  local names = {}
  for name in pairs(set) do
    names[#names + 1] = name
  end
  table.sort(names)
  return table.concat(names, ", ")
end

local TOP_FIELDS = {
  access_keys = { check = is_object, description = "an object", required = true },
  sts_keys = { check = is_object, description = "an object" },
  ram_roles = { check = is_object, description = "an object" },
  instances = { check = is_array, description = "an array of instance ids" },
  products = { check = is_object, description = "an object", required = true },
}

local ACCESS_KEY_FIELDS = {
  secret = { check = non_empty_string, description = "a non-empty string", required = true },
  inactive = { check = boolean, description = "true or false" },
  clock_offset_s = { check = is_integer, description = "an integer (seconds)" },
  qps = {
    check = function(value) return is_integer(value) and value >= 1 end,
    description = "a positive integer (authenticated calls per second)",
  },
}

local STS_KEY_FIELDS = {
  secret = { check = non_empty_string, description = "a non-empty string", required = true },
  token = { check = non_empty_string, description = "a non-empty string", required = true },
  expires = {
    check = function(value) return type(value) == "string" and sign.parse_timestamp(value) ~= nil end,
    description = 'a UTC time "YYYY-MM-DDThh:mm:ssZ"',
    required = true,
  },
}

local RAM_ROLE_FIELDS = {
  ttl_s = {
    check = function(value) return is_integer(value) and value >= 1 end,
    description = "a positive integer (seconds the credentials of each fetch are valid)",
    required = true,
  },
}

local PRODUCT_FIELDS = {
  instance_id = { check = non_empty_string, description = "a non-empty string" },
  devices = { check = is_object, description = "an object", required = true },
}

local DEVICE_FIELDS = {
  behaviour = {
    check = one_of(devices.behaviours),
    description = "one of " .. names_of(devices.behaviours),
    required = true,
  },
  transform = { check = one_of(devices.transforms), description = "one of " .. names_of(devices.transforms) },
  field = { check = one_of(hostile.wrong_types), description = "one of " .. names_of(hostile.wrong_types) },
  latency_ms = {
    check = function(value) return is_integer(value) and value >= 0 end,
    description = "a non-negative integer",
  },
  refuse_ms = {
    check = function(value) return is_integer(value) and value >= 0 and value <= 600000 end,
    description = "an integer from 0 to 600000 (ms the vanish listener refuses connects)",
  },
  error_style = { check = boolean, description = "true or false" },
  active = { check = boolean, description = "true or false" },
  secret = { check = non_empty_string, description = "a non-empty string (the DeviceSecret)" },
  latency = { check = is_object, description = 'an object such as {"dist": "fixed", "ms": 200}' },
  fault_rate = {
    check = function(value) return type(value) == "number" and value >= 0 and value <= 1 end,
    description = "a probability from 0 to 1",
  },
  faults = {
    check = function(value) return is_array(value) and #value > 0 end,
    description = "a non-empty array of fault names",
  },
}

-- {"dist": <name>, <that distribution's parameters>}: each one required, no others.
local function check_latency(path, where, spec)
  local distribution = latency.distributions[spec.dist]
  if not distribution then
    problem(path, where .. ".dist", "must be one of " .. names_of(latency.distributions))
  end
  local takes = 'dist "' .. spec.dist .. '" takes ' .. table.concat(distribution.parameters, ", ")
  local is_parameter = {}
  for _, name in ipairs(distribution.parameters) do
    is_parameter[name] = true
    if spec[name] == nil then
      problem(path, where .. "." .. name, "is required: " .. takes)
    end
  end
  for name, value in pairs(spec) do
    if name ~= "dist" and not is_parameter[name] then
      problem(path, where .. "." .. name, "unknown field: " .. takes)
    end
    if is_parameter[name] and not non_negative_number(value) then
      problem(path, where .. "." .. name, "must be a non-negative number (milliseconds)")
    end
  end
  if spec.dist == "uniform" and spec.min_ms > spec.max_ms then
    problem(path, where .. ".min_ms", "must not exceed max_ms")
  end
end

local function check_faults(path, where, faults)
  for i, name in ipairs(faults) do
    if not devices.fault_behaviours[name] then
      problem(path, where .. "[" .. i .. "]", "must be one of " .. names_of(devices.fault_behaviours))
    end
  end
end

-- The platform's characters for DeviceNames (and more than it allows in ProductKeys).
local MQTT_NAME = "^[%w%-_@.:]+$"

local function check_device(path, where, device)
  check_fields(path, where, device, DEVICE_FIELDS)
  local behaviour = device.behaviour
  if (behaviour == "transform") ~= (device.transform ~= nil) then
    problem(path, where .. ".transform", 'is required with behaviour "transform" and only there')
  end
  if (behaviour == "wrong_type") ~= (device.field ~= nil) then
    problem(path, where .. ".field", 'is required with behaviour "wrong_type" and only there')
  end
  if (behaviour == "vanish") ~= (device.refuse_ms ~= nil) then
    problem(path, where .. ".refuse_ms", 'is required with behaviour "vanish" and only there')
  end
  if (behaviour == "mqtt") ~= (device.secret ~= nil) then
    problem(path, where .. ".secret", 'is required with behaviour "mqtt" and only there')
  end
  if (behaviour == "slow") ~= (device.latency_ms ~= nil) then
    problem(path, where .. ".latency_ms", 'is required with behaviour "slow" and only there')
  end
  if device.error_style ~= nil and not devices.state_behaviours[behaviour] then
    problem(path, where .. ".error_style", "only applies to behaviours " .. names_of(devices.state_behaviours))
  end
  if device.latency ~= nil then
    if devices.timed_behaviours[behaviour] then
      problem(path, where .. ".latency", "does not apply to behaviours " .. names_of(devices.timed_behaviours)
        .. ", which set their own timing")
    end
    check_latency(path, where .. ".latency", device.latency)
  end
  if device.faults ~= nil then
    if device.fault_rate == nil then
      problem(path, where .. ".faults", "needs a fault_rate")
    end
    check_faults(path, where .. ".faults", device.faults)
  end
end

-- Static STS keys: "STS." ids, like the platform's, that no access key has;
-- `expires` becomes epoch seconds.
local function load_sts_keys(path, sts_keys, access_keys)
  for id, key in pairs(sts_keys) do
    local where = "sts_keys." .. id
    check_fields(path, where, key, STS_KEY_FIELDS)
    if id:sub(1, 4) ~= "STS." or access_keys[id] then
      problem(path, where, 'must start with "STS." and not be an access key')
    end
    key.expires = sign.parse_timestamp(key.expires)
  end
  return sts_keys
end

-- RAM role names end the metadata service's URL path, so they are one path segment.
local function load_ram_roles(path, ram_roles)
  for name, role in pairs(ram_roles) do
    local where = "ram_roles." .. name
    if not name:find("^[%w.%-]+$") then
      problem(path, where, "a role name must have letters, digits, periods and hyphens only")
    end
    check_fields(path, where, role, RAM_ROLE_FIELDS)
  end
  return ram_roles
end

-- Returns { access_keys = {id -> key}, sts_keys = {id -> {secret, token, expires (epoch)}},
-- ram_roles = {name -> {ttl_s}}, instances = {id -> true}, products = {key -> product} }.
function registry.load(path)
  local file, open_err = io.open(path, "rb")
  if not file then
    problem(path, "cannot open", open_err)
  end
  local text = file:read("*a")
  file:close()
  local data, decode_err = cjson.decode(text)
  if data == nil then
    problem(path, "invalid JSON", decode_err)
  end

  check_fields(path, "(top level)", data, TOP_FIELDS)
  for id, key in pairs(data.access_keys) do
    check_fields(path, "access_keys." .. id, key, ACCESS_KEY_FIELDS)
  end
  local sts_keys = load_sts_keys(path, data.sts_keys or {}, data.access_keys)
  local ram_roles = load_ram_roles(path, data.ram_roles or {})
  local instances = {}
  for i, id in ipairs(data.instances or {}) do
    if not non_empty_string(id) then
      problem(path, "instances[" .. i .. "]", "must be a non-empty string")
    end
    instances[id] = true
  end
  for product_key, product in pairs(data.products) do
    local where = "products." .. product_key
    check_fields(path, where, product, PRODUCT_FIELDS)
    if product.instance_id and not instances[product.instance_id] then
      problem(path, where .. ".instance_id", "is not listed in instances")
    end
    for device_name, device in pairs(product.devices) do
      check_device(path, where .. ".devices." .. device_name, device)
      -- the names of a real device make its topics and its "<dn>&<pk>" MQTT user name
      if device.behaviour == "mqtt" and not (product_key:find(MQTT_NAME) and device_name:find(MQTT_NAME)) then
        problem(path, where .. ".devices." .. device_name,
          "a device with behaviour \"mqtt\" needs a ProductKey and DeviceName of letters, digits and -_@.: only")
      end
    end
  end

  return {
    access_keys = data.access_keys,
    sts_keys = sts_keys,
    ram_roles = ram_roles,
    instances = instances,
    products = data.products,
  }
end

return registry
