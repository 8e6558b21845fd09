#!/usr/bin/env bash
# l3c vs PyTorch eager on the CPU: the same config, the same thread count, full training steps
# (forward, backward over every micro-batch, clipping, AdamW). Prints a markdown row for
# docs/benchmarks.md.
#
# Usage: scripts/bench_cpu.sh [CONFIG] [THREADS] [STEPS]    (defaults: configs/tiny/dense.json, nproc, 10)
# PyTorch runs under Debian's python3-torch; a fair baseline needs an optimised BLAS behind it
# (libopenblas0-pthread, installed here if missing), not the reference BLAS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
config="${1:-configs/tiny/dense.json}"
threads="${2:-$(nproc)}"
steps="${3:-10}"

scripts/install_deps.sh libopenblas0-pthread
l3c_setup l3c

ours=$("$(l3c_bin)" bench "$config" --steps "$steps" --warmup 2 --set train.threads="$threads" --json | json_last_line)
# PyTorch twice: BLAS with the same threads, and single-threaded BLAS under torch's threads; the faster counts.
theirs=""
for blas_threads in "$threads" 1; do
  run=$(OPENBLAS_NUM_THREADS=$blas_threads /usr/bin/python3 scripts/bench_torch.py "$config" --threads "$threads" \
        --steps "$steps" --warmup 2 | tail -1)
  theirs=$(python3 -c 'import json,sys; a,b=sys.argv[1],sys.argv[2]; print(b if not a or json.loads(b)["tokens_per_second"] > json.loads(a)["tokens_per_second"] else a)' "$theirs" "$run")
done
python3 - "$config" "$threads" "$ours" "$theirs" <<'PY'
import json, sys, datetime, platform
config, threads, ours, theirs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
ratio = ours["tokens_per_second"] / theirs["tokens_per_second"]
print(f"| {datetime.date.today()} | {cpu} | {config} | {threads} | {ours['tokens_per_second']:.0f} "
      f"| {100 * ours['mfu']:.1f}% | {theirs['tokens_per_second']:.0f} (torch {theirs['torch_version']}) | {ratio:.2f}x |")
PY
