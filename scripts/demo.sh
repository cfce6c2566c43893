#!/usr/bin/env bash
# The README's demo: start the emulator, make one real signed RRpc call through
# examples/quickstart.lua, print the device's reply, stop the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
emulator_pid=
stop() {
  if [ -n "$emulator_pid" ]; then
    kill "$emulator_pid" 2>/dev/null || true
    wait "$emulator_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop EXIT

# Starts the emulator on port $1; succeeds once it answers its health check as itself.
start_emulator() {
  emulator/run --port "$1" --log "$work/access.log" 2>"$work/emulator.log" &
  emulator_pid=$!
  for _ in $(seq 50); do
    kill -0 "$emulator_pid" 2>/dev/null || { emulator_pid=; return 1; }
    curl -fsS -D - -o /dev/null "http://127.0.0.1:$1/__emulator/health" 2>/dev/null |
      grep -qi "^x-emulator-pid: $emulator_pid" && return 0
    sleep 0.1
  done
  kill "$emulator_pid"
  wait "$emulator_pid" 2>/dev/null || true
  emulator_pid=
  return 1
}

first_port=${PORT:-18080}
port=$first_port
until start_emulator "$port"; do
  port=$((port + 1))
  if [ "$port" -ge $((first_port + 20)) ]; then
    cat "$work/emulator.log" >&2
    echo "demo: the emulator found no free port in $first_port..$((port - 1))" >&2
    exit 1
  fi
done

echo "emulator: http://127.0.0.1:$port (pid $emulator_pid); calling device a1RRpcDemo/echo"
RRPC_ENDPOINT="http://127.0.0.1:$port" \
ALIBABA_CLOUD_ACCESS_KEY_ID=LTAI5tRRpcDemoKey \
ALIBABA_CLOUD_ACCESS_KEY_SECRET=RRpcDemoSecretNotForProduction \
LUA_PATH="./lua/?.lua;;" LUA_CPATH="./build/lua5.4/?.so;;" \
  lua5.4 examples/quickstart.lua a1RRpcDemo echo "${1:-hello from rrpc}"
