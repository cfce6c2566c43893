#!/usr/bin/env bash
# Runs the busted specs under Lua 5.4 and ends with one line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
busted --lua=lua5.4 -o plainTerminal "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# busted: "12 successes / 0 failures / 1 error / 0 pending : 3.2 seconds"
summary=$(grep -E '^[0-9]+ successe?s? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$log" | tail -n 1)
if [ -z "$summary" ]; then
  echo "0 passed, 1 failed"
  exit 1
fi
read -r passed _ _ failures _ _ errs _ _ pending _ <<<"$summary"
echo "$passed passed, $((failures + errs)) failed, $pending skipped"
[ "$status" -eq 0 ] && [ $((failures + errs)) -eq 0 ]
