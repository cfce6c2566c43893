-- Where credentials come from: each source alone, their precedence, profiles, malformed
-- files, and nothing found. The chain takes `getenv` and `home` so that these specs need
-- no real environment or home directory; one spec runs rrpc.new in a child process with
-- real environment variables.
local cjson = require "cjson"
local credentials = require "rrpc.credentials"
local rrpc = require "rrpc"
local emulator = require "emulator"

local SECRET = "Chain-Secret-7Zq1"

local function temp_home()
  local pipe = assert(io.popen("mktemp -d /tmp/rrpc-home.XXXXXX"))
  local dir = pipe:read("*l")
  pipe:close()
  os.execute("mkdir -p '" .. dir .. "/.aliyun' '" .. dir .. "/.alibabacloud'")
  return dir
end

local write = require("process").write_file

local function env(vars)
  return function(name) return vars[name] end
end

local NO_METADATA = { ALIBABA_CLOUD_ECS_METADATA_DISABLED = "true" }

local function with(base, extra)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local CLI_CONFIG = [[{
  "current": "default",
  "profiles": [
    {"name": "default", "mode": "AK", "access_key_id": "LTAIcliDefault", "access_key_secret": "]] .. SECRET .. [["},
    {"name": "sts", "mode": "StsToken", "access_key_id": "STS.cli", "access_key_secret": "]] .. SECRET .. [[", "sts_token": "tok-cli"},
    {"name": "broken-sts", "mode": "StsToken", "access_key_id": "STS.cli", "access_key_secret": "]] .. SECRET .. [["},
    {"name": "arn", "mode": "RamRoleArn", "access_key_id": "x", "access_key_secret": "]] .. SECRET .. [["}
  ]
}]]

local INI = [[
; comment
[default]
type = access_key
access_key_id = LTAIiniDefault
access_key_secret = ]] .. SECRET .. [[

[other]
type = access_key
access_key_id = LTAIiniOther
access_key_secret = ]] .. SECRET .. [[

[half]
type = access_key
access_key_id = LTAIhalf
]]

describe("credentials", function()
  local home
  before_each(function() home = temp_home() end)
  after_each(function() os.execute("rm -rf '" .. home .. "'") end)

  local function chain(vars, opts)
    opts = opts or {}
    opts.getenv = env(with(NO_METADATA, vars))
    opts.home = home
    return credentials.chain(opts)
  end

  local function refused(pattern, vars, opts)
    local provider, err = chain(vars, opts)
    assert.is_nil(provider)
    assert.matches(pattern, err, 1, true)
    assert.is_nil(err:find(SECRET, 1, true))
    return err
  end

  it("reads the environment, with an STS token", function()
    local p = assert(chain { ALIBABA_CLOUD_ACCESS_KEY_ID = "LTAIenv", ALIBABA_CLOUD_ACCESS_KEY_SECRET = SECRET,
                             ALIBABA_CLOUD_SECURITY_TOKEN = "tok-env" })
    local c = assert(p:get())
    assert.same({ "LTAIenv", SECRET, "tok-env" }, { c.access_key_id, c.access_key_secret, c.security_token })
    assert.equal("environment", p.source)
    assert.is_nil(tostring(p):find(SECRET, 1, true))
  end)

  it("refuses half a key pair in the environment", function()
    refused("the environment (ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET) has an AccessKey ID but not its secret",
      { ALIBABA_CLOUD_ACCESS_KEY_ID = "LTAIenv" })
  end)

  it("reads the CLI's config.json: the current profile, or the one asked for", function()
    write(home .. "/.aliyun/config.json", CLI_CONFIG)
    local c = assert(assert(chain {}):get())
    assert.equal("LTAIcliDefault", c.access_key_id)
    c = assert(assert(chain { ALIBABA_CLOUD_PROFILE = "sts" }):get())
    assert.same({ "STS.cli", "tok-cli" }, { c.access_key_id, c.security_token })
    c = assert(assert(chain({}, { profile = "sts" })):get())
    assert.equal("tok-cli", c.security_token)
  end)

  it("says what is wrong with a CLI profile, naming the file and profile", function()
    write(home .. "/.aliyun/config.json", CLI_CONFIG)
    refused("profile broken-sts of " .. home .. "/.aliyun/config.json is an STS profile without a token (sts_token)",
      { ALIBABA_CLOUD_PROFILE = "broken-sts" })
    refused("profile arn of " .. home .. "/.aliyun/config.json: mode RamRoleArn is not supported (use AK, StsToken or EcsRamRole)",
      { ALIBABA_CLOUD_PROFILE = "arn" })
    write(home .. "/.aliyun/config.json", '{"profiles": [ {"name": "default", "access_key_secret": "' .. SECRET)
    refused(home .. "/.aliyun/config.json: not a CLI configuration (JSON with a \"profiles\" array)", {})
  end)

  it("refuses a key, secret or token that is not a string, naming the file, profile and field, never the value", function()
    local path = home .. "/.aliyun/config.json"
    for _, field in ipairs { "access_key_id", "access_key_secret", "sts_token" } do
      for _, value in ipairs { 31415926, true, { 31415926 } } do
        local profile = { name = "sts", mode = "StsToken", access_key_id = "STS.cli", access_key_secret = SECRET,
                          sts_token = "tok-cli" }
        profile[field] = value
        write(path, cjson.encode { current = "sts", profiles = { profile } })
        local err = refused(("profile sts of %s: %s must be a string, got %s"):format(path, field, type(value)), {})
        assert.is_nil(err:find("31415926", 1, true), err)
      end
    end
    -- the ECS role's name too; JSON null is no value
    write(path, '{"profiles": [{"name": "default", "mode": "EcsRamRole", "ram_role_name": 7}]}')
    refused("profile default of " .. path .. ": ram_role_name must be a string, got number", {})
    write(path, '{"profiles": [{"name": "default", "mode": "AK", "access_key_id": "LTAIx", "access_key_secret": null}]}')
    refused("profile default of " .. path .. " has an AccessKey ID but not its secret", {})
    write(path, '{"current": 3, "profiles": []}')
    refused(path .. ": current must be a string, got number", {})
  end)

  it("reads the INI credentials file, its default section or the profile's", function()
    write(home .. "/.alibabacloud/credentials", INI)
    assert.equal("LTAIiniDefault", assert(assert(chain {}):get()).access_key_id)
    assert.equal("LTAIiniOther", assert(assert(chain { ALIBABA_CLOUD_PROFILE = "other" }):get()).access_key_id)
    local elsewhere = home .. "/elsewhere.ini"
    write(elsewhere, "[default]\ntype = access_key\naccess_key_id = LTAIelsewhere\naccess_key_secret = x\n")
    assert.equal("LTAIelsewhere",
      assert(assert(chain { ALIBABA_CLOUD_CREDENTIALS_FILE = elsewhere }):get()).access_key_id)
  end)

  it("reads a numeric-looking value of the INI file as the text it is (INI has no types)", function()
    write(home .. "/.alibabacloud/credentials",
      "[default]\ntype = sts\naccess_key_id = 1234\naccess_key_secret = 31415926\nsecurity_token = 2.5\n")
    local c = assert(assert(chain {}):get())
    assert.same({ "1234", "31415926", "2.5" }, { c.access_key_id, c.access_key_secret, c.security_token })
  end)

  it("says what is wrong with the INI file, naming the file and line", function()
    write(home .. "/.alibabacloud/credentials", INI)
    refused("section [half] of " .. home .. "/.alibabacloud/credentials has an AccessKey ID but not its secret",
      { ALIBABA_CLOUD_PROFILE = "half" })
    write(home .. "/.alibabacloud/credentials", "[default]\naccess_key_secret = " .. SECRET .. "\nthis is not ini\n")
    refused(home .. "/.alibabacloud/credentials line 3: expected [section] or key = value", {})
  end)

  it("takes the first source that has credentials: environment, CLI profile, INI file", function()
    write(home .. "/.aliyun/config.json", CLI_CONFIG)
    write(home .. "/.alibabacloud/credentials", INI)
    local vars = { ALIBABA_CLOUD_ACCESS_KEY_ID = "LTAIenv", ALIBABA_CLOUD_ACCESS_KEY_SECRET = SECRET }
    assert.equal("LTAIenv", assert(assert(chain(vars)):get()).access_key_id)
    assert.equal("LTAIcliDefault", assert(assert(chain {}):get()).access_key_id)
    -- a profile the CLI file does not have falls through to the INI file
    assert.equal("LTAIiniOther", assert(assert(chain { ALIBABA_CLOUD_PROFILE = "other" }):get()).access_key_id)
    os.remove(home .. "/.aliyun/config.json")
    assert.equal("LTAIiniDefault", assert(assert(chain {}):get()).access_key_id)
  end)

  it("lists where it looked when it finds nothing", function()
    local err = refused("no credentials found; looked in: environment (ALIBABA_CLOUD_ACCESS_KEY_ID); "
      .. home .. "/.aliyun/config.json; " .. home .. "/.alibabacloud/credentials; "
      .. "ECS metadata (disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED)", {})
    assert.is_string(err)
  end)

  it("gives up on an unreachable metadata service quickly, saying where", function()
    local started = os.time()
    local provider, err = credentials.chain { getenv = env {}, home = home,
                                              metadata_endpoint = "http://127.0.0.1:9" }
    assert.is_nil(provider)
    assert.matches("ECS metadata at http://127.0.0.1:9: token: ", err, 1, true)
    assert.is_true(os.time() - started <= 3)
  end)

  it("parses the platform's UTC timestamps without the local time zone", function()
    assert.equal(0, credentials.parse_utc("1970-01-01T00:00:00Z"))
    assert.equal(951782400, credentials.parse_utc("2000-02-29T00:00:00Z"))
    assert.equal(1795737600, credentials.parse_utc("2026-11-27T00:00:00Z"))
    assert.equal(os.time(), credentials.parse_utc(os.date("!%Y-%m-%dT%H:%M:%SZ")))
    assert.is_nil(credentials.parse_utc("2026-11-27 00:00:00"))
  end)

  describe("rrpc.new", function()
    local emu
    setup(function() emu = emulator.start {} end)
    teardown(function() emu:stop() end)

    -- Runs a script in a child process with only the given environment.
    local function run_child(source, vars)
      local script = os.tmpname()
      write(script, source)
      local assignments = {}
      for k, v in pairs(vars) do assignments[#assignments + 1] = ("%s='%s'"):format(k, v) end
      local pipe = assert(io.popen(("env -i PATH=\"$PATH\" HOME='%s' %s LUA_PATH='./lua/?.lua;;' LUA_CPATH='%s;;' %s '%s' 2>&1")
        :format(home, table.concat(assignments, " "), package.cpath:match("^[^;]+"), arg[-1] or "lua5.4", script)))
      local out = pipe:read("*a")
      pipe:close()
      os.remove(script)
      return out
    end

    it("uses the chain when no keys are given (real environment, child process)", function()
      local out = run_child(([[
        local rrpc = require "rrpc"
        local c = rrpc.new { endpoint = %q }
        local res, err = c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "from env" }
        io.write(res and res.payload or tostring(err), " ", c.credentials_source)
      ]]):format(emu.url), { ALIBABA_CLOUD_ACCESS_KEY_ID = "testid", ALIBABA_CLOUD_ACCESS_KEY_SECRET = "testsecret" })
      assert.equal("from env environment", out)
    end)

    it("raises, listing where it looked, when there are no credentials", function()
      local out = run_child([[
        local ok, err = pcall(require("rrpc").new, { endpoint = "http://127.0.0.1:9" })
        io.write(tostring(ok), " ", err)
      ]], { ALIBABA_CLOUD_ECS_METADATA_DISABLED = "true" })
      assert.matches("^false .*rrpc.new: no credentials found; looked in: environment", out)
      assert.matches("ECS metadata (disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED)", out, 1, true)
    end)

    it("raises a credentials error for a secret of the wrong type in config.json, not at the first call", function()
      write(home .. "/.aliyun/config.json", cjson.encode { profiles = {
        { name = "default", mode = "AK", access_key_id = "testid", access_key_secret = 31415926 } } })
      local out = run_child(([[
        local ok, err = pcall(require("rrpc").new, { endpoint = %q })
        io.write(tostring(ok), " ", err)
      ]]):format(emu.url), { ALIBABA_CLOUD_ECS_METADATA_DISABLED = "true" })
      os.remove(home .. "/.aliyun/config.json")
      assert.equal("false rrpc.new: profile default of " .. home .. "/.aliyun/config.json: "
        .. "access_key_secret must be a string, got number", out)
      assert.is_nil(out:find("31415926", 1, true), out)
    end)

    it("takes a provider, and refuses anything else", function()
      local c = rrpc.new { endpoint = emu.url,
                           credentials = credentials.static { access_key_id = "testid", access_key_secret = "testsecret" } }
      assert.equal("x", assert(c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "x" }).payload)
      c:close()
      assert.has_error(function() rrpc.new { endpoint = emu.url, credentials = {} } end,
        "bad argument #1 to 'new' (option 'credentials' must be a provider from rrpc.credentials)")
    end)
  end)
end)
