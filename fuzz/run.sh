#!/usr/bin/env bash
# Coverage-guided fuzzing of ringlb's decoders with libFuzzer, on the stable
# toolchain: rustc's SanitizerCoverage pass gives libFuzzer its feedback
# (what `cargo fuzz --sanitizer none` does; its other sanitizers need nightly).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, all targets)
#   FUZZ_RUNS=10000000 fuzz/run.sh 0 [TARGET...]     (a number of executions instead)
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET) plus the
# corpus earlier runs grew (fuzz/corpus/TARGET, not committed), prints its
# executions and coverage at the end, and the run fails on any crash; the
# crashing input is kept in fuzz/artifacts/TARGET/ (make it a regression test).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(packet_path ring_wire config_yaml l7_wire)

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# With an explicit --target, RUSTFLAGS instrument the fuzzed code only, not
# build scripts and proc macros (which cannot link the coverage hooks).
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bins --target "$triple"
bin="target/$triple/release"

status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  dict=()
  [ "$t" = config_yaml ] && dict=(-dict=config_yaml.dict)
  limit=(-max_total_time="$seconds")
  [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
  if ! "$bin/$t" "corpus/$t" "seeds/$t" "${limit[@]}" -max_len=4096 \
      -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${dict[@]}" > "$log" 2>&1; then
    status=1
    echo "fuzz $t: CRASH"
    grep -E "panicked|ERROR|SUMMARY|artifact" "$log" | head -20
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  corpus=$(find "corpus/$t" -type f | wc -l)
  echo "fuzz $t: ${execs:-?} executions, ${cov:-no coverage line}, corpus $corpus inputs"
  rm -f "$log"
done
exit $status
