#!/usr/bin/env bash
# Memory checks of rrpc.core (make check-memory, make check-memory-ci); fuzz/README.md says why
# each is built the way it is.
#
#   scripts/check-memory.sh [--ci] [--only PASS[,PASS...]]
#
# Passes, in order (PASS names for --only):
#   asan           the whole spec suite under Lua 5.4 against build/asan/rrpc/core.so
#                  (AddressSanitizer + UndefinedBehaviorSanitizer), run by build/asan/lua5.4,
#                  an interpreter with the sanitizer runtimes linked in: nothing is preloaded,
#                  so the nginx, curl, make and shell children are the normal programs (a
#                  child started as `arg[-1]`, as spec 12 does, is this interpreter again,
#                  sanitized too). LeakSanitizer looks at exit, after lua_close.
#   asan-gc        the same with scripts/gc-aggressive.lua as busted helper: pause-0
#                  collector, a full collection after every return from rrpc.core; with
#                  --ci, the specs of CORE_CI_SPECS only (a full collection per core call
#                  over the whole suite is 40 minutes on a CI machine)
#   gc-stress      scripts/gc-stress.lua under the ASan interpreter (GC_STRESS_ASAN iterations)
#   valgrind       the whole suite under valgrind memcheck (lua5.4, build/lua5.4), leaks
#                  --leak-check=full, definite and indirect leaks are errors; with --ci, the
#                  specs of CORE_CI_SPECS only (below)
#   valgrind-gc    scripts/gc-stress.lua under valgrind (GC_STRESS_VALGRIND iterations)
# A pass is clean when its specs all pass and it reports nothing: no sanitizer report, no
# valgrind error, no leak. Suppressions (fuzz/lsan.supp, scripts/valgrind.supp) may name
# third-party code only; a line naming rrpc fails the run.
#
# Specs left out of the ASan passes (ASAN_FILTER_OUT, a busted --filter-out pattern): the
# ones that measure the peak RSS of a child process (spec 15). ASan's allocator keeps freed
# blocks in quarantine and grows a buffer by copying it, so the number means nothing there;
# and their child is a plain `lua5.4`, which cannot load the sanitized core.so. The normal
# suite and the valgrind pass run them.
# Groups whose work happens in other processes (ASAN_EXCLUDE_TAGS: nginx gateways, the
# command line as a process, MQTT devices) are left out of the ASan passes too: the
# sanitized core does little there but wait, and they would double the passes' time.
#
# Logs: build/check-memory/<pass>.log (valgrind's own: <pass>.valgrind.log). One line per
# pass, then "check-memory: N of M passes clean"; exit status 0 only when all are.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ci=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) ci=1 ;;
    --only) only=",$2,"; shift ;;
    *) echo "check-memory: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

OUT=build/check-memory
ASAN_LUA=$ROOT/build/asan/lua5.4
BUSTED=$(command -v busted || echo /usr/bin/busted)
GC_STRESS_ASAN=${GC_STRESS_ASAN:-2000}
GC_STRESS_VALGRIND=${GC_STRESS_VALGRIND:-400}
ASAN_FILTER_OUT=${ASAN_FILTER_OUT:-peak memory within the limit}
ASAN_EXCLUDE_TAGS=${ASAN_EXCLUDE_TAGS:-openresty,cli,mqtt}
# The valgrind and asan-gc passes of CI: the specs that drive rrpc.core (signing, calls, errors, batches,
# credentials, HTTPS, hostile servers, bad input, never twice, scrubbed tokens, HTTP/2, response
# headers); left to `make check-memory`: the build
# and install specs, the emulator's own specs, the OpenResty gateway (nginx's LuaJIT) and
# the secret scan, which run no rrpc.core code of their own in this process.
CORE_CI_SPECS=${CORE_CI_SPECS:-01 02 03 04 06 09 12 13 15 16 17 18 25 27}
mkdir -p "$OUT"

for f in fuzz/lsan.supp scripts/valgrind.supp; do
  if grep -v '^[[:space:]]*#' "$f" | grep -Eiq 'rrpc|src/|core\.so'; then
    echo "check-memory: $f suppresses rrpc's own code; only third-party code may be suppressed" >&2
    exit 1
  fi
done

export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export LSAN_OPTIONS="suppressions=$ROOT/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
VALGRIND=(valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect
          --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --trace-children=no
          --child-silent-after-fork=yes --keep-debuginfo=yes --num-callers=40 --suppressions="$ROOT/scripts/valgrind.supp")

passes=0 clean=0 unclean=()
SANITIZER_REPORT='ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)'

wanted() { [ -z "$only" ] || [[ "$only" == *",$1,"* ]]; }

# The spec files for busted: all of spec/, or those whose names start with the given numbers.
spec_files() {
  local n f
  if [ $# -eq 0 ]; then
    echo spec
    return
  fi
  for n in "$@"; do
    for f in spec/*/"$n"-*_spec.lua; do [ -f "$f" ] && echo "$f"; done
  done
}

# "12 successes / 0 failures / 0 errors / 0 pending : 3.2 seconds" from a log, or nothing
busted_summary() {
  grep -E '^[0-9]+ successe?s? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$1" | tail -n 1
}

# finish PASS STATUS LOG DETAIL PROBLEM: one line for the pass; PROBLEM empty when clean
finish() {
  local pass=$1 log=$2 detail=$3 problem=$4 seconds=$5
  passes=$((passes + 1))
  if [ -z "$problem" ]; then
    clean=$((clean + 1))
    echo "check-memory $pass: $detail, ${seconds} s: clean"
  else
    unclean+=("$pass")
    echo "check-memory $pass: $detail, ${seconds} s: FAILED: $problem (log: $log)"
    grep -E -A 25 "$SANITIZER_REPORT" "$log" | head -n 60 | sed 's/^/    /'
    grep -E '^(Failure|Error) ->' "$log" | head -n 20 | sed 's/^/    /'
  fi
}

# A busted run: the spec summary must show no failure, and the log no sanitizer report.
check_busted_log() {
  local log=$1 status=$2 summary failures errors
  summary=$(busted_summary "$log")
  if [ -z "$summary" ]; then
    echo "busted ended without its summary (exit $status)"
    return
  fi
  read -r _ _ _ failures _ _ errors _ <<<"$summary"
  if grep -Eq "$SANITIZER_REPORT" "$log"; then
    echo "sanitizer report"
  elif [ "$failures" -ne 0 ] || [ "$errors" -ne 0 ]; then
    echo "$failures failures, $errors errors in the specs"
  elif [ "$status" -ne 0 ]; then
    echo "exit status $status"
  fi
}

# valgrind's verdict from its log: errors, and definite or indirect leaks
check_valgrind_log() {
  local vlog=$1 errors definite indirect
  errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$vlog" | tail -n 1)
  definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$vlog" | tail -n 1 | tr -d ,)
  indirect=$(sed -n 's/.*indirectly lost: \([0-9,]*\) bytes.*/\1/p' "$vlog" | tail -n 1 | tr -d ,)
  if [ -z "$errors" ]; then
    echo "valgrind wrote no summary"
  elif [ "$errors" -ne 0 ] || [ "${definite:-0}" -ne 0 ] || [ "${indirect:-0}" -ne 0 ]; then
    echo "valgrind: $errors errors, ${definite:-0} bytes definitely and ${indirect:-0} indirectly lost"
  fi
}

valgrind_detail() {
  local vlog=$1 errors definite
  errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$vlog" | tail -n 1)
  definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$vlog" | tail -n 1 | tr -d ,)
  echo "valgrind: ${errors:-?} errors, ${definite:-0} bytes definitely lost"
}

# run_asan_suite PASS WHAT SPECS [BUSTED OPTION...]
run_asan_suite() {
  local pass=$1 what=$2 specs=$3 log=$OUT/$1.log started=$SECONDS status summary problem
  shift 3
  # shellcheck disable=SC2086
  "$ASAN_LUA" "$BUSTED" --ignore-lua --cpath=./build/asan/?.so \
    -o plainTerminal --filter-out="$ASAN_FILTER_OUT" --exclude-tags="$ASAN_EXCLUDE_TAGS" "$@" $specs >"$log" 2>&1
  status=$?
  summary=$(busted_summary "$log")
  problem=$(check_busted_log "$log" "$status")
  local extra
  extra=$(sed -n 's/^gc-aggressive: \([0-9]*\) full collections.*/, \1 forced full collections/p' "$log" | tail -n 1)
  finish "$pass" "$log" "$what: ${summary%% :*}${extra}" "$problem" $((SECONDS - started))
}

if wanted asan; then
  run_asan_suite asan "whole suite" spec
fi

if wanted asan-gc; then
  if [ -n "$ci" ]; then
    # shellcheck disable=SC2086
    run_asan_suite asan-gc "CI subset (specs $CORE_CI_SPECS)" "$(spec_files $CORE_CI_SPECS)" \
      --helper=scripts/gc-aggressive.lua
  else
    run_asan_suite asan-gc "whole suite" spec --helper=scripts/gc-aggressive.lua
  fi
fi

if wanted gc-stress; then
  log=$OUT/gc-stress.log started=$SECONDS
  LUA_CPATH="./build/asan/?.so;;" "$ASAN_LUA" scripts/gc-stress.lua "$GC_STRESS_ASAN" >"$log" 2>&1
  status=$?
  problem=""
  if grep -Eq "$SANITIZER_REPORT" "$log"; then problem="sanitizer report"
  elif [ "$status" -ne 0 ]; then problem="exit status $status"; fi
  detail=$(sed -n 's/^gc-stress: \(.*\): ok$/\1/p' "$log")
  finish gc-stress "$log" "${detail:-gc-stress did not finish}" "$problem" $((SECONDS - started))
fi

if wanted valgrind; then
  log=$OUT/valgrind.log vlog=$OUT/valgrind.valgrind.log started=$SECONDS
  if [ -n "$ci" ]; then
    # shellcheck disable=SC2086
    specs=$(spec_files $CORE_CI_SPECS)
    what="CI subset (specs $CORE_CI_SPECS)"
  else
    specs=$(spec_files)
    what="whole suite"
  fi
  # shellcheck disable=SC2086
  "${VALGRIND[@]}" --log-file="$vlog" lua5.4 "$BUSTED" --ignore-lua --cpath=./build/lua5.4/?.so \
    -o plainTerminal $specs >"$log" 2>&1
  status=$?
  problem=$(check_valgrind_log "$vlog")
  [ -n "$problem" ] || problem=$(check_busted_log "$log" "$status")
  summary=$(busted_summary "$log")
  finish valgrind "$log" "$what: ${summary%% :*}; $(valgrind_detail "$vlog")" "$problem" $((SECONDS - started))
fi

if wanted valgrind-gc; then
  log=$OUT/valgrind-gc.log vlog=$OUT/valgrind-gc.valgrind.log started=$SECONDS
  LUA_CPATH="./build/lua5.4/?.so;;" "${VALGRIND[@]}" --log-file="$vlog" lua5.4 scripts/gc-stress.lua \
    "$GC_STRESS_VALGRIND" >"$log" 2>&1
  status=$?
  problem=$(check_valgrind_log "$vlog")
  [ -n "$problem" ] || { [ "$status" -eq 0 ] || problem="exit status $status"; }
  detail=$(sed -n 's/^gc-stress: \(.*\): ok$/\1/p' "$log")
  finish valgrind-gc "$log" "${detail:-gc-stress did not finish}; $(valgrind_detail "$vlog")" "$problem" \
    $((SECONDS - started))
fi

if [ ${#unclean[@]} -eq 0 ]; then
  echo "check-memory: $clean of $passes passes clean"
else
  echo "check-memory: $clean of $passes passes clean; not clean: ${unclean[*]}"
fi
[ "$clean" -eq "$passes" ]
