"""The batched FlexAttention forward used by the runner (spec sections 3-7, fast path).

One pass over the layers serves every mode: the caller says which rows of the call use high-res
keys (the last `n_hd_rows`: 1 in generation, all rows in a likelihood suffix call) and which keys
each row may see (`visible`, so prefix caches and several options per sample share one call).
Rows that don't use high-res go through SDPA; high-res rows are computed explicitly (one row of
scores each, never an O(seq^2) matrix), with high-res keys/values projected only for the tokens
some row of the sample selected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .llama import LlavaLM, apply_rope, repeat_kv
from .selection import all_selection, attention_selection, center_selection, random_selection


@dataclass
class HDState:
    """Per-call high-res context (no state survives a call)."""

    feats: torch.Tensor  # [B, N, D] raw projector outputs of the stitched high-res grid
    cos: torch.Tensor  # [B, N, head_dim] interpolated RoPE of the high-res keys
    sin: torch.Tensor
    img_cols: torch.Tensor  # [B, 576] key-axis index of each low-res image token
    pad_cells: torch.Tensor  # [B, 24, 24] low-res cells that cover padding
    select_layer: int  # S: makes the first selection; layers > S use high-res keys
    selection: str  # attention | random | center | all
    threshold: float
    hd_grid: int
    sample_keys: list[str] = field(default_factory=list)  # for the seeded random ablation
    random_ratio: float = 0.1
    seed: int = 0


class KVCache:
    """Static per-layer key/value buffers [B, Hkv, capacity, d]; high-res keys never enter it."""

    def __init__(self, num_layers: int, b: int, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        shape = (b, kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


@dataclass
class Trace:
    """Optional per-call record of selections: layer -> [B, R] selected token counts.

    Attention maps (the appendix's A.2 / A.3): for every layer in `map_layers`, `maps[layer]` is the
    post-softmax low-res attention of the call's last `n_hd_rows` rows over the image columns
    `map_cols` [B, 576], summed over heads in the model dtype: [B, R, 576]. At layers >= S with
    attention selection it is the very tensor the selection reads; at other layers (and with no
    high-res at all) the same rows' attention is computed the same way, for the picture only.
    """

    selected: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    keep_masks: bool = False
    map_layers: frozenset = frozenset()
    map_cols: torch.Tensor | None = None
    maps: dict = field(default_factory=dict)

    def wants_map(self, layer: int) -> bool:
        return layer in self.map_layers


def forward(lm: LlavaLM, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
            visible: torch.Tensor, hd: HDState | None, n_hd_rows: int, row_positions: torch.Tensor,
            trace: Trace | None = None) -> torch.Tensor:
    """Run all layers on the call's new tokens; returns the final-normed hidden states [B, T, D].

    visible: [B, T, cache.length + T] bool, which keys each new row may attend to.
    """
    x = embeds
    b, t, _ = x.shape
    sel = None
    for i, layer in enumerate(lm.model.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos[:, None], sin[:, None]), apply_rope(k, cos[:, None], sin[:, None])
        keys, values = cache.update(i, k, v)
        out, sel = _attention(i, attn, q, keys, values, visible, hd, n_hd_rows, sel, row_positions, trace)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    cache.advance(t)
    return lm.model.norm(x)


def _attention(i, attn, q, keys, values, visible, hd, n_hd_rows, prev_sel, row_positions, trace):
    b, h, t, d = q.shape
    n_rep = attn.num_heads // attn.num_kv_heads
    keys, values = repeat_kv(keys, n_rep), repeat_kv(values, n_rep)
    use_hd = hd is not None and n_hd_rows > 0 and i >= hd.select_layer
    out = None
    if not use_hd or n_hd_rows < t:
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None])
        if not use_hd:
            if trace is not None and trace.wants_map(i):  # the picture only: this layer's output stays SDPA's
                scores = _lowres_scores(q[:, :, t - n_hd_rows:], keys, visible[:, t - n_hd_rows:])
                trace.maps[i] = image_attention(torch.softmax(scores, dim=-1), trace.map_cols, q.dtype)
            return out, None
    r = n_hd_rows
    q_hd_rows = q[:, :, t - r:]
    scores = _lowres_scores(q_hd_rows, keys, visible[:, t - r:])
    probs_lowres = torch.softmax(scores, dim=-1)  # the low-res-only softmax: selection reads this
    new_sel = _select(i, probs_lowres, hd, row_positions, q.dtype, trace)
    hd_kv = _project_selected(attn, hd, prev_sel, n_rep) if i > hd.select_layer and prev_sel is not None else None
    if hd_kv is not None:
        k_hd, v_hd, row_mask = hd_kv
        s_hd = ((q_hd_rows @ k_hd.transpose(-1, -2)) / math.sqrt(d)).float()
        s_hd = s_hd.masked_fill(~row_mask[:, None], float("-inf"))
        probs = torch.softmax(torch.cat([scores, s_hd], dim=-1), dim=-1).to(q.dtype)  # one softmax over the union
        n_keys = keys.shape[2]
        out_hd = probs[..., :n_keys] @ values + probs[..., n_keys:] @ v_hd
    else:
        out_hd = probs_lowres.to(q.dtype) @ values
    out = out_hd if out is None else torch.cat([out[:, :, : t - r], out_hd], dim=2)
    return out, new_sel


def _lowres_scores(q_rows, keys, visible_rows):
    # As the release: q.k in the model dtype divided by sqrt(d), softmax in float32. Only these
    # [B, H, R, keys] scores are upcast, never the cache.
    scores = ((q_rows @ keys.transpose(-1, -2)) / math.sqrt(q_rows.shape[-1])).float()
    return scores.masked_fill(~visible_rows[:, None], float("-inf"))


def image_attention(probs: torch.Tensor, img_cols: torch.Tensor, dtype) -> torch.Tensor:
    """[B, H, R, keys] post-softmax attention -> [B, R, 576] over the image columns, summed over heads
    in the model dtype (as the release's selection)."""
    b, h, r, _ = probs.shape
    cols = img_cols[:, None, None, :].expand(b, h, r, img_cols.shape[1])
    return probs.gather(-1, cols).to(dtype).sum(1)


def _select(i, probs_lowres, hd: HDState, row_positions, dtype, trace):
    b, h, r, _ = probs_lowres.shape
    img = None
    if hd.selection == "attention" or (trace is not None and trace.wants_map(i)):
        img = image_attention(probs_lowres, hd.img_cols, dtype)
        if trace is not None and trace.wants_map(i):
            trace.maps[i] = img
    if hd.selection == "attention":
        sel = attention_selection(img, hd.pad_cells, hd.threshold, hd.hd_grid)
    elif hd.selection == "random":
        sel = random_selection(hd.sample_keys, i, row_positions, hd.random_ratio, hd.seed, hd.hd_grid,
                               probs_lowres.device)
    elif hd.selection == "center":
        sel = center_selection(b, r, hd.hd_grid, probs_lowres.device)
    elif hd.selection == "all":
        sel = all_selection(b, r, hd.hd_grid, probs_lowres.device)
    else:
        raise ValueError(f"unknown selection {hd.selection!r}")
    if trace is not None:
        trace.selected[i] = sel.sum(-1)
        if trace.keep_masks:
            trace.masks[i] = sel
    return sel


def _project_selected(attn, hd: HDState, sel: torch.Tensor, n_rep: int):
    """High-res keys/values for the tokens any row of a sample selected (others are never computed).

    Returns k, v: [B, H, M, d] and row_mask [B, R, M] (which of the M tokens each row selected),
    or None when no row selected anything.
    """
    b, r, n = sel.shape
    union = sel.any(1)
    counts = union.sum(1)
    m = int(counts.max())  # the one host sync of a high-res layer
    if m == 0:
        return None
    order = torch.argsort((~union).to(torch.int32), dim=1, stable=True)[:, :m]  # selected first, in index order
    valid = torch.arange(m, device=sel.device)[None] < counts[:, None]
    row_mask = sel.gather(2, order[:, None, :].expand(b, r, m)) & valid[:, None]
    feats = hd.feats.gather(1, order[..., None].expand(b, m, hd.feats.shape[-1]))
    cos = hd.cos.gather(1, order[..., None].expand(b, m, hd.cos.shape[-1]))[:, None]
    sin = hd.sin.gather(1, order[..., None].expand(b, m, hd.sin.shape[-1]))[:, None]
    k = attn.k_proj_hd(feats).view(b, m, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj_hd(feats).view(b, m, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    k = apply_rope(k, cos, sin)
    return repeat_kv(k, n_rep), repeat_kv(v, n_rep), row_mask
