# Hugging Face `transformers` classes for l3c's Llama with Large Lookup Layers (MODEL.md "Large Lookup Layer"),
# written by `l3c export hf` beside config.json and model.safetensors, and loaded with trust_remote_code=True:
#
#     model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True, torch_dtype=torch.float32)
#
# L3LlamaForCausalLM is LlamaForCausalLM with one L3 layer after each decoder layer listed in config.l3_after_layers:
#     x = RMSNorm(h; norm_in);  a = softmax(K_u x);  e = V_u^T a;  z = RMSNorm(W_up e; norm_out);  h' = W_mix [z ; h]
# (h' = h + W_mix [z ; h] with config.l3_residual), where u is the token id at the position and K_u, V_u are the
# rows [o_u, o_u + n_u) of w_k, w_v under the layer's allocation (model.l3.{j}.alloc: n_u per token id). The L3
# output replaces the decoder layer's output (a forward hook on that layer), so the KV cache of `generate` works
# unchanged: an L3 layer only reads the current positions' hidden states and token ids.
import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaRMSNorm


class L3LlamaConfig(LlamaConfig):
    model_type = "l3_llama"

    def __init__(self, l3_after_layers=(), l3_v=0, l3_k=1, l3_d_emb=0, l3_d_up=0, l3_tie_kv=False, l3_residual=False,
                 **kwargs):
        self.l3_after_layers = list(l3_after_layers)
        self.l3_v = l3_v
        self.l3_k = l3_k
        self.l3_d_emb = l3_d_emb
        self.l3_d_up = l3_d_up
        self.l3_tie_kv = l3_tie_kv
        self.l3_residual = l3_residual
        super().__init__(**kwargs)


class L3Layer(nn.Module):
    """One Large Lookup Layer; parameter names are l3c's (model.l3.{j}.w_k, ...)."""

    def __init__(self, config):
        super().__init__()
        d, v = config.hidden_size, config.l3_v
        self.k = config.l3_k
        self.tie_kv = config.l3_tie_kv
        self.residual = config.l3_residual
        self.norm_in = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.w_k = nn.Parameter(torch.zeros(v, d))
        if not self.tie_kv:
            self.w_v = nn.Parameter(torch.zeros(v, config.l3_d_emb))
        self.w_up = nn.Linear(config.l3_d_emb, config.l3_d_up, bias=False)
        self.norm_out = LlamaRMSNorm(config.l3_d_up, eps=config.rms_norm_eps)
        self.w_mix = nn.Linear(config.l3_d_up + d, d, bias=False)
        self.register_buffer("alloc", torch.ones(config.vocab_size, dtype=torch.int32))

    def forward(self, h, token_ids):
        # h (B, T, d), token_ids (B, T): each position attends over its own token's rows of the tables.
        counts = self.alloc.to(torch.long)
        offsets = torch.cumsum(counts, 0) - counts                        # o_u
        slot = torch.arange(self.k, device=h.device)                      # (k)
        n = counts[token_ids]                                             # (B, T)
        rows = offsets[token_ids].unsqueeze(-1) + slot                    # (B, T, k)
        valid = slot < n.unsqueeze(-1)                                    # (B, T, k)
        rows = torch.where(valid, rows, torch.zeros_like(rows))
        x = self.norm_in(h)
        w_v = self.w_k if self.tie_kv else self.w_v
        keys, values = self.w_k[rows], w_v[rows]                          # (B, T, k, d), (B, T, k, d_emb)
        scores = torch.einsum("btkd,btd->btk", keys.float(), x.float())   # no 1/sqrt scaling
        scores = scores.masked_fill(~valid, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        e = torch.einsum("btk,btke->bte", probs, values.float()).to(h.dtype)
        z = self.norm_out(self.w_up(e))
        out = self.w_mix(torch.cat([z, h], dim=-1))
        return h + out if self.residual else out


class L3LlamaModel(LlamaModel):
    config_class = L3LlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.l3 = nn.ModuleList([L3Layer(config) for _ in config.l3_after_layers])
        self._token_ids = None
        for j, i in enumerate(config.l3_after_layers):
            self.layers[i].register_forward_hook(self._l3_hook(j))
        self.post_init()

    def _l3_hook(self, j):
        def hook(module, inputs, outputs):
            hidden = self.l3[j](outputs[0], self._token_ids)
            return (hidden,) + tuple(outputs[1:])
        return hook

    def forward(self, input_ids=None, **kwargs):
        if input_ids is None:
            raise ValueError("L3LlamaModel needs input_ids: an L3 layer is routed by token id")
        self._token_ids = input_ids
        try:
            return super().forward(input_ids=input_ids, **kwargs)
        finally:
            self._token_ids = None


class L3LlamaForCausalLM(LlamaForCausalLM):
    config_class = L3LlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = L3LlamaModel(config)
        self.post_init()
