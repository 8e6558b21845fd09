#!/usr/bin/env bash
# The main job: builds l3c, turns a text corpus into token shards (cached), trains the tiny model on
# the CPU, evaluates it and prints a text sample.
#
# Usage: scripts/quickstart.sh [TEXT_FILE_OR_FOLDER]     (default: Tiny Shakespeare from ../shared/data)
# Environment: CONFIG (default configs/tiny/dense.json), STEPS (default: the config's), RUN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

input="${1:-../shared/data/tinyshakespeare/input.txt}"
config="${CONFIG:-configs/tiny/dense.json}"
[ -e "$input" ] || { echo "error: $input: no such file or folder" >&2; exit 2; }

scripts/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF > /dev/null
cmake --build build -j "$(nproc)" --target l3c
l3c=build/l3c

# Shards are cached per input: a second run with the same input skips the work.
key=$(printf '%s' "$(realpath "$input")" | sha256sum | cut -c1-12)
data="data/quickstart-$key"
if [ -f "$data/train_000000.bin" ] && [ -f "$data/val_000000.bin" ]; then
  echo "== data: reusing $data (shards of $input)"
else
  echo "== data: $input -> $data"
  $l3c prepare --out "$data" --val-fraction 0.1 "$input"
fi

run_dir="${RUN_DIR:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}"
overrides=(--set "data.train=$data/train_000000.bin" --set "data.val=$data/val_000000.bin" --set "run.dir=$run_dir")
[ -n "${STEPS:-}" ] && overrides+=(--set "train.steps=$STEPS")

echo "== train: $config -> $run_dir"
$l3c train "$config" "${overrides[@]}"

echo "== eval: the whole validation split"
$l3c eval --checkpoint "$run_dir" --data "$data/val_000000.bin"

echo "== sample"
$l3c generate --checkpoint "$run_dir" --prompt "ROMEO:" --tokens 400 --temperature 0.8 --top-k 40
