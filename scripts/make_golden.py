"""Writes the golden files the C++ tests compare against:

    tests/golden/dense_tiny.safetensors        untied embeddings
    tests/golden/dense_tiny_tied.safetensors   tie_embeddings = true
    tests/golden/l3_tiny.safetensors           the untied model with two Large Lookup Layers (after layers
                                               0 and 1), each with its own allocation
    tests/golden/moe_tiny.safetensors          the untied model with Mixture-of-Experts FFNs in both layers
                                               (4 experts, top-2, a shared expert)

Run from anywhere (paths are relative to the repository):  /usr/bin/python3 scripts/make_golden.py

Everything is computed in float64 with scripts/llama_reference.py from float32-representable initial
weights, then stored as F32 (token ids as I32). Each file holds:
    <param name>                 the initial weights, MODEL.md names
    model.l3.{j}.alloc           (V,) I32: the allocation of L3 layer j (l3_tiny only)
    input.tokens, input.targets  (B, T) ids in [0, V)
    expected.logits              (B, T, V)
    expected.loss                (1,) mean cross-entropy
    expected.moe.load_balance    (layers,) each MoE layer's load-balancing loss (moe_tiny only)
    expected.moe.z_loss          (layers,) each MoE layer's router z-loss (moe_tiny only)
    expected.grad.<param name>   d loss / d param at the initial weights (unclipped), loss = cross-entropy
                                 plus the MoE auxiliary losses
    expected.train_losses        (10,) cross-entropy at step s (before its update); AdamW on the same batch
    expected.train_aux_losses    (10,) the auxiliary losses at step s (moe_tiny only)
    expected.final.<param name>  the weights after the 10 steps
    __metadata__: "config" (model config + "train" hyper-parameters, JSON), "generator" (the command line)
The script also prints the per-step gradient norms, a finite-difference check of a few gradient entries
and a cross-check of the written-out AdamW against torch.optim.AdamW (none of which is stored).
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import torch.nn.functional as F  # noqa: E402

from llama_reference import MoE, AdamW, Llama, clip_grad_norm  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

SEED = 20240611
B, T = 2, 11
MODEL = OrderedDict([
    ("vocab_size", 61), ("d_model", 32), ("n_layers", 2), ("n_heads", 4), ("n_kv_heads", 2),
    ("ffn_hidden", 48), ("rope_theta", 10000.0), ("norm_eps", 1e-5), ("tie_embeddings", False),
])
TRAIN = OrderedDict([
    ("lr", 1e-2), ("beta1", 0.9), ("beta2", 0.95), ("eps", 1e-8), ("weight_decay", 0.1),
    ("grad_clip", 1.0), ("steps", 10),
])
# The L3 model: k = 4 rows at most; layer 0 gives token u 1 + (3u mod 4) rows (1 to k, 151 in all), layer 1
# the same counts in reverse token order. With 22 positions over 61 ids most tokens are absent from the
# batch, so the tables' zero-gradient rows are checked too.
L3 = OrderedDict([
    ("after_layers", [0, 1]), ("v", 151), ("k", 4), ("d_emb", 8), ("d_up", 16), ("tie_kv", False),
    ("residual", False),
])
L3_COUNTS = [1 + (3 * u) % 4 for u in range(MODEL["vocab_size"])]
# The MoE model: both layers' FFNs are MoE; coefficients larger than the defaults so that the auxiliary
# losses' gradients are well above the float32 noise of the comparison.
MOE = OrderedDict([
    ("layers", "all"), ("experts", 4), ("top_k", 2), ("expert_hidden", 24), ("shared_expert_hidden", 16),
    ("normalize_topk", True), ("aux_loss", 0.1), ("z_loss", 0.01),
])
INIT_STD = 0.1        # matrices (MODEL.md default is 0.02; larger here so gradients are not tiny)
NORM_STD = 0.1        # norm gains = 1 + 0.1 * randn, so that they are really tested


def f32(t):
    return t.detach().to(torch.float32).cpu().numpy()


def build(cfg, allocations=None):
    """Deterministic float64 model with float32-representable weights, and its batch."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, cfg["vocab_size"], (B, T), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, cfg["vocab_size"], (B, T), generator=gen, dtype=torch.int64)
    model = Llama(cfg, dtype=torch.float64, l3_allocations=allocations)
    model.init_weights(std=INIT_STD, norm_std=NORM_STD, generator=gen)
    with torch.no_grad():
        for p in model.parameters():           # the stored F32 values are exactly the computed-with ones
            p.copy_(p.to(torch.float32).to(torch.float64))
    return model, tokens, targets


def finite_difference_check(model, tokens, targets, grads, names, h=1e-5):
    """Central differences in float64; returns the worst |fd - autograd| / (1e-7 + |autograd|)."""
    params = dict(model.named_parameters())
    worst = 0.0
    for name, idx in names:
        p = params[name]
        with torch.no_grad():
            old = p[idx].item()
            p[idx] = old + h
            lp = model.loss(tokens, targets)[0].item()
            p[idx] = old - h
            lm = model.loss(tokens, targets)[0].item()
            p[idx] = old
        fd = (lp - lm) / (2 * h)
        an = grads[name][idx].item()
        err = abs(fd - an) / (1e-7 + abs(an))   # relative, with an absolute floor for tiny entries
        worst = max(worst, err)
        print(f"  fd check {name}{list(idx)}: autograd {an:+.10e}  finite-diff {fd:+.10e}  "
              f"abs err {abs(fd - an):.1e}")
    return worst


def torch_adamw_crosscheck(cfg, allocations, tokens, targets, final_ref):
    """Same 10 steps with torch.optim.AdamW (two param groups) + clip_grad_norm_; returns max |diff|."""
    model, _, _ = build(cfg, allocations)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=TRAIN["lr"], betas=(TRAIN["beta1"], TRAIN["beta2"]), eps=TRAIN["eps"])
    for _ in range(TRAIN["steps"]):
        opt.zero_grad()
        model.loss(tokens, targets)[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        opt.step()
    return max((p.detach() - final_ref[n]).abs().max().item() for n, p in model.named_parameters())


def smallest_topk_margin(model, tokens):
    """The smallest gap between the k-th and (k+1)-th router probability over all MoE layers and tokens:
    float32 and float64 must pick the same experts, so the margin has to dwarf float32 rounding."""
    margins = []

    def hook(module, inputs, output):
        x = inputs[0].reshape(-1, inputs[0].shape[-1])
        p = torch.softmax(F.linear(x, module.gate.weight), dim=-1)
        top = torch.sort(p, dim=-1, descending=True).values
        margins.append((top[:, module.k - 1] - top[:, module.k]).min().item())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MoE)]
    with torch.no_grad():
        model.loss(tokens, tokens)
    for h in handles:
        h.remove()
    return min(margins) if margins else float("inf")


def make(tied, out_path, generator_cmd, l3=None, allocations=None, moe=None):
    cfg = OrderedDict(MODEL)
    cfg["tie_embeddings"] = tied
    if l3:
        cfg["l3"] = l3
    if moe:
        cfg["moe"] = moe
    model, tokens, targets = build(cfg, allocations)
    names = [n for n, _ in model.named_parameters()]
    print(f"== {os.path.relpath(out_path, REPO)}: tie_embeddings={tied}, l3={bool(l3)}, moe={bool(moe)}, "
          f"{sum(p.numel() for p in model.parameters())} parameters")

    tensors = OrderedDict()
    for n, p in model.named_parameters():
        tensors[n] = f32(p)
    for n, b in model.named_buffers():          # the L3 allocations: model.l3.{j}.alloc
        tensors[n] = b.to(torch.int32).numpy()
    tensors["input.tokens"] = tokens.to(torch.int32).numpy()
    tensors["input.targets"] = targets.to(torch.int32).numpy()

    # forward + backward at the initial weights
    model.zero_grad()
    loss, logits = model.loss(tokens, targets)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    parts = model.last_loss_parts
    tensors["expected.logits"] = f32(logits)
    tensors["expected.loss"] = f32(parts["cross_entropy"].reshape(1))
    if moe:
        tensors["expected.moe.load_balance"] = f32(torch.stack([a for a, _ in parts["moe"]]))
        tensors["expected.moe.z_loss"] = f32(torch.stack([z for _, z in parts["moe"]]))
        print(f"  smallest top-k margin of the router probabilities: {smallest_topk_margin(model, tokens):.3e}")
    for n in names:
        tensors["expected.grad." + n] = f32(grads[n])
    print(f"  initial loss {loss.item():.10f} (ln V = {np.log(cfg['vocab_size']):.6f})")

    # finite-difference sanity check (printed, not stored)
    checks = [("model.layers.0.self_attn.q_proj.weight", (3, 5)),
              ("model.layers.0.input_layernorm.weight", (2,)),
              ("model.embed_tokens.weight", (int(tokens[0, 0]), 4))]
    if not tied:
        checks.append(("lm_head.weight", (int(targets[1, 3]), 9)))
    if moe:
        prefix = "model.layers.1.block_sparse_moe."
        checks += [(prefix + "gate.weight", (2, 7)), (prefix + "experts.0.w1.weight", (5, 3)),
                   (prefix + "experts.3.w2.weight", (7, 11)), (prefix + "experts.2.w3.weight", (1, 30)),
                   (prefix + "shared_expert.down_proj.weight", (4, 9))]
    else:
        checks.append(("model.layers.1.mlp.down_proj.weight", (7, 11)))
    if l3:
        counts = torch.as_tensor(allocations[1])
        row = int((torch.cumsum(counts, 0) - counts)[tokens[0, 2]])      # a row of a token in the batch
        checks += [("model.l3.0.norm_in.weight", (5,)), ("model.l3.1.w_k", (row, 3)),
                   ("model.l3.1.w_v", (row, 2)), ("model.l3.0.w_up.weight", (7, 1)),
                   ("model.l3.1.norm_out.weight", (4,)), ("model.l3.0.w_mix.weight", (9, 20))]
    worst = finite_difference_check(model, tokens, targets, grads, checks)
    assert worst < 1e-5, f"finite-difference check failed: worst error {worst:.2e}"

    # 10 AdamW steps on the same batch
    params = list(model.parameters())
    opt = AdamW(params, lr=TRAIN["lr"], betas=(TRAIN["beta1"], TRAIN["beta2"]), eps=TRAIN["eps"],
                weight_decay=TRAIN["weight_decay"])
    losses, aux_losses, norms = [], [], []
    for s in range(TRAIN["steps"]):
        opt.zero_grad()
        loss, _ = model.loss(tokens, targets)
        loss.backward()
        norm = clip_grad_norm(params, TRAIN["grad_clip"])
        losses.append(model.last_loss_parts["cross_entropy"].item())
        aux_losses.append(loss.item() - losses[-1])
        norms.append(norm)
        clipped = TRAIN["grad_clip"] / (norm + 1e-6) < 1.0
        print(f"  step {s}: loss {loss.item():.10f}  grad norm {norm:.6f}{'  (clipped)' if clipped else ''}")
        opt.step()
    assert norms[0] > TRAIN["grad_clip"], "clipping must trigger on the first step"
    tensors["expected.train_losses"] = np.asarray(losses, dtype=np.float32)
    if moe:
        tensors["expected.train_aux_losses"] = np.asarray(aux_losses, dtype=np.float32)
        print(f"  after the steps, smallest top-k margin: {smallest_topk_margin(model, tokens):.3e}")
    final = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in names:
        tensors["expected.final." + n] = f32(final[n])

    diff = torch_adamw_crosscheck(cfg, allocations, tokens, targets, final)
    print(f"  torch.optim.AdamW cross-check: max |final weight diff| = {diff:.3e}")
    assert diff < 1e-12, "written-out AdamW disagrees with torch.optim.AdamW"

    config = OrderedDict(cfg)
    config["train"] = TRAIN
    metadata = OrderedDict([("config", json.dumps(config)), ("generator", generator_cmd)])
    save_file(tensors, out_path, metadata)

    # round trip
    back, meta = load_file(out_path)
    assert list(back.keys()) == list(tensors.keys())
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    assert meta == metadata
    print(f"  wrote {os.path.getsize(out_path)} bytes, {len(tensors)} tensors; round trip OK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=os.path.join(REPO, "tests", "golden"),
                    help="where to write the files (default: tests/golden of the repository)")
    args = ap.parse_args()
    torch.set_num_threads(1)   # deterministic reductions
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    generator_cmd = " ".join([sys.executable, script] + sys.argv[1:])
    os.makedirs(args.out_dir, exist_ok=True)
    make(False, os.path.join(args.out_dir, "dense_tiny.safetensors"), generator_cmd)
    make(True, os.path.join(args.out_dir, "dense_tiny_tied.safetensors"), generator_cmd)
    make(False, os.path.join(args.out_dir, "l3_tiny.safetensors"), generator_cmd, l3=L3,
         allocations=[L3_COUNTS, L3_COUNTS[::-1]])
    make(False, os.path.join(args.out_dir, "moe_tiny.safetensors"), generator_cmd, moe=MOE)


if __name__ == "__main__":
    main()
