#!/usr/bin/env bash
# Data parallelism on the CPU, measured: for the tiny dense, L3 and MoE models (byte-level Tiny Shakespeare) and an
# L3 model with an 8K BPE vocabulary (configs/cpu/l3.json with v = 65536 rows per layer, on Tiny Shakespeare in a
# BPE trained here; its LZW allocation, and a uniform one of 8 rows per token), tokens/s of 2 ranks x 1 thread (mpirun) against 1 rank x 2 threads at the same global batch,
# and the bytes a step's gradient reduction passes to MPI (per rank, as the metrics record them): dense, L3 with
# and without the row-sparse reduction, MoE. Then, for the paper configs, the bytes a step would move at 8 ranks
# and the time that takes at NVLink (450 GB/s) and InfiniBand (50 GB/s) rates (l3c inspect --world-size 8).
# Prints markdown tables.
#
#   bash scripts/bench_dist.sh [STEPS]         (default 12 steps per run; the first is left out of tokens/s)
#   MODELS="dense l3" bash scripts/bench_dist.sh   (a subset of: dense l3 moe l3-bpe8k l3-bpe8k-uniform)
#   WORK_DIR=DIR keeps the prepared data and runs there (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
l3c_setup l3c
l3c="$(l3c_bin)"
steps="${1:-12}"
work="${WORK_DIR:-$(mktemp -d)}"
mpirun="mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -np 2"
export L3C_CPU_PEAK_GFLOPS=100  # MFU is not measured here

text=../shared/data/tinyshakespeare/input.txt
[ -f "$text" ] || die "$text is missing (the shared data folder beside the checkout)"
bytes="$work/bytes"
[ -f "$bytes/manifest.json" ] || "$l3c" prepare --tokenizer bytes --out "$bytes" --val-fraction 0.1 "$text" > /dev/null 2>&1
bpe="$work/bpe8k"
if [ ! -f "$bpe/manifest.json" ]; then
  "$l3c" tokenizer train --vocab-size 8192 --out "$work/tok8k" "$text" > /dev/null 2>&1
  "$l3c" prepare --tokenizer "$work/tok8k" --out "$bpe" --val-fraction 0.1 "$text" > /dev/null 2>&1
fi

# summary FIELD of metrics.jsonl, and the mean of a per-step FIELD (steps after the first)
summary_field() { python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print([x for x in r if x.get('summary')][-1][sys.argv[2]])" "$1" "$2"; }
step_mean() { python3 -c "
import json,sys
r=[json.loads(l) for l in open(sys.argv[1])]
v=[x[sys.argv[2]] for x in r if sys.argv[2] in x and x.get('step',0)>1]
print(sum(v)/len(v) if v else 0)" "$1" "$2"; }

declare -A configs=(
  [dense]="configs/tiny/dense.json --set data.train=$bytes/train_000000.bin --set data.val="
  [l3]="configs/tiny/l3.json --set data.train=$bytes/train_000000.bin --set data.val= --set model.l3.allocation.data=$bytes/train_000000.bin"
  [moe]="configs/tiny/moe.json --set data.train=$bytes/train_000000.bin --set data.val="
  [l3-bpe8k]="configs/cpu/l3.json --set data.train=$bpe/train_000000.bin --set data.val= --set data.tokenizer=$work/tok8k \
--set model.l3.allocation.data=$bpe/train_000000.bin --set model.l3.v=65536"
  [l3-bpe8k-uniform]="configs/cpu/l3.json --set data.train=$bpe/train_000000.bin --set data.val= --set data.tokenizer=$work/tok8k \
--set model.l3.allocation.method=uniform --set model.l3.allocation.data= --set model.l3.v=65536"
)
common="--set train.steps=$steps --set train.warmup_steps=1 --set checkpoint.every=0 --set eval.every=0"

echo "| model | 1 rank x 2 threads (tok/s) | 2 ranks x 1 thread (tok/s) | ratio | reduction per step and rank | of which row tables | table rows reduced |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for model in ${MODELS:-dense l3 moe l3-bpe8k l3-bpe8k-uniform}; do
  args="${configs[$model]} $common"
  one="$work/run_${model}_one"; rm -rf "$one"
  "$l3c" train $args --set train.threads=2 --set run.dir="$one" > /dev/null 2>&1 || die "$model: 1 rank failed"
  variants=("sparse:--set dist.row_sparse=true")
  [[ $model == l3* ]] && variants+=("dense:--set dist.row_sparse=false")
  for variant in "${variants[@]}"; do
    name="${variant%%:*}"; extra="${variant#*:}"
    two="$work/run_${model}_two_$name"; rm -rf "$two"
    $mpirun "$l3c" train $args --set train.threads=1 $extra --set run.dir="$two" > "$two.log" 2>&1 || die "$model: 2 ranks failed ($two.log)"
    t1=$(summary_field "$one/metrics.jsonl" tokens_per_second); t2=$(summary_field "$two/metrics.jsonl" tokens_per_second)
    comm=$(step_mean "$two/metrics.jsonl" comm_bytes)
    rows=$(step_mean "$two/metrics.jsonl" table_rows_reduced); total_rows=$(step_mean "$two/metrics.jsonl" table_rows)
    table=$(step_mean "$two/metrics.jsonl" comm_table_bytes); table_full=$(step_mean "$two/metrics.jsonl" comm_table_full_bytes)
    seconds=$(step_mean "$two/metrics.jsonl" comm_seconds)
    label="$model"; [[ $model == l3* ]] && label="$model (row-sparse $([ "$name" = sparse ] && echo on || echo off))"
    python3 - "$label" "$t1" "$t2" "$comm" "$rows" "$total_rows" "$table" "$table_full" "$seconds" <<'PY'
import sys
label = sys.argv[1]
t1, t2, comm, rows, total, table, table_full, seconds = map(float, sys.argv[2:10])
tables = rows_text = "-"
if total > 0:
    tables = f"{table / 1e6:.2f} MB (whole: {table_full / 1e6:.2f} MB)"
    rows_text = f"{rows / total:.1%} of {total:.0f}"
print(f"| {label} | {t1:,.0f} | {t2:,.0f} | {t2 / t1:.2f} | {comm / 1e6:.2f} MB in {seconds * 1e3:.0f} ms | {tables} | {rows_text} |")
PY
  done
done

echo
echo "Paper configs at 8 ranks (bf16 parameters, f32 gradients; a ring all-reduce sends 2 x 7/8 of the payload per rank):"
echo
echo "| config | payload per step | of which row tables (L3, untied embedding) | sent per rank | at 450 GB/s | at 50 GB/s | memory per GPU (zero 0 / zero 1) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for config in configs/paper/dense_800m.json configs/paper/l3_800m.json configs/paper/moe_800m.json; do
  for zero in 0; do
    json=$("$l3c" inspect "$config" --world-size 8 --set train.device=cuda --set train.precision=bf16 \
      --set train.zero=$zero --json 2>/dev/null | tail -n 1)
    python3 - "$config" "$json" <<'PY'
import json, sys
config, j = sys.argv[1], json.loads(sys.argv[2])
c, m = j["communication"], j["memory_bytes"]
gb = lambda x: f"{x / 1e9:.2f} GB"
ring = c["ring_bytes_per_rank"]
print(f"| {config} | {gb(c['payload_bytes'])} | {gb(c['table_bytes'])} | {gb(ring)} | {1e3 * ring / 450e9:.1f} ms | "
      f"{1e3 * ring / 50e9:.1f} ms | {m['total'] / 2**30:.1f} / {c['other_zero_total_bytes'] / 2**30:.1f} GiB |")
PY
  done
done
