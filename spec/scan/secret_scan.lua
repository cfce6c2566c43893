-- After the suite (scripts/test.sh runs it so, with `busted --pattern=secret_scan
-- spec/scan`): no secret of the suite's keys and no security token appears in any error an rrpc
-- call returned, nor in any log line of the emulators and gateways the specs ran
-- (spec/support/suite_log.lua), in any form: raw, percent-encoded once or twice (a V1 string
-- to sign holds the token so), JSON-escaped.
local cjson = require "cjson"
local core = require "rrpc.core"
local suite_log = require "suite_log"

-- Secrets too short to search for meaningfully (the "x" of a throwaway key) are left out.
local MIN_LENGTH = 8

local function secrets()
  local list = {
    "Spec-Secret-0123456789", "Chain-Secret-7Zq1", "Wrong-Secret-Value-42", -- specs 03, 12, 04
    "CAIS+Before/Refresh==", "CAIS+After/Refresh==", -- tokens of spec 18
  }
  local registry = cjson.decode(assert(io.open("emulator/devices.json")):read("*a"))
  for _, key in pairs(registry.access_keys) do list[#list + 1] = key.secret end
  for _, key in pairs(registry.sts_keys or {}) do
    list[#list + 1] = key.secret
    list[#list + 1] = key.token
  end
  local long = {}
  for _, s in ipairs(list) do
    if #s >= MIN_LENGTH then long[#long + 1] = s end
  end
  return long
end

-- The forms a secret takes in a query, a string to sign, a JSON string.
local function forms(secret)
  local once = core.percent_encode(secret)
  return { secret, once, (once:gsub("%%%x%x", string.lower)), core.percent_encode(once),
           (secret:gsub("/", "\\/")) }
end

-- Tokens the emulator's metadata service issued are random: "CAIS" and about 600
-- characters of Base64 (emulator/lua/rrpc_emulator/sts.lua), in any of those forms.
local ISSUED_TOKEN = "CAIS[%w+/=%%\\]+"
local function issued_token(text)
  for match in text:gmatch(ISSUED_TOKEN) do
    if #match >= 400 then return match end
  end
end

local function read(name)
  local f = io.open(suite_log.DIR .. "/" .. name, "rb")
  if not f then return "" end
  local text = f:read("*a")
  f:close()
  return text
end

describe("secret scan", function()
  it("finds no secret in the suite's errors and server logs", function()
    local errors_text, servers_text = read("errors.log"), read("servers.log")
    -- the scan must have something to scan: the suite makes errors and runs servers
    local why = "; the scan reads what the whole suite wrote: run scripts/test.sh"
    assert.is_true(#errors_text > 10000, "errors.log: " .. #errors_text .. " bytes" .. why)
    assert.is_true(#servers_text > 10000, "servers.log: " .. #servers_text .. " bytes" .. why)
    local list = secrets()
    assert.is_true(#list >= 10)
    for _, secret in ipairs(list) do
      for _, form in ipairs(forms(secret)) do
        assert.is_nil(errors_text:find(form, 1, true), "a secret in errors.log: " .. form)
        assert.is_nil(servers_text:find(form, 1, true), "a secret in servers.log: " .. form)
      end
    end
    assert.is_nil(issued_token(errors_text), "an issued token in errors.log")
    assert.is_nil(issued_token(servers_text), "an issued token in servers.log")
  end)
end)
