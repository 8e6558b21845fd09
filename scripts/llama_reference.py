"""Plain PyTorch reference of the l3c dense Llama model and its AdamW step, written from MODEL.md.

No `transformers`: every op is spelled out so that it can be compared line by line with
/work/shared/MODEL.md ("Decoder (Llama)", "Attention", "SwiGLU", "Optimizer"). Parameters are registered
under the checkpoint names of MODEL.md (Hugging Face Llama naming), so `dict(model.named_parameters())`
has exactly the keys a l3c checkpoint holds:

    model.embed_tokens.weight                         (V, d)
    model.layers.{i}.input_layernorm.weight           (d)
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight  (H*hd, d) (Hkv*hd, d) (Hkv*hd, d) (d, H*hd)
    model.layers.{i}.post_attention_layernorm.weight  (d)
    model.layers.{i}.mlp.{gate,up,down}_proj.weight   (F, d) (F, d) (d, F)
    model.norm.weight                                 (d)
    lm_head.weight                                    (V, d)   absent when tie_embeddings

With Large Lookup Layers (config "l3", MODEL.md "Large Lookup Layer (L3)"), one per entry j of
l3.after_layers, applied after that decoder layer and replacing h:

    model.l3.{j}.norm_in.weight                       (d)
    model.l3.{j}.w_k                                  (v, d)
    model.l3.{j}.w_v                                  (v, d_emb)  absent when tie_kv
    model.l3.{j}.w_up.weight                          (d_up, d_emb)
    model.l3.{j}.norm_out.weight                      (d_up)
    model.l3.{j}.w_mix.weight                         (d, d_up + d)
    model.l3.{j}.alloc                                (V) int32 buffer (not a parameter): rows per token id

With Mixture-of-Experts FFNs (config "moe", MODEL.md "Mixture-of-Experts FFN", Mixtral semantics), the
selected layers' `mlp` is replaced by `block_sparse_moe`:

    model.layers.{i}.block_sparse_moe.gate.weight                       (E, d)
    model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight             (F_e, d)  gate
    model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight             (F_e, d)  up
    model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight             (d, F_e)  down
    model.layers.{i}.block_sparse_moe.shared_expert.{gate,up,down}_proj.weight   when shared_expert_hidden > 0

Its auxiliary losses (load balance, router z-loss) are added to the loss that `loss()` returns; the
parts are kept in `model.last_loss_parts`.

The model runs in whatever dtype its parameters have (float64 for golden files, float32 for benchmarks).
Used by scripts/make_golden.py and scripts/bench_torch.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden",
               "rope_theta", "norm_eps", "tie_embeddings", "l3", "moe")
L3_KEYS = ("after_layers", "v", "k", "d_emb", "d_up", "tie_kv", "residual")
MOE_KEYS = ("layers", "experts", "top_k", "expert_hidden", "shared_expert_hidden", "normalize_topk",
            "aux_loss", "z_loss")
MOE_DEFAULTS = {"top_k": 2, "shared_expert_hidden": 0, "normalize_topk": True, "aux_loss": 0.01,
                "z_loss": 0.001}


def rms_norm(x, g, eps):
    # RMSNorm(x; g) = x * rsqrt(mean(x^2) + eps) * g   (over the last dim)
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * g


def rope_cos_sin(seq_len, head_dim, theta, dtype, device=None):
    """cos, sin of shape (T, hd) for rotate-half RoPE; the angles p * theta_i are computed in float64."""
    half = head_dim // 2
    i = torch.arange(half, dtype=torch.float64, device=device)
    inv_freq = theta ** (-2.0 * i / head_dim)                       # theta_i = rope_theta^(-2i/hd), (hd/2)
    pos = torch.arange(seq_len, dtype=torch.float64, device=device)
    ang = pos[:, None] * inv_freq[None, :]                          # (T, hd/2), float64
    ang = torch.cat([ang, ang], dim=-1)                             # (T, hd): pair (i, i+hd/2) shares an angle
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x, cos, sin):
    # x: (B, heads, T, hd); (x[i], x[i+hd/2]) rotated by angle p*theta_i:
    #   x'[i] = x[i] cos - x[i+hd/2] sin,   x'[i+hd/2] = x[i+hd/2] cos + x[i] sin
    return x * cos + rotate_half(x) * sin


class Weight(nn.Module):
    """A module holding one parameter called `weight` (gives the `...proj.weight` names)."""

    def __init__(self, *shape, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape, dtype=dtype))


class Attention(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        d, H, Hkv = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
        hd = d // H
        self.H, self.Hkv, self.hd = H, Hkv, hd
        self.q_proj = Weight(H * hd, d, dtype=dtype)
        self.k_proj = Weight(Hkv * hd, d, dtype=dtype)
        self.v_proj = Weight(Hkv * hd, d, dtype=dtype)
        self.o_proj = Weight(d, H * hd, dtype=dtype)

    def forward(self, x, cos, sin, mask):
        B, T, d = x.shape
        H, Hkv, hd = self.H, self.Hkv, self.hd
        q = F.linear(x, self.q_proj.weight).view(B, T, H, hd).transpose(1, 2)      # (B, H, T, hd)
        k = F.linear(x, self.k_proj.weight).view(B, T, Hkv, hd).transpose(1, 2)    # (B, Hkv, T, hd)
        v = F.linear(x, self.v_proj.weight).view(B, T, Hkv, hd).transpose(1, 2)    # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = H // Hkv
        # head h attends with kv head h // (H / Hkv)
        k = k.repeat_interleave(group, dim=1)                                      # (B, H, T, hd)
        v = v.repeat_interleave(group, dim=1)                                      # (B, H, T, hd)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))      # (B, H, T, T)
        scores = scores.masked_fill(mask, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        o = torch.matmul(p, v)                                                     # (B, H, T, hd)
        o = o.transpose(1, 2).reshape(B, T, H * hd)                                # concat_h o_h
        return F.linear(o, self.o_proj.weight)                                     # (B, T, d)


class SwiGLU(nn.Module):
    def __init__(self, cfg, dtype, hidden=None):
        super().__init__()
        d, Fh = cfg["d_model"], hidden or cfg["ffn_hidden"]
        self.gate_proj = Weight(Fh, d, dtype=dtype)
        self.up_proj = Weight(Fh, d, dtype=dtype)
        self.down_proj = Weight(d, Fh, dtype=dtype)

    def forward(self, x):
        # FFN(x) = (silu(x Wg^T) * (x Wu^T)) Wd^T
        return F.linear(F.silu(F.linear(x, self.gate_proj.weight)) * F.linear(x, self.up_proj.weight),
                        self.down_proj.weight)


class Expert(nn.Module):
    """One Mixtral expert: w1 (gate), w3 (up), w2 (down)."""

    def __init__(self, d, hidden, dtype):
        super().__init__()
        self.w1 = Weight(hidden, d, dtype=dtype)
        self.w2 = Weight(d, hidden, dtype=dtype)
        self.w3 = Weight(hidden, d, dtype=dtype)

    def forward(self, x):
        return F.linear(F.silu(F.linear(x, self.w1.weight)) * F.linear(x, self.w3.weight), self.w2.weight)


class MoE(nn.Module):
    """MODEL.md "Mixture-of-Experts FFN", written as a plain loop over experts (no sorting, no grouping):

        r = x Wr^T;  p = softmax(r);  S = top_k(p) (ties to the lower index);  w = p_S / sum p_S (or p_S)
        y = sum_{e in S} w_e Expert_e(x)  (+ shared expert)
        load balance = alpha * E * sum_e f_e P_e   (f_e: share of the N*k assignments, no gradient; P_e = mean p_e)
        z-loss = beta * mean(logsumexp(r)^2)
    """

    def __init__(self, cfg, dtype):
        super().__init__()
        moe = cfg["moe"]
        d = cfg["d_model"]
        self.E, self.k, self.normalize = moe["experts"], moe["top_k"], moe["normalize_topk"]
        self.alpha, self.beta = moe["aux_loss"], moe["z_loss"]
        self.gate = Weight(self.E, d, dtype=dtype)
        self.experts = nn.ModuleList([Expert(d, moe["expert_hidden"], dtype) for _ in range(self.E)])
        if moe["shared_expert_hidden"] > 0:
            self.shared_expert = SwiGLU(cfg, dtype, hidden=moe["shared_expert_hidden"])

    def forward(self, x):
        """x (B, T, d) -> (y (B, T, d), load-balance loss, z-loss)."""
        B, T, d = x.shape
        xf = x.reshape(-1, d)                                                     # (N, d)
        N = xf.shape[0]
        r = F.linear(xf, self.gate.weight)                                        # (N, E)
        p = torch.softmax(r, dim=-1)
        # a stable descending sort keeps equal probabilities in index order: ties go to the lower index
        values, index = torch.sort(p, dim=-1, descending=True, stable=True)
        top_p, top_e = values[:, :self.k], index[:, :self.k]                      # (N, k)
        w = top_p / top_p.sum(dim=-1, keepdim=True) if self.normalize else top_p
        y = torch.zeros_like(xf)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(top_e == e, as_tuple=True)
            if token.numel() > 0:
                y = y.index_add(0, token, w[token, slot, None] * expert(xf[token]))
        if hasattr(self, "shared_expert"):
            y = y + self.shared_expert(xf)
        assigned = F.one_hot(top_e, self.E).sum(dim=(0, 1)).to(x.dtype)          # (E) pairs per expert
        f = assigned / (N * self.k)
        load_balance = self.alpha * self.E * (f * p.mean(dim=0)).sum()
        z_loss = self.beta * torch.logsumexp(r, dim=-1).pow(2).mean()
        return y.reshape(B, T, d), load_balance, z_loss


class Block(nn.Module):
    def __init__(self, cfg, dtype, moe=False):
        super().__init__()
        d = cfg["d_model"]
        self.eps = cfg["norm_eps"]
        self.input_layernorm = Weight(d, dtype=dtype)
        self.self_attn = Attention(cfg, dtype)
        self.post_attention_layernorm = Weight(d, dtype=dtype)
        if moe:
            self.block_sparse_moe = MoE(cfg, dtype)
        else:
            self.mlp = SwiGLU(cfg, dtype)

    def forward(self, h, cos, sin, mask, aux):
        """aux: a list receiving (load balance, z-loss) of an MoE FFN."""
        h = h + self.self_attn(rms_norm(h, self.input_layernorm.weight, self.eps), cos, sin, mask)
        x = rms_norm(h, self.post_attention_layernorm.weight, self.eps)
        if hasattr(self, "block_sparse_moe"):
            y, load_balance, z_loss = self.block_sparse_moe(x)
            aux.append((load_balance, z_loss))
            return h + y
        return h + self.mlp(x)


class L3Layer(nn.Module):
    """One Large Lookup Layer, MODEL.md "Large Lookup Layer (L3)", computed position by position in a
    padded form: every position gathers the k row slots [o_u, o_u + k) of its token u and masks the
    slots past n_u out of the softmax (no sorting, no grouping: the opposite of the l3c kernel).

        x = RMSNorm(h; g_in);  a = softmax(K_u x) (no scaling);  e = V_u^T a
        z = RMSNorm(W_up e; g_out);  h' = W_mix [z ; h]   (h + W_mix [z ; h] when residual)
    """

    def __init__(self, cfg, counts, dtype):
        super().__init__()
        l3 = cfg["l3"]
        d, v, d_emb, d_up = cfg["d_model"], l3["v"], l3["d_emb"], l3["d_up"]
        counts = torch.as_tensor(counts, dtype=torch.int32)
        assert counts.shape == (cfg["vocab_size"],), "one count per token id"
        assert int(counts.sum()) == v and int(counts.min()) >= 1 and int(counts.max()) <= l3["k"], "bad allocation"
        self.eps, self.k = cfg["norm_eps"], l3["k"]
        self.tie_kv, self.residual = l3["tie_kv"], l3["residual"]
        self.norm_in = Weight(d, dtype=dtype)
        self.w_k = nn.Parameter(torch.empty(v, d, dtype=dtype))
        if not self.tie_kv:
            assert d_emb is not None
            self.w_v = nn.Parameter(torch.empty(v, d_emb, dtype=dtype))
        else:
            assert d_emb == d, "tie_kv needs d_emb == d_model"
        self.w_up = Weight(d_up, d_emb, dtype=dtype)
        self.norm_out = Weight(d_up, dtype=dtype)
        self.w_mix = Weight(d, d_up + d, dtype=dtype)
        self.register_buffer("alloc", counts)                                     # n_u, saved as ...alloc

    def forward(self, h, tokens):
        x = rms_norm(h, self.norm_in.weight, self.eps)                            # (B, T, d)
        counts = self.alloc.long()
        offsets = torch.cumsum(counts, 0) - counts                                # o_u = sum_{u' < u} n_u'
        n = counts[tokens]                                                        # (B, T)
        slot = torch.arange(self.k, device=h.device)                              # (k)
        valid = slot < n[..., None]                                               # (B, T, k)
        rows = torch.where(valid, offsets[tokens][..., None] + slot, torch.zeros_like(slot))
        w_v = self.w_k if self.tie_kv else self.w_v
        K, V = self.w_k[rows], w_v[rows]                                          # (B, T, k, d), (B, T, k, d_emb)
        scores = torch.einsum("btkd,btd->btk", K, x)                              # K_u x, no 1/sqrt scaling
        a = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)     # (B, T, k), 0 past n_u
        e = torch.einsum("btk,btke->bte", a, V)                                   # V_u^T a, (B, T, d_emb)
        z = rms_norm(F.linear(e, self.w_up.weight), self.norm_out.weight, self.eps)
        out = F.linear(torch.cat([z, h], dim=-1), self.w_mix.weight)              # W_mix [z ; h], z first
        return h + out if self.residual else out


class Decoder(nn.Module):
    def __init__(self, cfg, dtype, l3_allocations=None):
        super().__init__()
        self.embed_tokens = Weight(cfg["vocab_size"], cfg["d_model"], dtype=dtype)
        moe_layers = set()
        if cfg.get("moe"):
            layers = cfg["moe"]["layers"]
            moe_layers = set(range(cfg["n_layers"])) if layers == "all" else set(layers)
        self.layers = nn.ModuleList([Block(cfg, dtype, moe=i in moe_layers) for i in range(cfg["n_layers"])])
        self.norm = Weight(cfg["d_model"], dtype=dtype)
        if cfg.get("l3"):
            after = cfg["l3"]["after_layers"]
            assert list(after) == sorted(set(after)) and all(0 <= i < cfg["n_layers"] for i in after)
            assert l3_allocations is not None and len(l3_allocations) == len(after), "one allocation per L3 layer"
            self.l3 = nn.ModuleList([L3Layer(cfg, counts, dtype) for counts in l3_allocations])


class Llama(nn.Module):
    """Llama decoder of MODEL.md. cfg: dict with CONFIG_KEYS (n_kv_heads 0 means n_heads); an optional
    "l3" dict with L3_KEYS adds Large Lookup Layers, whose allocations (rows per token id, one list per
    L3 layer) are given as l3_allocations."""

    def __init__(self, config, dtype=torch.float32, l3_allocations=None):
        super().__init__()
        cfg = {k: config[k] for k in CONFIG_KEYS if k in config}
        cfg.setdefault("rope_theta", 10000.0)
        cfg.setdefault("norm_eps", 1e-5)
        cfg.setdefault("tie_embeddings", False)
        if not cfg.get("n_kv_heads"):
            cfg["n_kv_heads"] = cfg["n_heads"]
        assert cfg["d_model"] % cfg["n_heads"] == 0, "d_model must be a multiple of n_heads"
        assert cfg["n_heads"] % cfg["n_kv_heads"] == 0, "n_heads must be a multiple of n_kv_heads"
        assert (cfg["d_model"] // cfg["n_heads"]) % 2 == 0, "head_dim must be even for RoPE"
        if cfg.get("l3"):
            cfg["l3"] = {key: cfg["l3"][key] for key in L3_KEYS}
        if cfg.get("moe"):
            cfg["moe"] = {key: cfg["moe"].get(key, MOE_DEFAULTS.get(key)) for key in MOE_KEYS}
        self.cfg = cfg
        self.last_loss_parts = None
        self.dtype = dtype
        self.model = Decoder(cfg, dtype, l3_allocations)
        if not cfg["tie_embeddings"]:
            self.lm_head = Weight(cfg["vocab_size"], cfg["d_model"], dtype=dtype)
        self._rope_cache = {}

    def init_weights(self, std=0.02, norm_std=0.0, generator=None):
        """Matrices ~ normal(0, std); norm gains = 1 + norm_std * randn (1 exactly when norm_std == 0).
        Draws in named_parameters() order, in float64, then casts (so the values do not depend on dtype)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    g = torch.randn(p.shape, dtype=torch.float64, generator=generator)
                    p.copy_(1.0 + norm_std * g)
                else:
                    p.copy_(std * torch.randn(p.shape, dtype=torch.float64, generator=generator))

    def output_weight(self):
        return self.model.embed_tokens.weight if self.cfg["tie_embeddings"] else self.lm_head.weight

    def _rope(self, T, device):
        key = (T, str(device))
        if key not in self._rope_cache:
            hd = self.cfg["d_model"] // self.cfg["n_heads"]
            self._rope_cache[key] = rope_cos_sin(T, hd, self.cfg["rope_theta"], self.dtype, device)
        return self._rope_cache[key]

    def forward(self, tokens):
        """tokens: (B, T) int64 -> logits (B, T, V)."""
        B, T = tokens.shape
        cos, sin = self._rope(T, tokens.device)
        # causal mask: True where key position > query position (masked out)
        mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).triu(1)
        h = self.model.embed_tokens.weight[tokens]                                   # (B, T, d)
        after = list(self.cfg["l3"]["after_layers"]) if self.cfg.get("l3") else []
        self.aux = []                                                                # per MoE layer
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, mask, self.aux)
            if i in after:                                                           # the j-th L3 layer replaces h
                h = self.model.l3[after.index(i)](h, tokens)
        h = rms_norm(h, self.model.norm.weight, self.cfg["norm_eps"])
        return F.linear(h, self.output_weight())                                     # (B, T, V)

    def loss(self, tokens, targets):
        """Mean cross-entropy over all B*T positions plus the MoE auxiliary losses; returns (loss, logits).
        The parts are left in self.last_loss_parts: {"cross_entropy", "moe": [(load balance, z-loss)]}."""
        logits = self(tokens)
        V = logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        self.last_loss_parts = {"cross_entropy": ce.detach(), "moe": [(a.detach(), b.detach()) for a, b in self.aux]}
        return ce + sum(a + b for a, b in self.aux), logits


def clip_grad_norm(params, max_norm):
    """Global L2 norm over all gradients; if max_norm / (norm + 1e-6) < 1, scales every gradient by it.
    Returns the norm before clipping (as a Python float)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum((g.double() * g.double()).sum() for g in grads)).item()
    if max_norm and max_norm > 0:
        clip = max_norm / (norm + 1e-6)
        if clip < 1.0:
            for g in grads:
                g.mul_(clip)
    return norm


class AdamW:
    """AdamW exactly as MODEL.md (PyTorch semantics), written out:

        theta -= lr * wd * theta        (decoupled; only parameters with dim == 2)
        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        theta -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)       t = 1 at the first step
    """

    def __init__(self, params, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        self.params = list(params)
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, betas[0], betas[1], eps, weight_decay
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        self.t += 1
        bc1 = 1.0 - self.b1 ** self.t
        bc2 = 1.0 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            if p.dim() == 2 and self.wd != 0.0:
                p.mul_(1.0 - lr * self.wd)
            m.mul_(self.b1).add_(g, alpha=1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            p.sub_(lr * (m / bc1) / (torch.sqrt(v / bc2) + self.eps))

    def zero_grad(self):
        for p in self.params:
            p.grad = None
