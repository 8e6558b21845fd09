#!/usr/bin/env bash
# The main job: builds l3c, trains a small BPE tokenizer on a text corpus, turns the corpus into token
# shards, computes the LZW allocation of the L3 tables from the training shards, trains the tiny L3
# model on the CPU, evaluates it and prints a text sample. The tokenizer
# and the shards are cached under data/ (keyed by the input's checksum and the vocabulary size), so a
# second run with the same input goes straight to training. It also prepares data/tiny/, the byte-level Tiny
# Shakespeare shards that configs/tiny/*.json read as they are (`build/l3c train configs/tiny/dense.json`).
#
# Usage: scripts/quickstart.sh [TEXT_FILE_OR_FOLDER]     (default: Tiny Shakespeare from ../shared/data)
# Environment: CONFIG (default configs/tiny/l3.json; configs/tiny/dense.json for the dense baseline), STEPS (default: the config's), RUN_DIR,
#   VOCAB_SIZE (default 1024; "bytes" for byte-level tokens, no tokenizer training), BUILD_DIR (default build),
#   L3C_BIN (a built l3c to use instead of building one).
#
# Why a 1024-token vocabulary: the tiny model has ~3M parameters and Tiny Shakespeare is 1.1 MB. At 1024
# ids the text is ~2.4 bytes per token (460K tokens), so the default 300 steps of 4096 tokens read the
# training split about 3 times, every id is seen ~400 times, and the embedding plus output layer
# (2 x 1024 x 256 = 0.5M parameters) stay a small part of the model. At 2048 ids the corpus shrinks only
# to 2.9 bytes per token while those layers double to 1M parameters whose rarer rows see fewer examples;
# at 256 (bytes) the model spends its context and capacity on spelling.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

input="${1:-../shared/data/tinyshakespeare/input.txt}"
config="${CONFIG:-configs/tiny/l3.json}"
vocab="${VOCAB_SIZE:-1024}"
build="${BUILD_DIR:-build}"
[ -e "$input" ] || die "$input: no such file or folder"
if [ "$vocab" != bytes ] && ! [[ "$vocab" =~ ^[0-9]+$ && "$vocab" -ge 257 ]]; then
  die "VOCAB_SIZE must be an integer >= 257 or 'bytes', got '$vocab'"
fi

BUILD_DIR="$build" l3c_setup l3c
l3c="$(BUILD_DIR="$build" l3c_bin)"

# The data of configs/tiny/: Tiny Shakespeare as byte-level shards, whatever this run's input.
tiny_text=../shared/data/tinyshakespeare/input.txt
if [ ! -f data/tiny/manifest.json ] && [ -f "$tiny_text" ]; then
  echo "== data: $tiny_text -> data/tiny (byte-level, for configs/tiny/)"
  rm -rf data/tiny
  "$l3c" prepare --tokenizer bytes --out data/tiny --val-fraction 0.1 --no-progress "$tiny_text"
fi

# The input's checksum: its bytes, or for a folder every (path, contents) pair, hidden files aside.
if [ -d "$input" ]; then
  input_sum=$( (cd "$input" && find . -type f -not -path '*/.*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
    sha256sum | cut -c1-16)
else
  input_sum=$(sha256sum < "$input" | cut -c1-16)
fi

# The tokenizer: trained once per (input, vocabulary size), into a temporary folder renamed when complete.
if [ "$vocab" = bytes ]; then
  tokenizer=bytes
else
  tokenizer="data/tokenizers/quickstart-$input_sum-v$vocab"
  if [ -f "$tokenizer/encoder.json" ] && [ -f "$tokenizer/vocab.bpe" ]; then
    echo "== tokenizer: reusing $tokenizer"
  else
    echo "== tokenizer: training a $vocab-token byte-level BPE on $input -> $tokenizer"
    rm -rf "$tokenizer.tmp"
    "$l3c" tokenizer train --vocab-size "$vocab" --out "$tokenizer.tmp" "$input"
    rm -rf "$tokenizer" && mv "$tokenizer.tmp" "$tokenizer"
  fi
fi

# The shards: prepared once per (input, tokenizer); manifest.json marks a complete folder.
data="data/quickstart-$input_sum-$vocab"
if [ -f "$data/manifest.json" ]; then
  echo "== data: reusing $data (shards of $input)"
else
  echo "== data: $input -> $data"
  rm -rf "$data"
  "$l3c" prepare --tokenizer "$tokenizer" --out "$data" --val-fraction 0.1 "$input"
fi
vocab_size=$(json_get "$data/manifest.json" tokenizer vocab_size)

run_dir="${RUN_DIR:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}"
overrides=(--set "data.train=$data/train_*.bin" --set "data.val=$data/val_*.bin" --set "data.tokenizer=$tokenizer"
           --set "model.vocab_size=$vocab_size" --set "run.dir=$run_dir")
# An L3 model computes its allocation (rows per token id) from the same training shards at start.
groups=$("$l3c" inspect "$config" --json | json_last_line)
if python3 -c 'import json, sys; sys.exit("l3_table" not in json.loads(sys.argv[1])["params_by_group"])' "$groups"; then
  overrides+=(--set "model.l3.allocation.data=$data/train_*.bin")
fi
# A shorter run keeps the config's warmup share (10% of the steps).
[ -n "${STEPS:-}" ] && overrides+=(--set "train.steps=$STEPS" --set "train.warmup_steps=$((STEPS / 10))")

echo "== train: $config (vocabulary $vocab_size) -> $run_dir"
"$l3c" train "$config" "${overrides[@]}"

echo "== eval: the whole validation split"
"$l3c" eval --checkpoint "$run_dir" --data "$data/val_*.bin"

echo "== sample"
prompt=()
[ "$input" = ../shared/data/tinyshakespeare/input.txt ] && prompt=(--prompt "ROMEO:")
"$l3c" generate --checkpoint "$run_dir" "${prompt[@]}" --tokens 200 --temperature 0.8 --top-k 40
