#!/usr/bin/env bash
# make soak: bench/soak.lua, 100,000 calls through rrpc.each against the emulator with 1%
# injected faults (a few minutes at most). Fails when a request is lost or duplicated, a
# RequestId does not match the emulator's log, or the client's RSS grows past its bound.
#   LUA=lua5.4 (the VM, built first), SOAK_CALLS=100000, SOAK_CONCURRENCY=200, SOAK_QPS=5000,
#   SOAK_RSS_GROWTH_LIMIT_KB=4096
set -euo pipefail
cd "$(dirname "$0")/.."

lua=${LUA:-lua5.4}
make -s --no-print-directory build LUA="$lua"
# 200 kept-alive connections and more: above the usual soft limit of 1024 descriptors
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
LUA_PATH="./lua/?.lua;./spec/support/?.lua;;" LUA_CPATH="./build/$lua/?.so;;" exec "$lua" bench/soak.lua
