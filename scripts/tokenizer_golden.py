#!/usr/bin/env python3
"""Golden GPT-2 token ids for tests/test_tokenizer.cpp: tests/golden/gpt2_tokenizer_ids.json.

The ids come from two reference implementations loading the same two files (../shared/data/gpt2/encoder.json
and vocab.bpe): tiktoken (via its data-gym loader, GPT-2's pattern) and Hugging Face tokenizers (BPE model +
ByteLevel pre-tokenizer); the script stops if they disagree on any sample.

Samples (the text itself is stored, so the test needs no data files):
  - from EVERY file of ../shared/data: tinyshakespeare, each novel, each held-out novel (read as bytes decoded
    as UTF-8, so the BOM and CRLF line ends stay), the start of the file plus the windows that score best on
    holding non-ASCII characters, digits, contractions and runs of spaces and newlines;
  - from each evals/*.jsonl file: records whose text fields (query, choices, context, continuation,
    context_options) joined by newlines score best on the same;
  - hand-written edge strings (contractions, white-space rules, Unicode classes, long runs).

Usage (from the repository root; deterministic, the same bytes each run):
    python3 scripts/tokenizer_golden.py [--data ../shared/data] [--out tests/golden/gpt2_tokenizer_ids.json]
Needs: python3 -m pip install tiktoken tokenizers
"""
import argparse
import glob
import hashlib
import json
import os
import random
import re
import sys

import tiktoken
import tokenizers
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

# tiktoken caches files it loads by their path; off, so that a changed file is never read stale.
os.environ["TIKTOKEN_CACHE_DIR"] = ""
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
WINDOW = 200          # characters per window sample
START_WINDOW = 120    # characters of a file's start
CANDIDATES = 400      # random window starts scored per file


def load_tiktoken(folder):
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(folder, "vocab.bpe"), os.path.join(folder, "encoder.json"))
    encoder = json.load(open(os.path.join(folder, "encoder.json"), encoding="utf-8"))
    special = {"<|endoftext|>": encoder["<|endoftext|>"]} if "<|endoftext|>" in encoder else {}
    return tiktoken.Encoding(name="l3c", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)


def load_hf(folder):
    tok = Tokenizer(models.BPE.from_file(os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


CONTRACTION = re.compile(r"'(s|t|re|ve|m|ll|d)")


def score(text):
    """How many of the interesting features a piece of text has."""
    return (any(ord(c) > 127 and c != "\ufeff" for c in text) * 2 + any(c.isdigit() for c in text)
            + bool(CONTRACTION.search(text)) + ("  " in text) + ("\n\n" in text or "\r\n\r\n" in text)
            + any(ord(c) > 127 and c.isalpha() for c in text))


def window_samples(rel, text, rng, count):
    samples = [{"source": rel, "offset": 0, "text": text[:START_WINDOW]}]
    if len(text) <= START_WINDOW:
        return samples
    starts = sorted({rng.randrange(0, max(1, len(text) - WINDOW)) for _ in range(CANDIDATES)})
    # The first non-ASCII letter, wherever it is, is a candidate too (some files have very few).
    for i, c in enumerate(text):
        if ord(c) > 127 and c.isalpha():
            starts.append(max(0, i - WINDOW // 2))
            break
    ranked = sorted(starts, key=lambda s: (-score(text[s:s + WINDOW]), s))
    chosen = []
    for s in ranked:
        if all(abs(s - c) >= WINDOW for c in chosen) and s >= START_WINDOW:
            chosen.append(s)
        if len(chosen) == count:
            break
    for s in sorted(chosen):
        samples.append({"source": rel, "offset": s, "text": text[s:s + WINDOW]})
    return samples


def jsonl_samples(rel, path, rng, count):
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            parts = []
            for key in ("query", "context", "continuation", "choices", "context_options"):
                value = r.get(key)
                if isinstance(value, str):
                    parts.append(value)
                elif isinstance(value, list):
                    parts.extend(v for v in value if isinstance(v, str))
            records.append((line_number, "\n".join(parts)))
    picked = [records[0]]
    pool = rng.sample(records[1:], min(len(records) - 1, CANDIDATES))
    pool.sort(key=lambda r: (-score(r[1]), r[0]))
    picked += sorted(pool[:count - 1])
    return [{"source": rel, "line": n, "text": t[:2 * WINDOW]} for n, t in picked]


EDGE_STRINGS = [
    "", "a", " ", "  ", "\n", "\n\n\n", "\r\n", "\r\n\r\n", "\t", " \t \n ",
    "'s", "'S", "'t", "'re", "'ve", "'m", "'ll", "'d", "'x", "''s", "' s", " 's", "!'s", "s's", "'s's",
    "don't", "DON'T", "I'll", "we're", "they've", "I'm", "she'd", "it's", "rock'n'roll", "o'clock", "'ll've",
    "hello world", "hello  world", "hello   world", "hello\nworld", "hello\n\nworld", "hello \n world",
    "hello\n \nworld", "trailing   ", "   leading", "tab\tand\t\ttabs", "a\u00a0b", "a\u00a0\u00a0b", "\u00a0x",
    "x \u00a0y", "a\u3000b", "a\u2028b", "a\u0085b", "\x1c\x1d\x1e\x1f", "a\x1cb", " \x1c", "\x0b\x0cx",
    "12345678901234567890", "3.14159", "1,000,000", "2024-01-01", "x1y2z3", " 42", "  42", "½²³", "٣٤٥",
    "Ⅻ", "𝟎𝟏", "café", "naïve façade", "Ærøskøbing", "straße", "Ελληνικά", "русский язык", "日本語のテキスト",
    "中文，标点。", "한국어", "עברית", "العربية", "हिन्दी", "e\u0301", "🙂", "👍🏽", "👨\u200d👩\u200d👧", "a\u200bb",
    "\ufeffBOM at start", "mid\ufeffdle", "<|endoftext|>", "text<|endoftext|>more", "Ġ", "ĠĠ", "Ċ",
    "@@@###$$$", "...!!!???", "--", "—", "–– em dashes — and “quotes” ‘here’", "\x00\x01\x02",
    " " * 300, "\n" * 100, "=" * 1000, "ab" * 200, "x" * 513, "a" + " " * 50 + "b",
    "Mr. O'Brien's 3rd car—it's 1920's model—cost $1,200.50!",
    "".join(chr(c) for c in range(256)),
]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(root, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(root, "tests", "golden", "gpt2_tokenizer_ids.json"))
    args = parser.parse_args()
    gpt2 = os.path.join(args.data, "gpt2")
    tt, hf = load_tiktoken(gpt2), load_hf(gpt2)
    rng = random.Random(1234)

    samples = []
    text_files = (sorted(glob.glob(os.path.join(args.data, "tinyshakespeare", "*.txt")))
                  + sorted(glob.glob(os.path.join(args.data, "novels", "*.txt")))
                  + sorted(glob.glob(os.path.join(args.data, "heldout", "*.txt"))))
    for path in text_files:
        rel = os.path.relpath(path, args.data)
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        samples += window_samples(rel, text, rng, 3 if rel.startswith("tiny") else 2)
    for path in sorted(glob.glob(os.path.join(args.data, "evals", "*.jsonl"))):
        samples += jsonl_samples(os.path.relpath(path, args.data), path, rng, 5)
    samples += [{"source": "edge", "text": s} for s in EDGE_STRINGS]

    for s in samples:
        a = tt.encode_ordinary(s["text"])
        b = hf.encode(s["text"]).ids
        if a != b:
            sys.exit(f"tiktoken and tokenizers disagree on {s['source']}: {s['text']!r}\n{a}\n{b}")
        s["ids"] = a

    def sha(name):
        return hashlib.sha256(open(os.path.join(gpt2, name), "rb").read()).hexdigest()

    header = {
        "generator": "python3 scripts/tokenizer_golden.py",
        "references": f"tiktoken {tiktoken.__version__} and tokenizers {tokenizers.__version__} (identical ids)",
        "tokenizer": {"folder": "../shared/data/gpt2", "encoder.json sha256": sha("encoder.json"),
                      "vocab.bpe sha256": sha("vocab.bpe")},
        "pattern": GPT2_PATTERN,
        "note": "text: the sample itself (UTF-8); source: file under ../shared/data (offset: in characters; "
                "line: JSONL line) or 'edge' for hand-written strings",
    }
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('"samples": [')
    lines.append(",\n".join(json.dumps(s, ensure_ascii=False, separators=(",", ":")) for s in samples))
    lines.append("]}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    chars = sum(len(s["text"]) for s in samples)
    tokens = sum(len(s["ids"]) for s in samples)
    print(f"{len(samples)} samples ({chars} characters, {tokens} tokens) from {len(text_files)} text files, "
          f"the evals and {len(EDGE_STRINGS)} edge strings -> {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
