-- The module as users install it: `make install` and the rockspec, each loaded by a
-- fresh Lua 5.4 process that signs the published V1 vector.
local function run(command)
  local pipe = assert(io.popen(command .. " 2>&1"))
  local output = pipe:read("a")
  local ok, _, code = pipe:close()
  return ok, output, code
end

local function temp_dir()
  local ok, out = run("mktemp -d /tmp/rrpc-build-spec.XXXXXX")
  assert(ok, out)
  return (out:gsub("%s+$", ""))
end

local CHECK = [[
local rrpc = require "rrpc"
local sig = rrpc.sign_v1("GET", { AccessKeyId = "testid", Action = "DescribeRegions", Format = "XML",
  SignatureMethod = "HMAC-SHA1", SignatureNonce = "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
  SignatureVersion = "1.0", Timestamp = "2016-02-23T12:46:24Z", Version = "2014-05-26" }, "testsecret")
io.write(sig, " ", package.searchpath("rrpc.core", package.cpath))
]]

describe("installation #build", function()
  local dir
  before_each(function() dir = temp_dir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  local function check_installed(lua_path, lua_cpath)
    local script = dir .. "/check.lua"
    local f = assert(io.open(script, "w"))
    f:write(CHECK)
    f:close()
    local ok, out = run(("cd / && LUA_PATH='%s;;' LUA_CPATH='%s;;' lua5.4 '%s'"):format(lua_path, lua_cpath, script))
    assert(ok, out)
    return out
  end

  it("make install puts the module under DESTDIR and PREFIX", function()
    local ok, out = run(("make -s install DESTDIR='%s' PREFIX=/usr/local"):format(dir))
    assert(ok, out)
    local root = dir .. "/usr/local"
    local out2 = check_installed(root .. "/share/lua/5.4/?.lua", root .. "/lib/lua/5.4/?.so")
    assert.equal("OLeaidS1JvxuMvnyHOwuJ+uX5qY= " .. root .. "/lib/lua/5.4/rrpc/core.so", out2)
  end)

  it("the rockspec builds offline with luarocks", function()
    -- a copy, so the build's object files stay out of the checkout
    local src = dir .. "/src"
    assert(run(("mkdir -p '%s' && cp -r src lua rrpc-scm-1.rockspec '%s'"):format(src, src)))
    local tree = dir .. "/tree"
    local ok, out = run(("cd '%s' && luarocks --lua-version=5.4 --tree '%s' make --deps-mode=none " ..
      "rrpc-scm-1.rockspec CURL_INCDIR=/usr/include/x86_64-linux-gnu"):format(src, tree))
    assert(ok, out)
    local out2 = check_installed(tree .. "/share/lua/5.4/?.lua", tree .. "/lib/lua/5.4/?.so")
    assert.equal("OLeaidS1JvxuMvnyHOwuJ+uX5qY= " .. tree .. "/lib/lua/5.4/rrpc/core.so", out2)
  end)
end)
