#!/usr/bin/env bash
# make gateway: the OpenResty gateway in front of an emulator of its own, in the
# foreground. Ctrl-C stops both (by PID). Both ports must be free: a server already
# there is never taken for ours (the health checks must answer with our PIDs). The
# gateway signs with the emulator's demo key, given to it here because this script
# started that emulator; examples/openresty/run itself never falls back to a key.
set -euo pipefail
cd "$(dirname "$0")/.."

emulator_port=${EMULATOR_PORT:-18080}
gateway_port=${PORT:-8081}
DEMO_KEY_ID=LTAI5tRRpcDemoKey                     # emulator/devices.json's demo key
DEMO_KEY_SECRET=RRpcDemoSecretNotForProduction

die() {
  echo "make gateway: $*" >&2
  exit 1
}

# Whether something listens on 127.0.0.1:$1 (or every address), from /proc/net/tcp{,6}.
listening() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v port="$hex" 'NR > 1 { split($2, a, ":"); if (a[2] == port && $4 == "0A" &&
      (a[1] == "0100007F" || a[1] ~ /^0+$/ || a[1] == "0000000000000000FFFF00000100007F")) found = 1 }
    END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

for port in "$emulator_port" "$gateway_port"; do
  [[ $port =~ ^[0-9]+$ ]] || die "ports must be numbers, not '$port'"
  ! listening "$port" ||
    die "port $port is in use by another program (EMULATOR_PORT=... and PORT=... choose others)"
done

work=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop EXIT
trap 'exit 0' INT TERM

# Waits until $1 answers 200 with header $2 naming process $3 (ours, not another
# server's), while that process lives.
wait_for() {
  local headers
  for _ in $(seq 100); do
    headers=$(curl -sS -m 1 -o /dev/null -D - "$1" 2>/dev/null | tr -d '\r' | tr 'A-Z' 'a-z') || true
    if [[ $headers == "http/"*" 200"* ]] && grep -qx "$2: $3" <<<"$headers"; then return 0; fi
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

emulator/run --port "$emulator_port" --log "$work/emulator.log" 2>"$work/emulator.err" &
pids+=($!)
wait_for "http://127.0.0.1:$emulator_port/__emulator/health" x-emulator-pid "${pids[-1]}" ||
  { cat "$work/emulator.err" >&2; die "the emulator did not start on port $emulator_port"; }
RRPC_ACCESS_KEY_ID=$DEMO_KEY_ID RRPC_ACCESS_KEY_SECRET=$DEMO_KEY_SECRET \
  examples/openresty/run --port "$gateway_port" --endpoint "http://127.0.0.1:$emulator_port" \
  --workers "${WORKERS:-2}" --log "$work/gateway.log" &
pids+=($!)
wait_for "http://127.0.0.1:$gateway_port/__gateway/health" x-gateway-master-pid "${pids[-1]}" ||
  die "the gateway did not start on port $gateway_port"

cat <<EOT
gateway:  http://127.0.0.1:$gateway_port  ->  emulator http://127.0.0.1:$emulator_port
try:
  curl -i --data-binary 'hello' http://127.0.0.1:$gateway_port/devices/a1RRpcDemo/echo/rrpc
  curl -i --data-binary 'hello' 'http://127.0.0.1:$gateway_port/devices/a1RRpcDemo/silent/rrpc?timeout=2000'
  curl -s --data '{"devices": ["echo", "upper", "offline"], "payload": "on"}' http://127.0.0.1:$gateway_port/products/a1RRpcDemo/batch
Ctrl-C stops both.
EOT
wait
