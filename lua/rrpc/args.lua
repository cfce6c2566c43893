-- Argument checks shared by the public functions: every bad argument raises an error
-- that names the function and the option, pointing at the caller's line.
local args = {}

local ARTICLE = { string = "a ", number = "a ", integer = "an ", boolean = "a ", table = "a ",
                  ["function"] = "a " }

function args.error(fname, msg, level)
  error(("bad argument #1 to '%s' (%s)"):format(fname, msg), level + 1)
end

function args.is_integer(v)
  return type(v) == "number" and v == v and v % 1 == 0 and v > -2^53 and v < 2^53
end

function args.describe(v)
  return type(v) == "string" and ("%q"):format(v) or tostring(v)
end

-- spec: name -> "string" | "number" | "integer" | "boolean" | "table" | "function" | "any"
function args.check_options(fname, opts, spec, level)
  if type(opts) ~= "table" then
    args.error(fname, "table expected, got " .. type(opts), level + 1)
  end
  for name, value in pairs(opts) do
    local want = spec[name]
    if not want then
      args.error(fname, ("unknown option '%s'"):format(tostring(name)), level + 1)
    end
    local ok
    if want == "any" then ok = true
    elseif want == "integer" then ok = args.is_integer(value)
    else ok = type(value) == want end
    if not ok then
      args.error(fname, ("option '%s' must be %s, got %s"):format(name, ARTICLE[want] .. want, type(value)),
        level + 1)
    end
  end
end

function args.check_range(fname, opts, name, lo, hi, level)
  local v = opts[name]
  if v ~= nil and (v < lo or v > hi) then
    args.error(fname, ("option '%s' must be in %d..%d, got %s"):format(name, lo, hi, args.describe(v)),
      level + 1)
  end
end

function args.check_choice(fname, opts, name, choices, level)
  local v = opts[name]
  if v ~= nil and not choices[v] then
    args.error(fname, ("option '%s' has no choice %s"):format(name, args.describe(v)), level + 1)
  end
end

function args.check_required(fname, opts, name, level)
  local v = opts[name]
  if v == nil or v == "" then
    args.error(fname, ("option '%s' is required"):format(name), level + 1)
  end
end

return args
