-- The platform's signature algorithms (V1 HMAC-SHA1 and V3 ACS3-HMAC-SHA256),
-- written from the published description; pure functions of their inputs.
local crypto = require "rrpc_emulator.crypto"

local sign = {}

-- Alibaba's percent-encoding: only A-Z a-z 0-9 - _ . ~ stay, upper-case hex.
-- (ngx.escape_uri keeps a different set, so it cannot be used here.)
function sign.percent_encode(s)
  return (s:gsub("[^A-Za-z0-9%-_.~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end
local pe = sign.percent_encode

-- "pe(name)=pe(value)" pairs sorted by name in byte order, joined by "&".
-- `params` maps names to strings; `skipped` (optional) is left out.
function sign.canonical_query(params, skipped)
  local names = {}
  for name in pairs(params) do
    if name ~= skipped then
      names[#names + 1] = name
    end
  end
  table.sort(names)
  local encoded = {}
  for i, name in ipairs(names) do
    encoded[i] = pe(name) .. "=" .. pe(params[name])
  end
  return table.concat(encoded, "&")
end

function sign.v1_string_to_sign(method, params)
  return method .. "&" .. pe("/") .. "&" .. pe(sign.canonical_query(params, "Signature"))
end

function sign.v1_signature(secret, string_to_sign)
  return ngx.encode_base64(ngx.hmac_sha1(secret .. "&", string_to_sign))
end

local function trim(s)
  local first = s:find("%S")
  if not first then
    return ""
  end
  return s:sub(first, s:find("%S%s*$"))
end

-- `headers` maps lower-case names to values; `signed` is the sorted list of
-- lower-case names to sign.
function sign.v3_canonical_request(method, query, headers, signed, body_sha256)
  local lines = {}
  for i, name in ipairs(signed) do
    lines[i] = name .. ":" .. trim(headers[name] or "") .. "\n"
  end
  return table.concat({
    method,
    "/",
    sign.canonical_query(query),
    table.concat(lines),
    table.concat(signed, ";"),
    body_sha256,
  }, "\n")
end

function sign.v3_string_to_sign(canonical_request)
  return "ACS3-HMAC-SHA256\n" .. crypto.sha256_hex(canonical_request)
end

function sign.v3_signature(secret, string_to_sign)
  return crypto.hmac_sha256_hex(secret, string_to_sign)
end

-- Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
-- days_from_civil), so timestamps are read as UTC whatever the local zone.
local function days_from_civil(y, m, d)
  local floor = math.floor
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local year_of_era = y - era * 400
  local day_of_year = floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local day_of_era = year_of_era * 365 + floor(year_of_era / 4) - floor(year_of_era / 100)
      + day_of_year
  return era * 146097 + day_of_era - 719468
end

-- "YYYY-MM-DDThh:mm:ssZ" to seconds since the epoch, or nil when the text is
-- not exactly that form or not a real date and time.
function sign.parse_timestamp(text)
  local y, mo, d, h, mi, s = text:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$")
  if not y then
    return nil
  end
  local epoch = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
      + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
  -- Out-of-range fields (month 13, Feb 30, 25:00) do not survive the round trip.
  if os.date("!%Y-%m-%dT%H:%M:%SZ", epoch) ~= text then
    return nil
  end
  return epoch
end

return sign
