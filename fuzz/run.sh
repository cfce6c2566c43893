#!/usr/bin/env bash
# Runs libFuzzer targets for a while each (make fuzz, make fuzz-ci):
#
#   FUZZ_DIR=build/fuzz fuzz/run.sh SECONDS TARGET...
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read only) and from
# what earlier runs found ($FUZZ_DIR/corpus/<target>/, where new inputs go). Its log is
# $FUZZ_DIR/logs/<target>.log; a crash, a broken property, a leak or a hang leaves the input
# in $FUZZ_DIR/artifacts/<target>/ (reproduce: $FUZZ_DIR/bin/<target> <that file>).
# One line per target, then "fuzz: N targets, N failed"; the exit status is 0 only when
# every target ran its time without a finding.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: fuzz/run.sh SECONDS TARGET...}
shift
dir=${FUZZ_DIR:-build/fuzz}
failed=0 ran=0

for t in "$@"; do
  bin=$dir/bin/$t corpus=$dir/corpus/$t artifacts=$dir/artifacts/$t log=$dir/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$dir/logs"
  options=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
           -artifact_prefix="$artifacts/")
  [ -f "fuzz/$t.dict" ] && options+=(-dict="fuzz/$t.dict")
  ran=$((ran + 1))
  if [ ! -x "$bin" ]; then
    echo "fuzz $t: $bin is missing (make fuzz-build)"
    failed=$((failed + 1))
    continue
  fi
  "$bin" "${options[@]}" "$corpus" "fuzz/corpus/$t" >"$log" 2>&1
  status=$?

  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  # "#123 DONE cov: 181 ft: 700 corp: 250/12Kb lim: 261 exec/s: 9084 rss: 426Mb"
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  summary="${execs:-0} execs in ${seconds} s (${rate:-0}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
  if [ "$status" -eq 0 ]; then
    echo "fuzz $t: $summary: ok"
  else
    failed=$((failed + 1))
    echo "fuzz $t: $summary: FAILED (exit $status); the log: $log"
    # what broke and where: the sanitizer's or the property's report
    grep -E -A 12 'property violated|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log" |
      head -n 40 | sed 's/^/    /'
    ls "$artifacts" 2>/dev/null | sed "s|^|    artefact: $artifacts/|"
  fi
done

echo "fuzz: $ran targets, $failed failed"
[ "$failed" -eq 0 ]
