-- Last: no secret of the suite's keys appears in any error an rrpc call returned, nor in
-- any log line of the emulators and gateways the specs ran (spec/support/suite_log.lua).
local cjson = require "cjson"
local suite_log = require "suite_log"

-- Secrets too short to search for meaningfully (the "x" of a throwaway key) are left out.
local MIN_LENGTH = 8

local function secrets()
  local list = {
    "Spec-Secret-0123456789", "Chain-Secret-7Zq1", "Wrong-Secret-Value-42", -- specs 03, 12, 04
  }
  local registry = cjson.decode(assert(io.open("emulator/devices.json")):read("*a"))
  for _, key in pairs(registry.access_keys) do list[#list + 1] = key.secret end
  for _, key in pairs(registry.sts_keys or {}) do list[#list + 1] = key.secret end
  local long = {}
  for _, s in ipairs(list) do
    if #s >= MIN_LENGTH then long[#long + 1] = s end
  end
  return long
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
    assert.is_true(#errors_text > 10000, "errors.log: " .. #errors_text .. " bytes")
    assert.is_true(#servers_text > 10000, "servers.log: " .. #servers_text .. " bytes")
    local list = secrets()
    assert.is_true(#list >= 8)
    for _, secret in ipairs(list) do
      assert.is_nil(errors_text:find(secret, 1, true), "a secret in errors.log")
      assert.is_nil(servers_text:find(secret, 1, true), "a secret in servers.log")
    end
  end)
end)
