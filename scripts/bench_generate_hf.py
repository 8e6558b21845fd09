"""Decode speed of l3c's inference session against Hugging Face transformers' `generate` (KV cache, greedy) on the
same Llama, the same prompts and the same number of threads; checks that both choose the same greedy tokens.

    PYTHONPATH=.cache/python-hf /usr/bin/python3 scripts/bench_generate_hf.py --l3c build/l3c \\
        --config configs/tiny/dense.json --work /tmp/bench --batch 8 --threads 2 [--prompt-tokens 64] [--new-tokens 64]

1. A LlamaForCausalLM with the config's sizes and random weights (normal, std --init-std, so that the logits are far
   from uniform) is saved to WORK/hf (float32 safetensors).
2. `l3c import hf WORK/hf WORK/l3c`, then `l3c bench --generate WORK/l3c --json` on B random prompts of P tokens,
   N new tokens each (its JSON holds the first prompt and its greedy continuation).
3. transformers: `generate` on the same prompts (greedy, use_cache=True) with max_new_tokens 1 (the prompt and the
   first token) and N; decode tokens/s = B (N - 1) / (t_N - t_1), the best of --repeats runs, like l3c's decode
   rate (which excludes the prefill and the token it yields).
Prints one line per framework, then one JSON object: both decode rates, the ratio l3c / transformers, prefill rates
and whether the greedy tokens of the first prompt agree.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def resolved_config(path):
    """The config file's JSON with "extends" followed (child keys win, objects merge)."""
    with open(path) as f:
        config = json.load(f)
    parent = config.pop("extends", None)
    if parent is None:
        return config
    base = resolved_config(os.path.join(os.path.dirname(path), parent))

    def merge(a, b):
        for key, value in b.items():
            a[key] = merge(a.get(key, {}), value) if isinstance(value, dict) and isinstance(a.get(key), dict) else value
        return a
    return merge(base, config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--l3c", required=True)
    parser.add_argument("--config", required=True, help="an l3c config of a dense model (its model sizes are used)")
    parser.add_argument("--work", required=True, help="a new folder for the two copies of the model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--init-std", type=float, default=0.05)
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = resolved_config(args.config)["model"]
    if "l3" in m or "moe" in m:
        print("error: a dense config is needed (transformers runs the exported Llama)")
        return 2
    hf_config = transformers.LlamaConfig(
        vocab_size=m["vocab_size"], hidden_size=m["d_model"], intermediate_size=m["ffn_hidden"],
        num_hidden_layers=m["n_layers"], num_attention_heads=m["n_heads"],
        num_key_value_heads=m.get("n_kv_heads", m["n_heads"]), rms_norm_eps=m.get("norm_eps", 1e-5),
        rope_theta=m.get("rope_theta", 10000.0), tie_word_embeddings=m.get("tie_embeddings", False),
        max_position_embeddings=args.prompt_tokens + args.new_tokens, initializer_range=args.init_std,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, torch_dtype="float32")
    model = transformers.LlamaForCausalLM(hf_config).eval()
    hf_dir, l3c_dir = os.path.join(args.work, "hf"), os.path.join(args.work, "l3c")
    model.save_pretrained(hf_dir, safe_serialization=True)
    subprocess.run([args.l3c, "import", "hf", hf_dir, l3c_dir], check=True, capture_output=True)

    run = subprocess.run([args.l3c, "bench", "--generate", l3c_dir, "--json", "--device", "cpu",
                          "--threads", str(args.threads), "--batch", str(args.batch),
                          "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                          "--repeats", str(args.repeats)], capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stderr)
        return 2
    ours = json.loads(run.stdout.strip().splitlines()[-1])

    prompts = torch.tensor(ours["prompts"], dtype=torch.long)
    mask = torch.ones_like(prompts)

    def timed(new_tokens):
        best, out = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(prompts, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, use_cache=True, pad_token_id=0)
            best = min(best, time.perf_counter() - start)
        return best, out

    timed(4)  # warm-up
    t_first, _ = timed(1)
    t_all, out = timed(args.new_tokens)
    theirs_decode = args.batch * (args.new_tokens - 1) / (t_all - t_first)
    theirs_prefill = args.batch * args.prompt_tokens / t_first
    hf_tokens = out[0, args.prompt_tokens:].tolist()
    same = hf_tokens == ours["first_generated"]
    agree = next((i for i, (a, b) in enumerate(zip(hf_tokens, ours["first_generated"])) if a != b), len(hf_tokens))
    result = {"config": args.config, "params": sum(p.numel() for p in model.parameters()), "batch": args.batch,
              "threads": args.threads, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "l3c_decode_tokens_per_second": ours["decode_tokens_per_second"],
              "hf_decode_tokens_per_second": theirs_decode,
              "decode_ratio": ours["decode_tokens_per_second"] / theirs_decode,
              "l3c_prefill_tokens_per_second": ours["prefill_tokens_per_second"],
              "hf_prefill_tokens_per_second": theirs_prefill,
              "same_greedy_tokens": same, "greedy_tokens_agreeing": agree,
              "transformers": transformers.__version__, "torch": torch.__version__}
    print(f"l3c:          decode {ours['decode_tokens_per_second']:.1f} tokens/s, prefill "
          f"{ours['prefill_tokens_per_second']:.0f} tokens/s")
    print(f"transformers: decode {theirs_decode:.1f} tokens/s, prefill {theirs_prefill:.0f} tokens/s "
          f"({transformers.__version__}, torch {torch.__version__}); ratio {result['decode_ratio']:.2f}; "
          f"greedy tokens {'identical' if same else f'agree for {agree} of {len(hf_tokens)}'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
