#!/usr/bin/env bash
# Zero-shot evaluation speed: examples per second of `l3c eval --tasks` for each task, and of the same examples scored
# by the PyTorch reference (scripts/eval_reference.py --dtype float32: lm-evaluation-harness-style requests, sorted
# by length and run in right-padded batches of the same --batch-tokens), on the same threads; and held-out text
# tokens per second (l3c only). Prints one markdown row per (checkpoint, task) with the ratio l3c / PyTorch.
#
#   bash scripts/bench_eval.sh CHECKPOINT... [env: L3C_BIN=build/l3c LIMIT=100 THREADS=2 TASKS=all BATCH_TOKENS=4096
#                                                  TEXT=../shared/data/heldout/ENG18720_Lynn.txt TEXT_BYTES=200000
#                                                  TOKENIZER=DIR (default: the run's data.tokenizer)]
#
# Needs torch in /usr/bin/python3 (Debian's). A BPE run's tokenizer is used by the reference through
# `l3c tokenizer encode` when tiktoken is missing (tokenizing is not timed on either side).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
l3c_setup l3c
l3c="$(l3c_bin)"
limit="${LIMIT:-100}"
threads="${THREADS:-2}"
tasks="${TASKS:-all}"
batch="${BATCH_TOKENS:-4096}"
text="${TEXT:-../shared/data/heldout/ENG18720_Lynn.txt}"
text_bytes="${TEXT_BYTES:-200000}"
tokenizer=()
if [[ -n "${TOKENIZER:-}" ]]; then tokenizer=(--tokenizer "$TOKENIZER"); fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "| checkpoint | task | examples | l3c examples/s | PyTorch examples/s | ratio |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for checkpoint in "$@"; do
  name="$(basename "$checkpoint")"
  OMP_NUM_THREADS="$threads" "$l3c" eval --checkpoint "$checkpoint" --tasks "$tasks" --limit "$limit" --threads "$threads" \
    --batch-tokens "$batch" --device cpu --text "$text" --max-bytes "$text_bytes" "${tokenizer[@]}" --json > "$work/l3c.json" 2> "$work/l3c.log"
  /usr/bin/python3 scripts/eval_reference.py --checkpoint "$checkpoint" --tasks "$tasks" --limit "$limit" \
    --threads "$threads" --dtype float32 --batch-tokens "$batch" --l3c "$l3c" "${tokenizer[@]}" > "$work/ref.log" 2>&1
  python3 - "$work/l3c.json" "$work/ref.log" "$name" <<'PY'
import json, sys
ours = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
ref = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])["tasks"]
for task, r in ours["tasks"].items():
    a, b = r["examples_per_second"], ref[task]["examples_per_second"]
    print(f"| {sys.argv[3]} | {task} | {r['examples']} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
t = ours["text"]
print(f"| {sys.argv[3]} | held-out text | {t['tokens']} tokens | {t['tokens_per_second']:.0f} tokens/s | | |")
PY
done
