-- The module as users install it: `make install` and the rockspec, each loaded by a
-- fresh process of the VM these specs run under, which signs the published V1 vector.

-- The VM running the specs, by its Debian name (the Makefile's LUA), and the version
-- whose directories it uses: LuaJIT says "Lua 5.1" and shares 5.1's.
local LUA_VERSION = _VERSION:match("%d+%.%d+")
local VM = rawget(_G, "jit") and "luajit" or ("lua" .. LUA_VERSION)

-- Runs a shell command; returns whether it exited 0, its output and its exit code.
-- (Lua 5.1 and LuaJIT do not report a pipe's exit status from close, so the shell does.)
local function run(command)
  local pipe = assert(io.popen("(" .. command .. ") 2>&1; echo \"[exit $?]\""))
  local output = pipe:read("*a")
  pipe:close()
  local code = tonumber(output:match("%[exit (%d+)%]\n$"))
  return code == 0, (output:gsub("%[exit %d+%]\n$", "")), code
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
-- package.searchpath is Lua 5.2+ (LuaJIT has it); 5.1 searches by hand
local function searchpath(name, path)
  if package.searchpath then return package.searchpath(name, path) end
  local file = name:gsub("%.", "/")
  for template in path:gmatch("[^;]+") do
    local candidate = template:gsub("%?", file)
    local f = io.open(candidate, "rb")
    if f then
      f:close()
      return candidate
    end
  end
end
io.write(sig, " ", searchpath("rrpc.core", package.cpath))
]]

describe("installation under " .. VM .. " #build", function()
  local dir
  before_each(function() dir = temp_dir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  local function check_installed(lua_path, lua_cpath)
    local script = dir .. "/check.lua"
    local f = assert(io.open(script, "w"))
    f:write(CHECK)
    f:close()
    local ok, out = run(("cd / && LUA_PATH='%s;;' LUA_CPATH='%s;;' %s '%s'"):format(lua_path, lua_cpath, VM, script))
    assert(ok, out)
    return out
  end

  it("make install puts the module under DESTDIR and PREFIX", function()
    local ok, out = run(("make -s install LUA=%s DESTDIR='%s' PREFIX=/usr/local"):format(VM, dir))
    assert(ok, out)
    local root = dir .. "/usr/local"
    local out2 = check_installed(root .. "/share/lua/" .. LUA_VERSION .. "/?.lua",
      root .. "/lib/lua/" .. LUA_VERSION .. "/?.so")
    assert.equal("OLeaidS1JvxuMvnyHOwuJ+uX5qY= " .. root .. "/lib/lua/" .. LUA_VERSION .. "/rrpc/core.so", out2)
    -- the command line, for this VM, from the installed modules
    local first = assert(io.open(root .. "/bin/rrpc")):read("*l")
    assert.equal("#!/usr/bin/env " .. VM, first)
    local ran, help = run(("cd / && LUA_PATH='%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua;;' LUA_CPATH='%s/lib/lua/%s/?.so;;'"
      .. " %s '%s/bin/rrpc' sign --help"):format(root, LUA_VERSION, root, LUA_VERSION, root, LUA_VERSION, VM, root))
    assert(ran, help)
    assert.is_truthy(help:find("Usage: rrpc sign", 1, true), help)
  end)

  it("the rockspec maps every C source and Lua module of the checkout", function()
    local file = assert(io.open("rrpc-scm-1.rockspec"))
    local text = file:read("*a")
    file:close()
    local env, chunk = {}
    if _VERSION == "Lua 5.1" then -- and LuaJIT
      chunk = assert(loadstring(text, "rrpc-scm-1.rockspec"))
      setfenv(chunk, env)
    else
      chunk = assert(load(text, "rrpc-scm-1.rockspec", "t", env))
    end
    chunk()
    local listed = {}
    for name, module in pairs(env.build.modules) do
      if type(module) == "string" then
        listed[module] = name
      else
        for _, source in ipairs(module.sources) do listed[source] = name end
      end
    end
    -- the files git tracks (work in progress is not the rockspec's yet), or what is there
    local _, files = run("git ls-files 'src/*.c' lua/rrpc.lua 'lua/rrpc/*.lua' 2>/dev/null | grep . ||"
      .. " ls src/*.c lua/rrpc.lua lua/rrpc/*.lua")
    for path in files:gmatch("[^\n]+") do
      local module = path:match("^lua/(.*)%.lua$")
      module = module and module:gsub("/init$", ""):gsub("/", ".")
      assert.is_not_nil(listed[path], path .. " is not in the rockspec")
      if module then assert.equal(module, listed[path]) end
    end
  end)

  it("the rockspec builds offline with luarocks", function()
    -- a copy, so the build's object files stay out of the checkout
    local src = dir .. "/src"
    assert(run(("mkdir -p '%s' && cp -r src lua bin emulator rrpc-scm-1.rockspec '%s' && rm -f '%s'/src/*.o"):format(src, src, src)))
    local tree = dir .. "/tree"
    -- LuaJIT: luarocks' Lua 5.1 mode (LuaJIT's module directories) with LuaJIT's headers
    local headers = VM == "luajit" and " LUA_INCDIR=/usr/include/luajit-2.1" or ""
    local ok, out = run(("cd '%s' && luarocks --lua-version=%s --tree '%s' make --deps-mode=none " ..
      "rrpc-scm-1.rockspec CURL_INCDIR=/usr/include/x86_64-linux-gnu%s"):format(src, LUA_VERSION, tree, headers))
    assert(ok, out)
    local out2 = check_installed(tree .. "/share/lua/" .. LUA_VERSION .. "/?.lua",
      tree .. "/lib/lua/" .. LUA_VERSION .. "/?.so")
    assert.equal("OLeaidS1JvxuMvnyHOwuJ+uX5qY= " .. tree .. "/lib/lua/" .. LUA_VERSION .. "/rrpc/core.so", out2)
    assert.is_truthy(io.open(tree .. "/bin/rrpc"), "the rock installs the command line")
    -- which runs from the tree, whatever VM the rock is for
    local ran, help = run(("LUA_PATH='%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua;;' LUA_CPATH='%s/lib/lua/%s/?.so;;'"
      .. " %s -e 'os.exit(require(\"rrpc.cli\").main({ \"--help\" }))'"):format(tree, LUA_VERSION, tree, LUA_VERSION,
      tree, LUA_VERSION, VM))
    assert(ran, help)
    assert.is_truthy(help:find("Usage: rrpc", 1, true), help)
  end)
end)
