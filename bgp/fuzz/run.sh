#!/usr/bin/env bash
# Run every fuzz target of the bgp crate for SECONDS each (default 60) and
# print executions and crashes per target. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1
# enables the sanitizer flags it uses.
#
#   bgp/fuzz/run.sh 180          # 3 minutes per target
#   bgp/fuzz/run.sh build        # only build the targets (what CI can do)
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
secs=${1:-60}
targets=$(cargo fuzz list)
if [[ $secs == build ]]; then
  cargo fuzz build -O --debug-assertions
  echo "built: $targets"
  exit 0
fi
mkdir -p logs corpus
printf '%-15s %14s %8s %10s\n' target executions crashes exec/s
fail=0
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  set +e
  cargo fuzz run -O --debug-assertions "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=4200 -print_final_stats=1 \
    >"logs/$t.log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  after=$(find "artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  if ((rc != 0 && crashes == 0)); then crashes="rc=$rc"; fail=1; fi
  if [[ $crashes != 0 ]]; then fail=1; fi
  printf '%-15s %14s %8s %10s\n' "$t" "$execs" "$crashes" "$rate"
done
exit $fail
