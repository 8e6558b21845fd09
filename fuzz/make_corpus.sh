#!/usr/bin/env bash
# Writes the seed corpus of every fuzz target into fuzz/corpus/TARGET/seed_* from small valid inputs made by l3c
# itself (a config, shards, a trained checkpoint's trainer.json and weights, an allocation, a trained tokenizer,
# text and JSONL), and the reproducers of the findings that led to the harness (regress_*). Inputs added by hand
# (crash_*: a crash found later, once fixed) are kept. Usage: fuzz/make_corpus.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
l3c="${1:-build}/l3c"
[ -x "$l3c" ] || { echo "error: $l3c: build l3c first" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
corpus=fuzz/corpus
for target in config safetensors shard trainer_json allocation tokenizer text; do
  mkdir -p "$corpus/fuzz_$target"
  rm -f "$corpus/fuzz_$target"/seed_* "$corpus/fuzz_$target"/regress_*
done

# Text and JSONL (prepare's readers), also the training text below.
printf 'First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n' > "$corpus/fuzz_text/seed_text"
printf '{"text": "caf\\u00e9 au lait\\r\\n", "id": 1}\n\n{"text": "x", "meta": {"a": [1, 2.5, null, true]}}\n' \
  > "$corpus/fuzz_text/seed_jsonl"
printf '\xef\xbb\xbfbom, then \xc3\xa9 and a bad byte \xff\r\n' > "$corpus/fuzz_text/seed_bom_invalid_utf8"
for i in $(seq 1 40); do cat "$corpus/fuzz_text/seed_text"; done > "$work/text.txt"

# A tokenizer trained on it: encoder.json, the separator line, vocab.bpe.
"$l3c" tokenizer train --vocab-size 300 --out "$work/tok" "$work/text.txt" > /dev/null
{ cat "$work/tok/encoder.json"; printf '\n--merges--\n'; cat "$work/tok/vocab.bpe"; } > "$corpus/fuzz_tokenizer/seed_trained"

# Shards: uint16 and uint32 (ids below 300 and one above 65535, which the loader then refuses).
"$l3c" prepare --tokenizer "$work/tok" --out "$work/data" --val-fraction 0 --no-progress "$work/text.txt" > /dev/null
head -c 2048 "$work/data/train_000000.bin" > "$corpus/fuzz_shard/seed_u16"
python3 - "$corpus/fuzz_shard/seed_u32" <<'PY'
import struct, sys
tokens = [1, 2, 3, 299, 70000, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
header = struct.pack("<3i", 20240801, 7, len(tokens)) + bytes(4 * 253)
open(sys.argv[1], "wb").write(header + struct.pack(f"<{len(tokens)}I", *tokens))
PY
python3 - "$work/data/train_000000.bin" "$corpus/fuzz_shard/seed_u16" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
count = min(struct.unpack_from("<i", data, 8)[0], 400)
open(sys.argv[2], "wb").write(data[:8] + struct.pack("<i", count) + data[12:1024 + 2 * count])
PY

# A config (with an L3 and an MoE section) and one with overrides after "--set".
cat > "$corpus/fuzz_config/seed_l3_moe" <<JSON
{
  "description": "seed",
  "model": {"vocab_size": 300, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
            "l3": {"after_layers": [1], "v": 600, "k": 4, "allocation": {"method": "uniform"}},
            "moe": {"layers": [0], "experts": 4, "top_k": 2, "expert_hidden": 16}},
  "data": {"train": "train.bin", "seq_len": 16},
  "train": {"steps": 10, "batch_tokens": 64, "micro_batch": 2, "lr": 1e-3, "trainable": ["ffn"]},
  "checkpoint": {"every": 5}, "run": {"dir": "run"}
}
JSON
{ cat configs/tiny/dense.json | grep -v '"extends"'; printf '\n--set\ntrain.lr=3e-4\nmodel.l3.k=8\ntrain.trainable=ffn,norm\n'; } \
  > "$corpus/fuzz_config/seed_dense_set"

# A trained run: its checkpoint's trainer.json and weights, and an allocation.
cat > "$work/c.json" <<JSON
{"model": {"vocab_size": 300, "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32},
 "data": {"train": "$work/data", "seq_len": 8, "tokenizer": "$work/tok"},
 "train": {"steps": 2, "micro_batch": 1}, "run": {"dir": "$work/run"}}
JSON
L3C_CPU_PEAK_GFLOPS=100 "$l3c" train "$work/c.json" > /dev/null 2>&1
cp "$work/run/checkpoints/step_00000002/trainer.json" "$corpus/fuzz_trainer_json/seed_checkpoint"
# A small file with every dtype l3c reads, a scalar, an empty tensor and metadata (as the Python package writes it).
python3 - "$corpus/fuzz_safetensors/seed_dtypes" <<'PY'
import json, struct, sys
tensors = [("a.f64", "F64", [2], struct.pack("<2d", 1.5, -2)), ("b.f32", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
           ("c.i32", "I32", [3], struct.pack("<3i", 7, -1, 0)), ("d.bf16", "BF16", [2], b"\x80\x3f\x00\x40"),
           ("e.scalar", "F32", [], struct.pack("<f", 9)), ("f.empty", "F32", [0, 4], b"")]
header, data = {"__metadata__": {"format": "pt"}}, b""
for name, dtype, shape, raw in tensors:
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * ((8 - len(text) % 8) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(text)) + text + data)
PY
"$l3c" prepare --tokenizer bytes --out "$work/bytes" --val-fraction 0 --no-progress "$work/text.txt" > /dev/null
"$l3c" allocate --data "$work/bytes" --v 512 --k 4 --out "$work/alloc.safetensors" > /dev/null
# The first three bytes choose vocabulary 256 (255 + 1), k 4 (3 + 1) and v 512 (256 + 768 * 85 / 255).
{ printf '\xff\x03\x55'; cat "$work/alloc.safetensors"; } > "$corpus/fuzz_allocation/seed_lzw"
cp "$work/alloc.safetensors" "$corpus/fuzz_safetensors/seed_allocation"
# The reproducers of issue 17's findings, as inputs every CI run replays (regress_*).
python3 - "$corpus" <<'PY'
import json, struct, sys
corpus = sys.argv[1]
def safetensors(header, data=b"\0" * 16):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data
def write(path, data):
    open(f"{corpus}/{path}", "wb").write(data if isinstance(data, bytes) else data.encode())
end = 2**64 - 8
write("fuzz_safetensors/regress_wrapped_offsets", safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [end - 8, end]}}))
write("fuzz_safetensors/regress_fractional_shape", safetensors({"w": {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 16]}}))
write("fuzz_safetensors/regress_negative_shape", safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}))
write("fuzz_safetensors/regress_wrapped_shape", safetensors({"w": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}}))
write("fuzz_config/regress_1e400", '{"model": {"vocab_size": 1e400}}')
write("fuzz_config/regress_deep", '{"model": {"vocab_size": ' + "[" * 200 + "]" * 200 + "}}")
write("fuzz_config/regress_billion_layers", '{"model": {"vocab_size": 256, "d_model": 64, "n_layers": 2000000000, "n_heads": 4, '
      '"ffn_hidden": 128}, "data": {"train": "x", "seq_len": 8}, "train": {"steps": 1}}')
write("fuzz_tokenizer/regress_huge_id", '{"a": 0, "b": 268435456}\n--merges--\n')
header = struct.pack("<3i", 20240520, 1, 4) + bytes(4 * 253)
write("fuzz_shard/regress_count_below_body", header + struct.pack("<8H", *range(8)))
write("fuzz_trainer_json/regress_negative_step", json.dumps({"format": "l3c-checkpoint", "version": 1, "step": -3,
      "tokens_seen": 2.5, "skipped_steps": 0, "data": {"position": 0}, "threads": 1, "world_size": 1}))
write("fuzz_text/regress_1e400_jsonl", '{"text": "x", "score": 1e400}\n')
PY
ls -l "$corpus"/*/seed_* "$corpus"/*/regress_*
