"""RoPE, as transformers 4.37's LlamaRotaryEmbedding (fp32 tables, cast to the model dtype), the
interpolated RoPE of the high-res keys (spec section 3), and grouped-query key repetition."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
