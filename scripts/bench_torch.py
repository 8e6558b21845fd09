"""PyTorch training-speed baseline for an l3c config: the comparison point of `l3c bench`.

    /usr/bin/python3 scripts/bench_torch.py configs/tiny/dense.json --threads 2 [--steps 10] [--warmup 2]
                                            [--micro-batch N]
    python3 scripts/bench_torch.py configs/gpu/dense_124m.json --device cuda [--precision bf16|fp32] [--compile]

On the CPU: float32, eager. On the GPU (--device cuda): float32, or bf16 autocast (--precision bf16: bf16 matrix
products, fp32 weights and AdamW, as l3c's bf16 mode), eager or torch.compile (--compile: the loss function
compiled, the optimizer step eager); attention there is torch's fused scaled_dot_product_attention (causal,
flash kernels) instead of the reference's explicit T x T form, so that the baseline is the fast PyTorch one.
Steps are timed with torch.cuda.synchronize() around them.

Builds the dense or MoE model of scripts/llama_reference.py from the config's `model` section (random init,
normal(0, model.init_std); an MoE FFN is the usual eager loop over experts with index_add, as Hugging Face
Mixtral's is), and times full optimizer steps on random tokens: forward + backward over every
micro-batch of the step (gradient accumulation = train.batch_tokens / (micro_batch * data.seq_len)),
global-norm clipping at train.grad_clip, AdamW (train.lr, beta1, beta2, eps, weight_decay on 2-D weights).
Attention is the plain eager form (matmul, causal mask, softmax, matmul); torch 1.13 has no fused
scaled_dot_product_attention. Warm-up steps are run first and not timed.

Threads: --threads sets torch.set_num_threads and, before torch is imported, OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS unless they are already set (Debian's torch calls whatever libblas.so.3 is installed
and does not pass its thread count on to it). On 2 cores, OPENBLAS_NUM_THREADS=1 (torch's own threads for
everything but matrix products) was measured faster than letting both thread pools use 2 threads;
scripts/bench_cpu.sh runs both and keeps the faster.

BLAS: Debian's torch is built against the generic libblas.so.3. With the reference (netlib) BLAS, the
default when no optimised BLAS is installed, matrix products run at ~2 GFLOP/s and the baseline is
meaningless; the script says so on stderr. Install OpenBLAS (`apt-get install libopenblas0-pthread`, which
takes over libblas.so.3), or without installing anything:
    apt-get download libopenblas0-pthread && dpkg -x libopenblas0-pthread_*.deb /tmp/openblas
    LD_LIBRARY_PATH=/tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-pthread /usr/bin/python3 scripts/bench_torch.py ...
The BLAS library in use is named on the human-readable line.

Prints one human-readable line, then, as the LAST line, one JSON object:
    {"framework": "pytorch", "torch_version", "threads", "tokens_per_step", "step_seconds",
     "tokens_per_second", "params"}
"""
import argparse
import contextlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# torch and llama_reference are imported in main(), after the thread-count environment is set.

# Defaults of src/core/config.h for the fields read here.
MODEL_DEFAULTS = {"n_kv_heads": 0, "rope_theta": 10000.0, "norm_eps": 1e-5, "tie_embeddings": False,
                  "init_std": 0.02}
TRAIN_DEFAULTS = {"micro_batch": 1, "batch_tokens": 0, "lr": 3e-4, "weight_decay": 0.1, "beta1": 0.9,
                  "beta2": 0.95, "eps": 1e-8, "grad_clip": 1.0}


def fail(msg):
    print(f"bench_torch.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def merge(parent, child):
    """Objects merge recursively; for any other value the child wins."""
    out = dict(parent)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path, seen=()):
    path = os.path.abspath(path)
    if path in seen:
        fail(f"{path}: \"extends\" cycle")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        fail(f"cannot read config {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        fail(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}")
    if not isinstance(cfg, dict):
        fail(f"{path}: the top level must be a JSON object")
    parents = cfg.pop("extends", None)
    if parents is None:
        return cfg
    if isinstance(parents, str):
        parents = [parents]
    base = {}
    for p in parents:
        base = merge(base, load_config(os.path.join(os.path.dirname(path), p), seen + (path,)))
    return merge(base, cfg)


def blas_library():
    """The shared library that provides BLAS to this process (after a matrix product has run)."""
    libs = []
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            name = os.path.basename(path)
            if any(k in name for k in ("blas", "mkl_", "blis")) and path not in libs:
                libs.append(path)
    return libs


def use_fused_attention():
    """Replaces the reference attention's explicit softmax(q k^T) v with torch's fused causal kernel (same math)."""
    import math
    import torch.nn.functional as F
    import llama_reference

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, Hkv, hd = self.H, self.Hkv, self.hd
        q = F.linear(x, self.q_proj.weight).view(B, T, H, hd).transpose(1, 2)
        k = F.linear(x, self.k_proj.weight).view(B, T, Hkv, hd).transpose(1, 2)
        v = F.linear(x, self.v_proj.weight).view(B, T, Hkv, hd).transpose(1, 2)
        q, k = llama_reference.apply_rope(q, cos, sin), llama_reference.apply_rope(k, cos, sin)
        if Hkv != H:
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(hd))
        return F.linear(o.transpose(1, 2).reshape(B, T, H * hd), self.o_proj.weight)

    llama_reference.Attention.forward = forward


def main():
    ap = argparse.ArgumentParser(description="PyTorch eager float32 training-speed baseline for an l3c config")
    ap.add_argument("config", metavar="CONFIG", help="l3c JSON config (\"extends\" is followed)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="sequences per forward/backward (default: the config's train.micro_batch)")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="tokens per optimizer step (default: the config's train.batch_tokens)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="cuda only: bf16 autocast for the forward and backward (default fp32)")
    ap.add_argument("--compile", action="store_true", help="cuda only: torch.compile the loss function")
    args = ap.parse_args()
    if args.device == "cpu" and (args.precision != "fp32" or args.compile):
        fail("--precision bf16 and --compile are for --device cuda")
    if args.threads < 1 or args.steps < 1 or args.warmup < 0:
        fail("--threads and --steps must be >= 1, --warmup >= 0")

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    global torch, AdamW, Llama, clip_grad_norm
    import torch
    from llama_reference import AdamW, Llama, clip_grad_norm

    cfg = load_config(args.config)
    model_cfg = merge(MODEL_DEFAULTS, cfg.get("model", {}))
    train = merge(TRAIN_DEFAULTS, cfg.get("train", {}))
    for key in ("l3", "layers", "ffn"):
        if model_cfg.get(key):
            fail(f"model.{key}: this baseline covers dense and MoE models only")
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden"):
        if not model_cfg.get(key):
            fail(f"model.{key}: required")
    seq_len = cfg.get("data", {}).get("seq_len", 0)
    if not seq_len:
        fail("data.seq_len: required")
    micro_batch = args.micro_batch if args.micro_batch is not None else train["micro_batch"]
    if micro_batch < 1:
        fail(f"micro batch must be >= 1, got {micro_batch}")
    tokens_per_micro = micro_batch * seq_len
    batch_tokens = args.batch_tokens or train["batch_tokens"] or tokens_per_micro
    if batch_tokens % tokens_per_micro:
        fail(f"train.batch_tokens ({batch_tokens}) must be a multiple of micro_batch * seq_len "
             f"({micro_batch} * {seq_len})")
    accum = batch_tokens // tokens_per_micro

    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            fail("--device cuda: torch sees no GPU")
        use_fused_attention()
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as in l3c
    model = Llama(model_cfg, dtype=torch.float32)
    model.init_weights(std=model_cfg["init_std"])
    if cuda:
        model = model.to("cuda")
    n_params = sum(p.numel() for p in model.parameters())
    params = list(model.parameters())
    opt = AdamW(params, lr=train["lr"], betas=(train["beta1"], train["beta2"]), eps=train["eps"],
                weight_decay=train["weight_decay"])
    V = model_cfg["vocab_size"]
    # Random micro-batches, made once outside the timed region (their content does not change the cost).
    batches = [torch.randint(0, V, (micro_batch, seq_len + 1), device=args.device) for _ in range(accum)]
    loss_fn = torch.compile(model.loss) if args.compile else model.loss
    bf16 = cuda and args.precision == "bf16"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        opt.zero_grad()
        total = 0.0
        for b in batches:
            with autocast():
                loss, _ = loss_fn(b[:, :-1], b[:, 1:])
            (loss / accum).backward()
            total += loss.item()
        clip_grad_norm(params, train["grad_clip"])
        opt.step()
        return total / accum

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    libs = blas_library()
    blas = ", ".join(os.path.basename(p) for p in libs) or "none found"
    if not cuda and any(os.path.realpath(p).startswith("/usr/lib/x86_64-linux-gnu/blas/") or
                        "/blas/libblas" in os.path.realpath(p) for p in libs):
        print(f"bench_torch.py: warning: torch is using the reference (netlib) BLAS ({', '.join(libs)}): "
              "matrix products are ~40x slower than with an optimised BLAS; see the top of this script "
              "for how to use OpenBLAS", file=sys.stderr)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    step_seconds = (time.perf_counter() - t0) / args.steps
    tokens_per_step = accum * tokens_per_micro
    tps = tokens_per_step / step_seconds

    mode = "compiled" if args.compile else "eager"
    where = torch.cuda.get_device_name() if cuda else f"{args.threads} threads"
    print(f"pytorch {torch.__version__} {mode} {args.precision if cuda else 'f32'}, {where}: {n_params / 1e6:.2f}M "
          f"params, {tokens_per_step} tokens/step ({accum} x {micro_batch} x {seq_len}), "
          f"{step_seconds * 1e3:.1f} ms/step, {tps:.0f} tokens/s (last loss {loss:.4f}"
          f"{'' if cuda else f'; BLAS: {blas}'})")
    print(json.dumps({"framework": "pytorch", "torch_version": torch.__version__, "threads": args.threads,
                      "device": args.device, "precision": args.precision if cuda else "fp32",
                      "compiled": args.compile, "tokens_per_step": tokens_per_step, "step_seconds": step_seconds,
                      "tokens_per_second": tps, "params": n_params}))


if __name__ == "__main__":
    main()
