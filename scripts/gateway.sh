#!/usr/bin/env bash
# make gateway: the OpenResty gateway in front of the emulator, in the foreground.
# Ctrl-C stops both (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."

emulator_port=${EMULATOR_PORT:-18080}
gateway_port=${PORT:-8081}
work=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop EXIT
trap 'exit 0' INT TERM

# Waits until $1 answers, while process $2 lives.
wait_for() {
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

emulator/run --port "$emulator_port" --log "$work/emulator.log" 2>"$work/emulator.err" &
pids+=($!)
wait_for "http://127.0.0.1:$emulator_port/__emulator/health" "${pids[-1]}" ||
  { cat "$work/emulator.err" >&2; exit 1; }
examples/openresty/run --port "$gateway_port" --endpoint "http://127.0.0.1:$emulator_port" \
  --workers "${WORKERS:-2}" --log "$work/gateway.log" &
pids+=($!)
wait_for "http://127.0.0.1:$gateway_port/__gateway/health" "${pids[-1]}" || exit 1

cat <<EOT
gateway:  http://127.0.0.1:$gateway_port  ->  emulator http://127.0.0.1:$emulator_port
try:
  curl -i --data-binary 'hello' http://127.0.0.1:$gateway_port/devices/a1RRpcDemo/echo/rrpc
  curl -i --data-binary 'hello' 'http://127.0.0.1:$gateway_port/devices/a1RRpcDemo/silent/rrpc?timeout=2000'
  curl -s --data '{"devices": ["echo", "upper", "offline"], "payload": "on"}' http://127.0.0.1:$gateway_port/products/a1RRpcDemo/batch
Ctrl-C stops both.
EOT
wait
