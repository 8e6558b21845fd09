"""Checks that an l3c checkpoint exported with `l3c export hf` loads in Hugging Face `transformers` and gives
the same logits as l3c on the same tokens.

    python3 scripts/hf_logits_check.py --l3c build/l3c --checkpoint RUN/checkpoints/step_00000100 --work /tmp/hf
                                       [--tokens N] [--tolerance 1e-4]

Runs `l3c export hf CHECKPOINT WORK/hf` and `l3c logits --checkpoint CHECKPOINT --tokens ... --out
WORK/l3c_logits.safetensors` on a fixed sequence of N token ids (default: the model's sequence length, at most 64),
loads WORK/hf with `AutoModelForCausalLM.from_pretrained(..., torch_dtype=torch.float32, trust_remote_code=True)`
(LlamaForCausalLM for dense models, MixtralForCausalLM for MoE ones, L3LlamaForCausalLM from the exported
modeling_l3c.py for L3 models), and compares the logits: the largest absolute difference over the
largest absolute l3c logit must be at most the tolerance.

Prints one human-readable line, then, as the last line, one JSON object
    {"architecture", "tokens", "max_abs_diff", "max_abs_logit", "relative", "tolerance", "ok"}
Exit codes: 0 same logits, 1 different logits, 2 bad usage or a failed l3c command, 77 `transformers` (or torch)
is not importable by this Python (nothing is checked; the message says which import failed).
"""
import argparse
import json
import os
import sys

from hf_check_lib import compare_logits, import_hf_stack, run_l3c


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--l3c", required=True, help="the l3c binary")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder (or run folder) of a dense, MoE or L3 model")
    parser.add_argument("--work", required=True, help="an empty or new folder for the export and the logits")
    parser.add_argument("--tokens", type=int, default=0, help="sequence length (default: min(seq_len, 64))")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    stack = import_hf_stack(" (Hugging Face transformers, torch and safetensors are needed for this check)")
    if stack is None:
        return 77
    np, torch, transformers, load_file = stack

    os.makedirs(args.work, exist_ok=True)
    export_dir = os.path.join(args.work, "hf")
    if not run_l3c(args.l3c, ["export", "hf", args.checkpoint, export_dir], "export hf"):
        return 2
    with open(os.path.join(export_dir, "config.json")) as f:
        hf_config = json.load(f)
    vocab = hf_config["vocab_size"]
    length = args.tokens or min(hf_config["max_position_embeddings"], 64)
    # A fixed sequence that visits many ids.
    ids = [(7 * i + 3 * (i // 5) + 1) % vocab for i in range(length)]

    logits_path = os.path.join(args.work, "l3c_logits.safetensors")
    if not run_l3c(args.l3c, ["logits", "--checkpoint", args.checkpoint, "--tokens", " ".join(map(str, ids)),
                              "--out", logits_path], "logits"):
        return 2
    ours = load_file(logits_path)["logits"].astype(np.float64)  # (T, V)

    # trust_remote_code: an L3 model's class is in the modeling_l3c.py the export wrote beside it.
    model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, torch_dtype=torch.float32,
                                                              trust_remote_code=True)
    model.eval()
    with torch.no_grad():
        theirs = model(torch.tensor([ids], dtype=torch.long)).logits[0].double().numpy()

    result = compare_logits(ours, theirs, ours, args.tolerance)
    architecture = type(model).__name__
    print(f"{architecture} (transformers {transformers.__version__}, torch {torch.__version__}): {length} tokens, "
          f"max |l3c - hf| = {result['max_abs_diff']:.3g}, max |logit| = {result['max_abs_logit']:.3g}, "
          f"relative {result['relative']:.3g} ({'ok' if result['ok'] else 'FAILED'}, tolerance {args.tolerance:g})")
    print(json.dumps({"architecture": architecture, "tokens": length, **result}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
