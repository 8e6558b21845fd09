#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/: libFuzzer with AddressSanitizer and UndefinedBehaviorSanitizer, clang), replays each
# target's committed corpus (fuzz/corpus/TARGET: seeds and every crash ever found), then fuzzes each target for
# SECONDS, one after the other. New inputs go to BUILD_DIR/fuzz-work/TARGET, never into the committed corpus; a crash
# is written to BUILD_DIR/fuzz-work/crashes/ and ends the script with an error (add the file to fuzz/corpus/TARGET once
# it is fixed). Prints executions per second and coverage per target.
# Usage: scripts/fuzz.sh [SECONDS] [BUILD_DIR] [TARGET...]   (defaults: 30, build-sanitize, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
seconds="${1:-30}"
build_dir="${2:-build-sanitize}"
shift $(( $# < 2 ? $# : 2 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_config fuzz_safetensors fuzz_shard fuzz_trainer_json fuzz_allocation fuzz_tokenizer fuzz_text)
sanitized_build "$build_dir" "${targets[@]}"

export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
work="$build_dir/fuzz-work"
mkdir -p "$work/crashes"
status=0
summary=()
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  [ -d "$corpus" ] || die "$corpus: no seed corpus for $target"
  mkdir -p "$work/$target"
  log="$work/$target.log"
  # Replay: every committed input once. Then fuzz from the corpus and what earlier runs found. A single input may
  # take 10 s at most and allocate 2 GB at most (a larger allocation is reported as a finding); inputs grow to 16 KB
  # (libFuzzer's default stops at the largest seed).
  if ! "$build_dir/fuzz/$target" -runs=0 -timeout=10 -rss_limit_mb=2048 "$corpus" > "$work/$target.replay.log" 2>&1; then
    echo "fuzz: $target: replaying $corpus failed (see $work/$target.replay.log):" >&2
    tail -n 30 "$work/$target.replay.log" >&2
    status=1
    continue
  fi
  if ! "$build_dir/fuzz/$target" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/crashes/$target-" "$work/$target" "$corpus" > "$log" 2>&1; then
    echo "fuzz: $target: found a failing input (see $log and $work/crashes/):" >&2
    grep -A 30 -m 1 "ERROR\|Exception\|==.*==" "$log" >&2 || tail -n 30 "$log" >&2
    status=1
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  last=$(grep -E "^#[0-9]+" "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
  summary+=("$(printf '%-18s %10s runs %8s exec/s  cov %6s  ft %6s' "$target" "$runs" "$speed" "$cov" "$ft")")
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $status
