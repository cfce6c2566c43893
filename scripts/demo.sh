#!/usr/bin/env bash
# The README's demo: start the emulator, make one real signed RRpc call through
# examples/quickstart.lua, print the device's reply, stop the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORT:-18080}
work=$(mktemp -d)
emulator/run --port "$port" --log "$work/access.log" 2>"$work/emulator.log" &
emulator_pid=$!
trap 'kill "$emulator_pid" 2>/dev/null; wait "$emulator_pid" 2>/dev/null; rm -rf "$work"' EXIT

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/__emulator/health" >/dev/null 2>&1 && break
  kill -0 "$emulator_pid" 2>/dev/null || { cat "$work/emulator.log" >&2; exit 1; }
  sleep 0.1
done

echo "emulator on http://127.0.0.1:$port; calling device a1RRpcDemo/echo"
RRPC_ENDPOINT="http://127.0.0.1:$port" \
ALIBABA_CLOUD_ACCESS_KEY_ID=LTAI5tRRpcDemoKey \
ALIBABA_CLOUD_ACCESS_KEY_SECRET=RRpcDemoSecretNotForProduction \
LUA_PATH="./lua/?.lua;;" LUA_CPATH="./build/?.so;;" \
  lua5.4 examples/quickstart.lua a1RRpcDemo echo "${1:-hello from rrpc}"
