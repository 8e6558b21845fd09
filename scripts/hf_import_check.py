"""Checks `l3c import hf`: a LlamaForCausalLM made by `transformers` (random weights, grouped-query attention) is
saved, imported into an l3c model folder, and l3c's logits on a fixed sequence must equal transformers' logits.

    python3 scripts/hf_import_check.py --l3c build/l3c --work /tmp/hf_import [--tied] [--tolerance 1e-4]

Prints one human-readable line, then, as the last line, one JSON object {"max_abs_diff", "max_abs_logit", "relative",
"tolerance", "ok"}. Exit codes: 0 same logits, 1 different logits, 2 a failed l3c command, 77 `transformers` (or
torch) is not importable by this Python.
"""
import argparse
import json
import os
import sys

from hf_check_lib import compare_logits, import_hf_stack, run_l3c


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--l3c", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--tied", action="store_true", help="tie the input and output embeddings")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    stack = import_hf_stack()
    if stack is None:
        return 77
    np, torch, transformers, load_file = stack

    torch.manual_seed(3)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32,
                                      rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=args.tied,
                                      initializer_range=0.1, bos_token_id=None, eos_token_id=None)
    model = transformers.LlamaForCausalLM(config).eval()
    hf_dir, l3c_dir = os.path.join(args.work, "hf"), os.path.join(args.work, "l3c")
    model.save_pretrained(hf_dir, safe_serialization=True)
    ids = [(5 * i + 2) % config.vocab_size for i in range(20)]
    logits_path = os.path.join(args.work, "logits.safetensors")
    for command in (["import", "hf", hf_dir, l3c_dir],
                    ["logits", "--checkpoint", l3c_dir, "--tokens", " ".join(map(str, ids)), "--out", logits_path]):
        if not run_l3c(args.l3c, command, command[0]):
            return 2
    ours = load_file(logits_path)["logits"].astype(np.float64)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].double().numpy()
    result = compare_logits(ours, theirs, theirs, args.tolerance)
    print(f"imported LlamaForCausalLM ({'tied' if args.tied else 'untied'}): "
          f"max |l3c - hf| = {result['max_abs_diff']:.3g}, max |logit| = {result['max_abs_logit']:.3g}, "
          f"relative {result['relative']:.3g} ({'ok' if result['ok'] else 'FAILED'})")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
