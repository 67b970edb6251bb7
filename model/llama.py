"""The LLaMA language model of LLaVA-1.5, with the release's parameter names (spec section 1).

Module names follow the checkpoint (`model.layers.{i}.self_attn.k_proj_hd`, `model.mm_projector.0`,
`lm_head`, ...), so a release state dict loads with `load_state_dict` as it is. The forward passes
live in `fast.py` (batched) and `reference.py` (literal); this file only holds weights and the
small shared maths (RMSNorm, RoPE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlexConfig


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
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        if cfg.has_hd:  # FlexAttention's projections of the high-res features (present in every layer)
            self.k_proj_hd = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
            self.v_proj_hd = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


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
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mm_projector = make_projector(cfg)


class LlavaLM(nn.Module):
    """LLaMA + projector, named as LlavaLlamaForCausalLM's state dict (vision tower excluded)."""

    def __init__(self, cfg: FlexConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


# ---- RoPE (as transformers 4.37's LlamaRotaryEmbedding: fp32 tables, cast to the model dtype) ----

def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape [*positions.shape, head_dim] for integer positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def hd_rope(image_positions: torch.Tensor, hd_grid: int, head_dim: int, theta: float, dtype: torch.dtype):
    """RoPE for the high-res keys (spec section 3): the cos/sin of the 576 low-res image positions,
    as a 24x24 grid, bicubic-interpolated (align_corners=False) to hd_grid x hd_grid, row-major.

    image_positions: [B, 576] -> cos, sin [B, hd_grid^2, head_dim].
    """
    b, n = image_positions.shape
    grid = int(round(n ** 0.5))
    out = []
    for table in rope_cos_sin(image_positions, head_dim, theta, dtype):
        t = table.float().reshape(b, grid, grid, head_dim).permute(0, 3, 1, 2)
        t = F.interpolate(t, size=(hd_grid, hd_grid), mode="bicubic", align_corners=False)
        out.append(t.flatten(2).transpose(1, 2).to(dtype))
    return out[0], out[1]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, S, d] -> [B, Hkv * n_rep, S, d] (grouped-query attention)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)
