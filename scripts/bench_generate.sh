#!/usr/bin/env bash
# Inference speed against Hugging Face transformers on the CPU: for the tiny dense config and the 124M config, at
# batch 1 and 8, l3c's decode tokens/s over transformers' `generate` with its KV cache (same model, prompts and
# threads; scripts/bench_generate_hf.py does one comparison). Then `l3c bench --generate` of the tiny L3 config with
# its tables on the device (here: in memory) and mapped from the checkpoint, page cache warm and dropped.
#
#   bash scripts/bench_generate.sh [OUT_DIR]     (THREADS=2 by default; L3C_BIN or builds build/l3c)
# Writes OUT_DIR/results.jsonl (one JSON object per comparison) and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
out="${1:-out/bench_generate}"
threads="${THREADS:-2}"
l3c_setup l3c
l3c="$(l3c_bin)"
mkdir -p "$out"
: > "$out/results.jsonl"
py="PYTHONPATH=.cache/python-hf /usr/bin/python3"
for config in configs/tiny/dense.json configs/gpu/dense_124m.json; do
  for batch in 1 8; do
    work="$out/work_$(basename "$config" .json)_b$batch"
    rm -rf "$work"
    env PYTHONPATH=.cache/python-hf OMP_NUM_THREADS="$threads" /usr/bin/python3 scripts/bench_generate_hf.py --l3c "$l3c" \
      --config "$config" --work "$work" --batch "$batch" --threads "$threads" | tee "$work.log"
    tail -n 1 "$work.log" >> "$out/results.jsonl"
    rm -rf "$work"
  done
done

# L3 tables: in memory against read in place from the checkpoint (mmap), for the tiny L3 config with random weights.
l3_work="$out/l3_model"
rm -rf "$l3_work"
for tables in device mmap; do
  OMP_NUM_THREADS="$threads" "$l3c" bench --generate configs/tiny/l3.json --device cpu --threads "$threads" \
    --batch 1 --prompt-tokens 64 --new-tokens 64 --l3-tables "$tables" --json | tail -n 1 >> "$out/results.jsonl"
done

/usr/bin/python3 - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| model | batch | l3c decode tok/s | transformers decode tok/s | ratio | same greedy tokens |")
print("| --- | --- | --- | --- | --- | --- |")
for r in rows:
    if "decode_ratio" in r:
        print(f"| {r['config']} ({r['params'] / 1e6:.1f}M) | {r['batch']} | {r['l3c_decode_tokens_per_second']:.1f} | "
              f"{r['hf_decode_tokens_per_second']:.1f} | {r['decode_ratio']:.2f} | {r['same_greedy_tokens']} |")
print()
print("| L3 tables | decode tok/s | prefill tok/s | step median ms | step p99 ms | peak RSS MiB | L3 bytes/token |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    if r.get("framework") == "l3c":
        print(f"| {r['l3_tables']} | {r['decode_tokens_per_second']:.1f} | {r['prefill_tokens_per_second']:.0f} | "
              f"{1e3 * r['decode_step_median_seconds']:.2f} | {1e3 * r['decode_step_p99_seconds']:.2f} | "
              f"{r['peak_resident_bytes'] / 2**20:.0f} | {r['l3_bytes_per_token']:.0f} |")
PY
