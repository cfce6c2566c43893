-- luacheck (Debian's lua-check): `make lint` checks lua/, bin/, emulator/, examples/,
-- spec/, bench/ and scripts/ with these settings.
std = "max"
max_line_length = 120
-- `jit` tells LuaJIT (the User-Agent, the specs' VM)
read_globals = { "jit" }
-- what runs inside nginx sets ngx.ctx, ngx.var, ngx.status, ngx.header
files["lua/rrpc/ngx.lua"] = { globals = { "ngx" } }
files["lua/rrpc/transport/ngx.lua"] = { globals = { "ngx" } }
files["lua/rrpc/transport/ngx_redis.lua"] = { globals = { "ngx" } }
files["lua/rrpc/quota/shared_dict.lua"] = { globals = { "ngx" } }
files["emulator"] = { globals = { "ngx" } }
files["examples/openresty"] = { globals = { "ngx" } }
-- tables of cases read best a case a line
files["spec"] = { std = "+busted", max_line_length = 140 }
files["bench"] = { max_line_length = 140 }
-- the aggressive-GC helper wraps coroutine.create and .wrap on purpose
files["scripts/gc-aggressive.lua"] = { globals = { "coroutine" } }
-- the command line runs on every Lua: only what 5.1, 5.2, 5.3, 5.4 and LuaJIT all have
files["bin/rrpc"] = { std = "min" }
files["lua/rrpc/cli"] = { std = "min" }
-- generated and third-party files
exclude_files = { "build/", "bench/peers/node_modules/" }
