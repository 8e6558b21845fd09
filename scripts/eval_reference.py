#!/usr/bin/env python3
"""Independent reference for `l3c eval --tasks`: scores the same zero-shot examples with the PyTorch reference model
(scripts/llama_reference.py, written from MODEL.md) and lm-evaluation-harness's conventions, written here again from
the task formats (../shared/data/SOURCES.md), not from l3c's code.

    /usr/bin/python3 scripts/eval_reference.py --checkpoint DIR --tasks arc_easy,piqa [--limit N]
        [--tasks-dir ../shared/data/evals] [--dtype float64|float32] [--batch-tokens 4096] [--threads N]
        [--l3c build/l3c] [--compare DETAILS.jsonl] [--tolerance 1e-4]

Requests: the context is "<eot>" (when the tokenizer has an end-of-text id) + the query (+ "\\nAnswer:" for ARC,
"Answer:" for PIQA), each continuation " " + choice (Winogrande: each option is a context, " " + continuation the
shared continuation; LAMBADA: " " + the last word), tokenized separately, the sequence cut from the left to
seq_len + 1 tokens. A choice's score is its continuation's summed log-likelihood; acc = argmax, acc_norm = argmax of
score / UTF-8 bytes of the continuation; LAMBADA is right when every continuation token is the greedy prediction.
Requests are sorted by length and run in right-padded batches of at most --batch-tokens tokens (the best batching
plain PyTorch allows; the timing excludes loading and tokenizing).

Tokenizer: the byte-level one is computed here; a BPE folder is encoded with tiktoken when it is importable, else
with `l3c tokenizer encode` (--l3c; l3c's tokenizer is checked against tiktoken by tests/test_tokenizer.cpp), many
texts per call where that provably gives the same ids.

With --compare (the file `l3c eval --details` wrote for the same tasks and limit): every example's log-likelihoods
must agree within the tolerance (|a - b| <= tol * max(1, |b|)) and every prediction exactly. Exit 0 when they do,
1 when not, 2 on bad usage. The last line of stdout is one JSON object: per task acc, acc_norm, examples, seconds,
examples_per_second, and the comparison's worst difference.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import Llama  # noqa: E402
from safetensors_io import load_file  # noqa: E402

# name -> (file, format, answer prompt); formats: "mc" {query, choices, gold}, "wino" {context_options, continuation,
# gold}, "lambada" {context, continuation}.
TASKS = {
    "arc_easy": ("arc_easy.jsonl", "mc", "\nAnswer:"),
    "arc_challenge": ("arc_challenge.jsonl", "mc", "\nAnswer:"),
    "piqa": ("piqa.jsonl", "mc", "Answer:"),
    "openbook_qa": ("openbook_qa.jsonl", "mc", ""),
    "copa": ("copa.jsonl", "mc", ""),
    "winogrande": ("winogrande.jsonl", "wino", ""),
    "lambada": ("lambada_openai.jsonl", "lambada", ""),
}


def load_checkpoint(folder, dtype):
    """The resolved config and the reference model with the checkpoint's weights (run folder or checkpoint folder)."""
    if os.path.exists(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    else:
        with open(os.path.join(folder, "trainer.json")) as f:
            config = json.load(f)["config"]
    tensors, _ = load_file(os.path.join(folder, "model.safetensors"))
    cfg = dict(config["model"])
    if not cfg.get("l3") or not cfg["l3"].get("after_layers"):
        cfg.pop("l3", None)
    if not cfg.get("moe") or not cfg["moe"].get("layers"):
        cfg.pop("moe", None)
    allocations = None
    if cfg.get("l3"):
        allocations = [tensors[f"model.l3.{j}.alloc"] for j in range(len(cfg["l3"]["after_layers"]))]
    model = Llama(cfg, dtype=dtype, l3_allocations=allocations)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(np.asarray(tensors[name], dtype=np.float64)).to(dtype))
    model.eval()
    return config, model


class Encoder:
    def __init__(self, spec, l3c):
        self.spec, self.l3c, self.cache = spec, l3c, {}
        self.eot, self.tiktoken = None, None
        if spec == "bytes":
            return
        with open(os.path.join(spec, "encoder.json"), encoding="utf-8") as f:
            self.eot = json.load(f).get("<|endoftext|>")
        try:
            import tiktoken
            from tiktoken.load import data_gym_to_mergeable_bpe_ranks
            ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(spec, "vocab.bpe"), os.path.join(spec, "encoder.json"))
            pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
            self.tiktoken = tiktoken.Encoding(name="eval", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        except ImportError:
            if not l3c:
                sys.exit("a BPE tokenizer needs tiktoken or --l3c (the l3c binary, for `l3c tokenizer encode`)")

    def prepare(self, texts):
        """Encodes many texts with one `l3c tokenizer encode` call: joined by a NUL byte, which no merge of a
        vocabulary trained on text involves and which the pre-tokenisation keeps apart from letters, digits and
        spaces; texts that end in white space (whose pre-tokens would change) or hold a NUL are left to encode().
        Checked against encode() on a few texts, else not used."""
        if self.spec == "bytes" or self.tiktoken is not None:
            return
        todo = sorted({t for t in texts if t not in self.cache and t and not t[-1].isspace() and "\0" not in t})
        if len(todo) < 8:
            return
        sentinel = self._run(["\0"])
        ids = self._run(todo, joined=True)
        pieces, current = [], []
        for i in ids:
            if [i] == sentinel:
                pieces.append(current)
                current = []
            else:
                current.append(i)
        pieces.append(current)
        if len(pieces) != len(todo):
            return
        batch = dict(zip(todo, pieces))
        if all(batch[t] == self._run([t]) for t in todo[:: max(1, len(todo) // 4)][:4]):
            self.cache.update(batch)

    def _run(self, texts, joined=False):
        with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
            f.write("\0".join(texts).encode("utf-8") if joined else texts[0].encode("utf-8"))
        try:
            out = subprocess.run([self.l3c, "tokenizer", "encode", "--tokenizer", self.spec, f.name],
                                 capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(f.name)
        return [int(x) for x in out.split()]

    def encode(self, text):
        if self.spec == "bytes":
            return list(text.encode("utf-8"))
        if text not in self.cache:
            if self.tiktoken is not None:
                self.cache[text] = self.tiktoken.encode_ordinary(text)
            else:
                self.cache[text] = self._run([text])
        return self.cache[text]


def read_examples(path, fmt, prompt, limit):
    """-> list of (contexts, continuations, gold)."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit and len(examples) >= limit:
                break
            if not line.strip():
                continue
            r = json.loads(line)
            if fmt == "mc":
                examples.append(([r["query"] + prompt] * len(r["choices"]), [" " + c for c in r["choices"]], r["gold"]))
            elif fmt == "wino":
                examples.append((list(r["context_options"]), [" " + r["continuation"]] * len(r["context_options"]),
                                 r["gold"]))
            else:
                examples.append(([r["context"]], [" " + r["continuation"]], 0))
    return examples


@torch.no_grad()
def score(model, requests, batch_tokens):
    """requests: list of (tokens, number of continuation tokens) -> list of (summed log-prob, all greedy)."""
    out = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    i = 0
    while i < len(order):
        T = len(requests[order[i]][0]) - 1
        rows = order[i:i + max(1, batch_tokens // T)]
        batch = torch.zeros(len(rows), T, dtype=torch.long)
        for r, idx in enumerate(rows):
            tokens = requests[idx][0]
            batch[r, :len(tokens) - 1] = torch.tensor(tokens[:-1])
        logp = torch.log_softmax(model(batch), dim=-1)                           # (B, T, V), the model's dtype
        for r, idx in enumerate(rows):
            tokens, n = requests[idx]
            positions = torch.arange(len(tokens) - 1 - n, len(tokens) - 1)
            targets = torch.tensor(tokens[len(tokens) - n:])
            row = logp[r, positions]                                             # (n, V)
            out[idx] = (row[torch.arange(n), targets].double().sum().item(),
                        bool((row.argmax(dim=-1) == targets).all()))
        i += len(rows)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--tasks-dir", default="../shared/data/evals")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, help="default: the run's data.tokenizer")
    parser.add_argument("--l3c", default=None)
    parser.add_argument("--compare", default=None)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    config, model = load_checkpoint(args.checkpoint, dtype)
    seq_len = config["data"]["seq_len"]
    encoder = Encoder(args.tokenizer or config["data"].get("tokenizer", "bytes"), args.l3c)
    names = list(TASKS) if args.tasks == "all" else args.tasks.split(",")
    theirs = {}
    if args.compare:
        with open(args.compare) as f:
            for line in f:
                d = json.loads(line)
                theirs[(d["task"], d["index"])] = d
    summary, worst, mismatches = {}, 0.0, []
    for name in names:
        if name not in TASKS:
            print(f"unknown task {name}", file=sys.stderr)
            return 2
        file, fmt, prompt = TASKS[name]
        examples = read_examples(os.path.join(args.tasks_dir, file), fmt, prompt, args.limit)
        encoder.prepare([text for contexts, continuations, _ in examples for text in contexts + continuations])
        requests = []
        for contexts, continuations, _ in examples:
            for context, continuation in zip(contexts, continuations):
                ctx = ([encoder.eot] if encoder.eot is not None else []) + encoder.encode(context)
                cont = encoder.encode(continuation)
                tokens = (ctx + cont)[-(seq_len + 1):]
                requests.append((tokens, min(len(cont), len(tokens) - 1)))
        start = time.perf_counter()
        scores = score(model, requests, args.batch_tokens)
        seconds = time.perf_counter() - start
        k, correct, correct_norm = 0, 0, 0
        for index, (contexts, continuations, gold) in enumerate(examples):
            ll = [scores[k + c][0] for c in range(len(continuations))]
            greedy = [scores[k + c][1] for c in range(len(continuations))]
            k += len(continuations)
            if fmt == "lambada":
                pred = pred_norm = 0 if greedy[0] else -1
                right = greedy[0]
            else:
                pred = max(range(len(ll)), key=lambda c: (ll[c], -c))
                normed = [ll[c] / len(continuations[c].encode("utf-8")) for c in range(len(ll))]
                pred_norm = max(range(len(ll)), key=lambda c: (normed[c], -c))
                right = pred == gold
                correct_norm += pred_norm == gold
            correct += right
            if args.compare:
                other = theirs.get((name, index))
                if other is None:
                    mismatches.append(f"{name} {index}: not in {args.compare}")
                    continue
                for c in range(len(ll)):
                    diff = abs(other["log_likelihood"][c] - ll[c])
                    worst = max(worst, diff / max(1.0, abs(ll[c])))
                    if diff > args.tolerance * max(1.0, abs(ll[c])):
                        mismatches.append(f"{name} {index} choice {c}: l3c {other['log_likelihood'][c]!r}, "
                                          f"reference {ll[c]!r}")
                if (other["pred"], other["pred_norm"], bool(other["correct"])) != (pred, pred_norm, bool(right)):
                    mismatches.append(f"{name} {index}: l3c pred {other['pred']}/{other['pred_norm']}, reference "
                                      f"{pred}/{pred_norm}")
        n = len(examples)
        summary[name] = {"examples": n, "acc": correct / n, "seconds": seconds, "examples_per_second": n / seconds}
        if fmt != "lambada":
            summary[name]["acc_norm"] = correct_norm / n
        print(f"{name}: {n} examples, acc {correct / n:.4f} in {seconds:.2f}s ({n / seconds:.1f} examples/s)")
    for m in mismatches[:20]:
        print("mismatch:", m)
    print(json.dumps({"tasks": summary, "compared": bool(args.compare), "worst_relative_difference": worst,
                      "mismatches": len(mismatches), "ok": not mismatches}))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
