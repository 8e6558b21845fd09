#!/usr/bin/env python3
"""FineWeb-Edu (the L3 paper's training data) -> JSONL chunks -> l3c token shards.

Streams HuggingFaceFW/fineweb-edu from the Hugging Face hub with the `datasets` streaming API (nothing
is downloaded beyond the documents read), keeps the documents' text, and writes it as JSONL files of
--docs-per-file documents each: OUT/fineweb_edu_000000.jsonl, ... (one {"text": ...} object per line,
in stream order). `l3c prepare --field text OUT` turns them into token shards; with --shards (and
--tokenizer, --l3c) this script runs that step itself. The shards are the same as `l3c prepare --field
text` makes from the original rows, because the chunks keep the documents and their order.

  # 1B tokens-worth of the 10B-token sample (needs internet and `pip install datasets`):
  python3 scripts/data/fineweb_edu.py --name sample-10BT --max-docs 1000000 --out data/fineweb_edu/jsonl \
      --l3c build/l3c --tokenizer data/tokenizers/gpt2 --shards data/fineweb_edu/shards

  # the same from a local JSONL file with FineWeb-Edu's fields (no `datasets` needed):
  python3 scripts/data/fineweb_edu.py --local rows.jsonl --out jsonl_dir

Options: --name is the dataset config ("sample-10BT", "sample-100BT", "sample-350BT", "default" or a
dump such as "CC-MAIN-2024-10"); --min-int-score N keeps documents whose int_score (the educational
classifier's rounded score, 0-5) is at least N (the dataset itself holds scores >= 3); --max-docs
stops early. Chunks are written under a temporary name and renamed when complete.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def hub_rows(name, split):
    # Imported here so that --local works without the `datasets` package.
    try:
        from datasets import load_dataset
    except ImportError:
        sys.exit("error: reading from the hub needs the `datasets` package: pip install datasets "
                 "(or give --local FILE.jsonl)")
    return load_dataset("HuggingFaceFW/fineweb-edu", name=name, split=split, streaming=True)


def local_rows(path):
    with open(path, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}:{number}: not JSON: {e}")
            if not isinstance(row, dict):
                sys.exit(f"error: {path}:{number}: expected a JSON object")
            yield row


class ChunkWriter:
    """JSONL files of at most `per_file` documents, each renamed into place once complete."""

    def __init__(self, out, per_file):
        self.out, self.per_file = out, per_file
        self.index, self.count, self.file, self.temp = 0, 0, None, None
        self.paths = []

    def write(self, text):
        if self.file is None:
            path = os.path.join(self.out, f"fineweb_edu_{self.index:06d}.jsonl")
            self.temp = path + ".tmp"
            self.file = open(self.temp, "w", encoding="utf-8", newline="\n")
            self.paths.append(path)
        self.file.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        self.count += 1
        if self.count == self.per_file:
            self.close()

    def close(self):
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.rename(self.temp, self.paths[-1])
        self.file, self.count = None, 0
        self.index += 1

    def abort(self):
        if self.file is not None:
            self.file.close()
            os.remove(self.temp)
            self.paths.pop()
            self.file = None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the JSONL chunks (created; must hold no chunks)")
    parser.add_argument("--name", default="sample-10BT", help="dataset config on the hub (default sample-10BT)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--local", metavar="FILE", help="read rows from a local JSONL file instead of the hub")
    parser.add_argument("--docs-per-file", type=int, default=100_000, help="documents per JSONL chunk")
    parser.add_argument("--max-docs", type=int, default=0, help="stop after this many documents (0: all)")
    parser.add_argument("--min-int-score", type=int, default=None, help="keep rows with int_score >= N")
    parser.add_argument("--l3c", default="build/l3c", help="the l3c binary (for --shards)")
    parser.add_argument("--tokenizer", default="bytes", help="tokenizer for --shards: a BPE folder or bytes")
    parser.add_argument("--shards", metavar="DIR", help="also run `l3c prepare` into DIR")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--shard-tokens", type=int, default=100_000_000)
    args = parser.parse_args()
    if args.docs_per_file < 1:
        sys.exit("error: --docs-per-file must be >= 1")

    os.makedirs(args.out, exist_ok=True)
    existing = [f for f in os.listdir(args.out) if f.startswith("fineweb_edu_") and f.endswith(".jsonl")]
    if existing:
        sys.exit(f"error: --out {args.out} already holds chunks ({existing[0]}); choose another folder or remove them")

    rows = local_rows(args.local) if args.local else hub_rows(args.name, args.split)
    source = args.local or f"HuggingFaceFW/fineweb-edu ({args.name}, {args.split})"
    writer = ChunkWriter(args.out, args.docs_per_file)
    documents, skipped, text_bytes, start, last = 0, 0, 0, time.time(), 0.0
    try:
        for row in rows:
            text = row.get("text")
            if not isinstance(text, str):
                sys.exit(f"error: {source}: row {documents + skipped + 1} has no string field \"text\"")
            if args.min_int_score is not None and row.get("int_score", 0) < args.min_int_score:
                skipped += 1
                continue
            writer.write(text)
            documents += 1
            text_bytes += len(text.encode("utf-8"))
            now = time.time()
            if now - last > 10:
                last = now
                print(f"fineweb_edu: {documents} documents, {text_bytes / 1e6:.1f} MB, "
                      f"{text_bytes / 1e6 / max(now - start, 1e-9):.1f} MB/s", file=sys.stderr)
            if args.max_docs and documents >= args.max_docs:
                break
        writer.close()
    except BaseException:
        writer.abort()
        raise
    print(f"fineweb_edu: {documents} documents ({text_bytes / 1e6:.1f} MB of text, {skipped} below --min-int-score) "
          f"from {source} -> {len(writer.paths)} JSONL files in {args.out}", file=sys.stderr)
    if documents == 0:
        sys.exit("error: no documents were written")

    if args.shards:
        command = [args.l3c, "prepare", "--tokenizer", args.tokenizer, "--out", args.shards, "--field", "text",
                   "--val-fraction", str(args.val_fraction), "--shard-tokens", str(args.shard_tokens), args.out]
        print("fineweb_edu: " + " ".join(command), file=sys.stderr)
        sys.exit(subprocess.call(command))


if __name__ == "__main__":
    main()
