#!/usr/bin/env python3
"""Tokenizer speed: l3c's BPE encoder vs tiktoken vs Hugging Face tokenizers, and BPE training time.

Encoding: the whole novels corpus (../shared/data/novels, each file one document, its bytes as they are: BOM and
CRLF kept), the GPT-2 vocabulary (../shared/data/gpt2) loaded by each tokenizer from the same two files, the
same thread count for each (1 and 2 by default). Times are the best of --repeat runs of encoding only (files are
read before the clock starts; every run starts from a fresh tokenizer). Each tokenizer runs in its own process:
  l3c        `l3c tokenizer bench --threads T` (each document cut at safe positions into T parts)
  tiktoken   encode_ordinary per document (T = 1), encode_ordinary_batch(documents, num_threads=T) (T > 1)
  tokenizers encode_batch_fast(documents) with RAYON_NUM_THREADS=T (TOKENIZERS_PARALLELISM=false for T = 1)
The ids of all three are checked to be identical (sha256 of the id stream). Besides wall-clock MB/s the table gives
MB per CPU second (process CPU time, all threads): on a shared machine that number is the one that other processes
disturb least; the load average before and after is printed with the table.

Training: `l3c tokenizer train --vocab-size 8192 --threads T` on the whole novels corpus (wall clock), and for
reference Hugging Face tokenizers' BpeTrainer with the same vocabulary size, pre-tokenisation and normalised text.

Usage (from the repository root, after building):
    python3 scripts/bench_tokenizer.py [--l3c build/l3c] [--threads 1,2] [--repeat 3] [--no-train]
Prints a markdown table. Needs: python3 -m pip install tiktoken tokenizers
"""
import argparse
import array
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

# tiktoken caches files it loads by their path; off, so that a changed file is never read stale.
os.environ["TIKTOKEN_CACHE_DIR"] = ""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def novels(data):
    return sorted(glob.glob(os.path.join(data, "novels", "*.txt")))


def ids_digest(ids_lists):
    h = hashlib.sha256()
    for ids in ids_lists:
        h.update(array.array("I", ids).tobytes())
    return h.hexdigest()


def worker(args):
    """Runs inside a child process: times one reference tokenizer and prints one JSON line."""
    texts = [open(p, encoding="utf-8", newline="").read() for p in novels(args.data)]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    gpt2 = os.path.join(args.data, "gpt2")
    best, best_cpu, result = float("inf"), 0.0, None
    for _ in range(args.repeat):
        if args.worker == "tiktoken":
            import tiktoken
            from tiktoken.load import data_gym_to_mergeable_bpe_ranks
            ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(gpt2, "vocab.bpe"), os.path.join(gpt2, "encoder.json"))
            enc = tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                    special_tokens={"<|endoftext|>": 50256})
            start, cpu = time.perf_counter(), time.process_time()
            if args.threads == 1:
                result = [enc.encode_ordinary(t) for t in texts]
            else:
                result = enc.encode_ordinary_batch(texts, num_threads=args.threads)
        else:
            from tokenizers import Tokenizer, models, pre_tokenizers
            tok = Tokenizer(models.BPE.from_file(os.path.join(gpt2, "encoder.json"), os.path.join(gpt2, "vocab.bpe")))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
            start, cpu = time.perf_counter(), time.process_time()
            result = [e.ids for e in encode(texts)]
        if time.perf_counter() - start < best:
            best, best_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": best, "cpu_seconds": best_cpu, "bytes": nbytes, "tokens": sum(map(len, result)),
                      "digest": ids_digest(result)}))


def run_json(command, env=None):
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def hf_train_seconds(data, vocab_size, threads):
    code = f"""
import glob, json, os, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
files = sorted(glob.glob(os.path.join({data!r}, "novels", "*.txt")))
def texts():
    for p in files:
        t = open(p, encoding="utf-8", newline="").read()
        yield (t[1:] if t.startswith("\\ufeff") else t).replace("\\r\\n", "\\n")
start = time.perf_counter()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size={vocab_size}, special_tokens=["<|endoftext|>"], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(texts(), trainer=trainer)
print(json.dumps({{"seconds": time.perf_counter() - start, "vocab": tok.get_vocab_size()}}))
"""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
    return run_json([sys.executable, "-c", code], env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--l3c", default=os.path.join(ROOT, "build", "l3c"))
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="skip the training benchmark")
    parser.add_argument("--no-hf-train", action="store_true", help="skip Hugging Face's training for reference")
    parser.add_argument("--worker", choices=["tiktoken", "tokenizers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = [int(t) for t in str(args.threads).split(",")] if args.worker is None else int(args.threads)
    if args.worker:
        return worker(args)

    gpt2 = os.path.join(args.data, "gpt2")
    files = novels(args.data)
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.bin")
        for threads in args.threads:
            ours = run_json([args.l3c, "tokenizer", "bench", "--tokenizer", gpt2, "--threads", str(threads),
                             "--repeat", str(args.repeat), "--ids-out", ids_path, "--json"] + files)
            digest = hashlib.sha256(open(ids_path, "rb").read()).hexdigest()
            rows.append(("l3c", threads, ours["bytes"], ours["seconds"], ours["cpu_seconds"], ours["tokens"], digest))
            for name in ("tiktoken", "tokenizers"):
                env = dict(os.environ, RAYON_NUM_THREADS=str(threads),
                           TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
                r = run_json([sys.executable, os.path.abspath(__file__), "--worker", name, "--threads", str(threads),
                              "--repeat", str(args.repeat), "--data", args.data], env)
                rows.append((name, threads, r["bytes"], r["seconds"], r["cpu_seconds"], r["tokens"], r["digest"]))
            for row in rows[-3:]:
                print(f"# {row[0]} threads={row[1]}: {row[2] / 1e6 / row[3]:.1f} MB/s", file=sys.stderr)

        load = os.getloadavg()[0]
        print(f"Encoding the novels corpus ({len(files)} files, {rows[0][2] / 1e6:.1f} MB), GPT-2 vocabulary, "
              f"best of {args.repeat} (load average before: {load_before:.1f}, after: {load:.1f}):\n")
        print("| tokenizer | threads | seconds | MB/s | CPU seconds | MB per CPU second | tokens | ids identical |")
        print("|---|---|---|---|---|---|---|---|")
        reference = rows[0][6]  # l3c's ids at the first thread count
        for name, threads, nbytes, seconds, cpu, tokens, digest in rows:
            same = "yes" if digest == reference else "**NO**"
            print(f"| {name} | {threads} | {seconds:.2f} | {nbytes / 1e6 / seconds:.1f} | {cpu:.2f} | "
                  f"{nbytes / 1e6 / cpu:.1f} | {tokens} | {same} |")

        if not args.no_train:
            print("\nTraining an 8192-token vocabulary on the novels corpus (wall clock):\n")
            print("| trainer | threads | seconds | merges |")
            print("|---|---|---|---|")
            for threads in args.threads:
                start = time.perf_counter()
                r = run_json([args.l3c, "tokenizer", "train", "--vocab-size", "8192", "--threads", str(threads),
                              "--out", os.path.join(tmp, f"tok{threads}"), "--json"] + files)
                print(f"| l3c tokenizer train | {threads} | {time.perf_counter() - start:.2f} | {r['merges']} |")
                if not args.no_hf_train:
                    h = hf_train_seconds(args.data, 8192, threads)
                    print(f"| tokenizers BpeTrainer | {threads} | {h['seconds']:.2f} | {h['vocab'] - 257} |")
    if any(row[6] != reference for row in rows):
        sys.exit("the tokenizers' ids differ")


if __name__ == "__main__":
    main()
