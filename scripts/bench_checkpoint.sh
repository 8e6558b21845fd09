#!/usr/bin/env bash
# Checkpoint write and read speed for the tiny dense model (3.0M parameters) and a 97.5M-parameter dense model
# (configs/tiny/dense.json with d_model 768, 12 layers, 12 heads, ffn 2048, vocabulary 8192), on synthetic token
# shards. Each model trains 3 steps with a checkpoint after every step and stops after step 2 (two writes), then
# resumes with --resume auto (the checkpoint of step 2 is verified: every byte read and hashed, then loaded).
# Prints the trainer's own checkpoint log lines and one markdown row per model.
#
#   bash scripts/bench_checkpoint.sh                       (L3C_BIN, or builds build/l3c)
#   DROP_CACHES=1 bash scripts/bench_checkpoint.sh ...     (as root: empty the page cache before resuming, so the
#                                                           read comes from the disk, not from memory)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
l3c_setup l3c
l3c="$(l3c_bin)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'EOF'
import random, struct, sys
work = sys.argv[1]
for name, vocab in (("tiny.bin", 256), ("v8192.bin", 8192)):
    rng = random.Random(1)
    n = 200_000
    tokens = [rng.randrange(vocab) for _ in range(n)]
    header = [20240520, 1, n] + [0] * 253
    with open(f"{work}/{name}", "wb") as f:
        f.write(struct.pack("<256i", *header) + struct.pack(f"<{n}H", *tokens))
EOF

common="--set data.val= --set train.steps=3 --set train.warmup_steps=0 --set checkpoint.every=1 --set checkpoint.keep=3"
declare -A models=(
  [tiny]="--set data.train=$work/tiny.bin"
  [100m]="--set data.train=$work/v8192.bin --set model.vocab_size=8192 --set model.d_model=768 --set model.n_layers=12 \
--set model.n_heads=12 --set model.n_kv_heads=12 --set model.ffn_hidden=2048 --set data.seq_len=64 --set train.micro_batch=1 \
--set train.batch_tokens=64"
)
for model in tiny 100m; do
  run="$work/run_$model"
  args="configs/tiny/dense.json $common ${models[$model]} --set run.dir=$run"
  "$l3c" train $args --stop-at 2 2> "$work/write_$model.log" > /dev/null
  [ "${DROP_CACHES:-0}" = 1 ] && sync && echo 3 > /proc/sys/vm/drop_caches
  "$l3c" train $args --resume auto 2> "$work/read_$model.log" > /dev/null
  echo "== $model"
  grep -h "checkpoint .*MB/s\|resume: checkpoint of" "$work/write_$model.log" "$work/read_$model.log"
  write=$(grep -h "checkpoint .*MB/s" "$work/write_$model.log" | sed -E 's/.*: ([0-9.]+) MB in ([0-9.]+)s \(([0-9]+) MB\/s\).*/\1 MB, \2 s, \3 MB\/s/' | paste -sd ';' -)
  read=$(grep -h "resume: checkpoint of" "$work/read_$model.log" | sed -E 's/.*of ([0-9.]+) MB verified in ([0-9.]+)s and loaded in ([0-9.]+)s \(([0-9]+) MB\/s in all\).*/\1 MB: verify \2 s + load \3 s, \4 MB\/s/')
  echo "| $model | $write | $read |"
done
