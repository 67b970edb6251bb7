"""The LLaMA language model of LLaVA-1.5, with the release's parameter names (spec section 1).

Module names follow the checkpoint (`model.layers.{i}.self_attn.k_proj_hd`, `model.mm_projector.0`,
`lm_head`, ...), so a release state dict loads with `load_state_dict` as it is. The forward here is
the fast path's (batched, KV-cached; the attention kernels are in `fast.py`); `reference.py` has
its own literal forward over the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlexConfig
from .fast import HiResContext, KVCache, hierarchical_attention, record_map, sdpa_attention
from .rope import apply_rope, repeat_kv


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: FlexConfig, layer: int):
        super().__init__()
        self.layer = layer  # its index: the cache slot, and whether it selects / reads high-res keys
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        if cfg.has_hd:  # FlexAttention's projections of the high-res features (present in every layer)
            self.k_proj_hd = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
            self.v_proj_hd = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                visible: torch.Tensor, hires: HiResContext | None) -> torch.Tensor:
        """x [B, T, D] (the call's new tokens), visible [B, T, cache + T] -> [B, T, D]."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, d]
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, d]
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos[:, None], sin[:, None]), apply_rope(k, cos[:, None], sin[:, None])
        keys, values = cache.update(self.layer, k, v)  # [B, Hkv, cache + T, d]
        n_rep = self.num_heads // self.num_kv_heads
        keys, values = repeat_kv(keys, n_rep), repeat_kv(values, n_rep)  # [B, H, cache + T, d]
        if hires is not None and hires.selects_at(self.layer):
            out = hierarchical_attention(self, self.layer, q, keys, values, visible, hires)
        else:
            out = sdpa_attention(q, keys, values, visible)
            if hires is not None and hires.trace.wants_map(self.layer):  # the picture only
                record_map(self.layer, q, keys, visible, hires)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: FlexConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache: KVCache, visible, hires: HiResContext | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, visible, hires)
        return x + self.mlp(self.post_attention_layernorm(x))


def make_projector(cfg: FlexConfig) -> nn.Module:
    if cfg.projector_type == "linear":
        return nn.Linear(cfg.mm_hidden_size, cfg.hidden_size)
    # mlp2x_gelu: Linear, exact (erf) GELU, Linear -> names mm_projector.0 / mm_projector.2
    return nn.Sequential(nn.Linear(cfg.mm_hidden_size, cfg.hidden_size), nn.GELU(),
                         nn.Linear(cfg.hidden_size, cfg.hidden_size))


class Backbone(nn.Module):
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mm_projector = make_projector(cfg)

    def forward(self, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                visible: torch.Tensor, hires: HiResContext | None = None) -> torch.Tensor:
        """All layers on the call's new tokens embeds [B, T, D]; returns the final-normed hidden [B, T, D].

        cos/sin [B, T, head_dim] of the tokens' positions; visible [B, T, cache.length + T]: which keys
        each new row may attend to; hires: which rows use high-res keys, or None.
        """
        x = embeds
        for layer in self.layers:
            x = layer(x, cos, sin, cache, visible, hires)
        cache.advance(embeds.shape[1])
        return self.norm(x)


class LlavaLM(nn.Module):
    """LLaMA + projector, named as LlavaLlamaForCausalLM's state dict (vision tower excluded)."""

    def __init__(self, cfg: FlexConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


