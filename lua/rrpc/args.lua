-- The one checker of options tables, for the client, batches, retry policies, rrpc.ngx
-- and the command line. A table of option specs says what each option may be:
--
--   { type = "string" | "integer" | "number" | "boolean" | "table" | "function" | "any",
--     required = true,          -- absent (or "", unless empty = true) is a problem
--     range = { min =, max = }, -- limits.lua's entries fit
--     choices = { "v1", "v3" },
--     check = function(value) --> nil | the whole message }
--
-- args.problem(opts, specs) finds what is wrong without raising: a structured problem
-- { option =, message = } that a batch turns into an outcome. args.check raises it as
-- "bad argument #N to 'fname' (message)", pointing at the caller's line.
local args = {}

-- the globals of the checks every call makes, as upvalues rather than lookups in _ENV
local type, next = type, next

local ARTICLE = { string = "a ", number = "a ", integer = "an ", boolean = "a ", table = "a ",
                  ["function"] = "a " }

function args.is_integer(v)
  return type(v) == "number" and v == v and v % 1 == 0 and v > -2^53 and v < 2^53
end

function args.describe(v)
  return type(v) == "string" and ("%q"):format(v) or tostring(v)
end

local function has_type(value, want)
  if want == "any" then return true end
  if want == "integer" then return args.is_integer(value) end
  return type(value) == want
end

local function is_choice(choices, value)
  for _, choice in ipairs(choices) do
    if choice == value then return true end
  end
  return false
end

-- What is wrong with one option's value (one that is there), or nil.
local function value_problem(name, value, spec)
  local want = spec.type
  if want ~= type(value) and not has_type(value, want) then -- the common case, without a call
    return ("option '%s' must be %s, got %s"):format(name, ARTICLE[spec.type] .. spec.type, type(value))
  end
  local range = spec.range
  if range and (value < range.min or value > range.max) then
    return ("option '%s' must be in %d..%d, got %s"):format(name, range.min, range.max, args.describe(value))
  end
  if spec.choices and not is_choice(spec.choices, value) then
    return ("option '%s' has no choice %s"):format(name, args.describe(value))
  end
  if spec.check then return spec.check(value) end
end

local LUA_TYPES = { string = true, number = true, boolean = true, table = true, ["function"] = true }

-- Each specs table, read once: its options as { name, spec, plain, min, max, checked }
-- sorted by name (list) and by name (named), and how many are required. plain: the Lua
-- type a value needs and nothing else (no range, choices or check); min and max: the
-- range of an integer that needs nothing else; checked: the Lua type of a value that
-- needs that and its check only. Each tells the common case apart with fewer calls.
local prepared_specs = setmetatable({}, { __mode = "k" })

local function prepared(specs)
  local p = prepared_specs[specs]
  if not p then
    local names = {}
    for name in pairs(specs) do names[#names + 1] = name end
    table.sort(names)
    p = { list = {}, named = {}, required = 0 }
    for i, name in ipairs(names) do
      local spec = specs[name]
      local plain = LUA_TYPES[spec.type] and not (spec.range or spec.choices or spec.check) and spec.type
      local range = spec.type == "integer" and not (spec.choices or spec.check) and spec.range
      local checked = LUA_TYPES[spec.type] and spec.check and not (spec.range or spec.choices) and spec.type
      p.list[i] = { name, spec, plain or nil, range and range.min or nil, range and range.max or nil,
                    checked or nil }
      p.named[name] = p.list[i]
      if spec.required then p.required = p.required + 1 end
    end
    prepared_specs[specs] = p
  end
  return p
end

-- Whether opts has nothing wrong, told in one pass over the options it has: the common
-- case, before the ordered search for the problem to report.
local function all_well(opts, p)
  local named, required = p.named, 0
  for name, value in next, opts do
    local entry = named[name]
    if not entry then return false end
    local spec = entry[2]
    if spec.required then
      if value == "" and not spec.empty then return false end
      required = required + 1
    end
    if type(value) ~= entry[3] then
      local min = entry[4]
      local checked = entry[6]
      if min then
        if not (type(value) == "number" and value % 1 == 0 and value >= min and value <= entry[5]) then
          return false
        end
      elseif checked then
        if type(value) ~= checked or spec.check(value) then return false end
      elseif value_problem(name, value, spec) then
        return false
      end
    end
  end
  return required == p.required
end

--- args.problem(opts, specs) --> nil | { option =, message = }
-- Unknown options first, then the values given, then what is missing; each in a stable
-- order (the specs' names, sorted). One pass over the specs finds both of the last two.
function args.problem(opts, specs)
  if type(opts) ~= "table" then
    return { message = "table expected, got " .. type(opts) }
  end
  local p = prepared(specs)
  if all_well(opts, p) then return nil end
  for name in pairs(opts) do
    if not specs[name] then
      return { option = name, message = ("unknown option '%s'"):format(tostring(name)) }
    end
  end
  local list, missing = p.list, nil
  for i = 1, #list do
    local entry = list[i]
    local name, spec = entry[1], entry[2]
    local value = opts[name]
    if value == nil or (value == "" and spec.required and not spec.empty) then -- missing
      if spec.required and not missing then missing = name end
    elseif type(value) ~= entry[3] then
      local message = value_problem(name, value, spec)
      if message then return { option = name, message = message } end
    end
  end
  if missing then
    return { option = missing, message = ("option '%s' is required"):format(missing) }
  end
end

--- args.raise(fname, argn, message, level): "bad argument #argn to 'fname' (message)"
function args.raise(fname, argn, message, level)
  error(("bad argument #%d to '%s' (%s)"):format(argn, fname, message), level + 1)
end

--- args.check(fname, argn, opts, specs, level) -- raises the first problem of opts
function args.check(fname, argn, opts, specs, level)
  local problem = args.problem(opts, specs)
  if problem then args.raise(fname, argn, problem.message, level + 1) end
end

--- args.merge(...) --> one specs table with the entries of each
function args.merge(...)
  local merged = {}
  for i = 1, select("#", ...) do
    for name, spec in pairs((select(i, ...))) do merged[name] = spec end
  end
  return merged
end

return args
