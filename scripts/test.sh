#!/usr/bin/env bash
# Runs the busted specs under one Lua VM, against that VM's own build of rrpc.core:
#
#   LUA=luajit scripts/test.sh [busted options]
#       busted --lua=luajit --cpath=./build/luajit/?.so (LUA: lua5.1, lua5.3, lua5.4 (the
#       default) or luajit); ends with one line: "N passed, N failed, N skipped"
#   LUAS="lua5.1 lua5.3 lua5.4 luajit" scripts/test.sh --all [busted options]
#       builds (make build LUA=...) and runs each VM in turn, each ending with its own line
#       "<vm>: N passed, N failed, N skipped", then one line for them all: "N passed, N failed"
#
# Without busted arguments each VM's suite is followed by the secret scan of what it wrote
# (spec/scan/secret_scan.lua: no secret in any error or server log), counted with it.
# `--exclude-tags=slow` leaves out the slow groups (servers under load, the command line
# as a process, nginx).
# The exit status is 0 only when every spec of every VM passed.
set -uo pipefail
cd "$(dirname "$0")/.."

all=""
if [ "${1:-}" = "--all" ]; then
  all=1
  shift
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs busted under VM $1 (the remaining arguments go to busted); sets passed, failed,
# skipped. A run that ends without busted's summary counts as one failure.
run_busted() {
  local vm=$1 status summary failures errs
  shift
  passed=0 failed=1 skipped=0
  if ! command -v "$vm" >/dev/null 2>&1; then
    echo "test: no interpreter '$vm' (make deps installs lua5.1, lua5.3, lua5.4 and luajit)" >&2
    return 1
  fi
  if [ ! -f "build/$vm/rrpc/core.so" ]; then
    echo "test: build/$vm/rrpc/core.so is missing (make build LUA=$vm)" >&2
    return 1
  fi
  busted --lua="$vm" --cpath="./build/$vm/?.so" -o plainTerminal "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}

  # busted: "12 successes / 0 failures / 1 error / 0 pending : 3.2 seconds"
  summary=$(grep -E '^[0-9]+ successe?s? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$log" | tail -n 1)
  [ -n "$summary" ] || return 1
  read -r passed _ _ failures _ _ errs _ _ skipped _ <<<"$summary"
  failed=$((failures + errs))
  [ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
}

# The suite under VM $1, then (when it ran whole: no busted arguments) the secret scan of
# what it wrote (spec/scan/secret_scan.lua); sets passed, failed, skipped for both.
run_suite() {
  local vm=$1 status scan_status suite_passed suite_failed suite_skipped
  shift
  rm -f build/suite-logs/errors.log build/suite-logs/servers.log
  run_busted "$vm" "$@"
  status=$?
  [ $# -eq 0 ] || return "$status"
  suite_passed=$passed suite_failed=$failed suite_skipped=$skipped
  echo "== $vm: the secret scan of the suite's errors and server logs"
  run_busted "$vm" --pattern=secret_scan spec/scan
  scan_status=$?
  passed=$((suite_passed + passed)) failed=$((suite_failed + failed)) skipped=$((suite_skipped + skipped))
  [ "$status" -eq 0 ] && [ "$scan_status" -eq 0 ]
}

if [ -z "$all" ]; then
  run_suite "${LUA:-lua5.4}" "$@"
  status=$?
  echo "$passed passed, $failed failed, $skipped skipped"
  exit "$status"
fi

vms=(${LUAS:-lua5.1 lua5.3 lua5.4 luajit})
# Every build first: the OpenResty specs load nginx's (LuaJIT's) under every VM.
declare -A built
for vm in "${vms[@]}" luajit; do
  [ -n "${built[$vm]:-}" ] && continue
  if make -s --no-print-directory build LUA="$vm"; then
    built[$vm]=ok
  else
    echo "test: building rrpc.core for $vm failed" >&2
    built[$vm]=failed
  fi
done

total_passed=0 total_failed=0 lines=()
for vm in "${vms[@]}"; do
  echo "== $vm"
  started=$SECONDS
  if [ "${built[$vm]}" = ok ]; then
    run_suite "$vm" "$@"
  else
    passed=0 failed=1 skipped=0
  fi
  line="$vm: $passed passed, $failed failed, $skipped skipped"
  echo "== $vm took $((SECONDS - started)) s"
  echo "$line"
  lines+=("$line")
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
done

echo "== every VM"
printf '%s\n' "${lines[@]}"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
