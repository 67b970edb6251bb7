"""The batched attention of the fast path (spec sections 3-7): SDPA and, beside it, FlexAttention's
hierarchical attention, plus what one forward call carries (KV cache, high-res context, trace).

The caller says which rows of a call use high-res keys (the last `HiResContext.n_rows`: 1 in
generation, all rows in a likelihood suffix call) and which keys each row may see (`visible`, so
prefix caches and several options per sample share one call). Rows that don't use high-res go
through SDPA; high-res rows are computed explicitly (one row of scores each, never an O(seq^2)
matrix), with high-res keys/values projected only for the tokens some row of the sample selected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import ResolvedOptions
from .hires_cache import project_tokens
from .rope import repeat_kv
from .selection import all_selection, attention_selection, center_selection, random_selection


class KVCache:
    """Static per-layer key/value buffers [B, Hkv, capacity, d]; high-res keys never enter it."""

    def __init__(self, num_layers: int, b: int, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        shape = (b, kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0
        self.write_at: torch.Tensor | None = None  # decode steps: the column [1] on the device, keys of full capacity

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.write_at is not None:  # static shapes: no host-side length, the caller masks unwritten columns
            self.k[layer].index_copy_(2, self.write_at, k)
            self.v[layer].index_copy_(2, self.write_at, v)
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        if self.write_at is None:  # a static step keeps no host-side length (a changing int would recompile it)
            self.length += n


@dataclass(frozen=True)
class HiResImages:
    """The high-res side of a batch of images, computed once per model call (nothing survives it)."""

    feats: torch.Tensor  # [B, N, D] raw projector outputs of the stitched high-res grid, N = hd_grid^2
    cos: torch.Tensor  # [B, N, head_dim] interpolated RoPE of the high-res keys
    sin: torch.Tensor
    img_cols: torch.Tensor  # [B, 576] key-axis index of each low-res image token
    pad_cells: torch.Tensor  # [B, 24, 24] low-res cells that cover padding
    hd_grid: int
    sample_keys: list[str]  # for the seeded random ablation


@dataclass
class Trace:
    """What the high-res rows selected: layer -> [B, R] selected token counts (and masks on request).

    Attention maps (the appendix's A.2 / A.3): for every layer in `map_layers`, `maps[layer]` is the
    post-softmax low-res attention of the call's last `n_rows` rows over the image columns
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

    def first_rows(self) -> tuple[dict, dict]:
        """The maps [B, 576] (float32) and masks [B, N] of each sample's first high-res row, on the CPU, for
        the layers with both (likelihood scoring: the prompt-end row, the same in every option block)."""
        maps = {k: v[:, 0].float().cpu() for k, v in sorted(self.maps.items()) if k in self.masks}
        return maps, {k: self.masks[k][:, 0].cpu() for k in maps}

    def record(self, layer: int, selection: torch.Tensor) -> None:
        self.selected[layer] = selection.sum(-1)
        if self.keep_masks:
            self.masks[layer] = selection


@dataclass
class HiResContext:
    """One forward call's high-res context: which rows use it, where they sit, and the selection the
    previous layer made (layer S selects first; every layer > S reads the selection of the one before)."""

    images: HiResImages | None  # None: no high-res keys (plain LLaVA, selection none); maps only
    options: ResolvedOptions  # selection rule, threshold, S, random ratio and seed
    n_rows: int  # the last n_rows rows of the call use high-res keys
    row_positions: torch.Tensor  # [B, n_rows] absolute positions of those rows
    trace: Trace = field(default_factory=Trace)
    previous_selection: torch.Tensor | None = None  # [B, n_rows, N] bool, made by layer i - 1
    kv_cache: object | None = None  # hires_cache.HiResKVCache: high-res K/V kept across the calls of one generate()

    def selects_at(self, layer: int) -> bool:
        return self.images is not None and self.n_rows > 0 and layer >= self.options.select_layer


def sdpa_attention(q, keys, values, visible):
    """q [B, H, T, d], keys/values [B, H, K, d], visible [B, T, K] -> [B, H, T, d]."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None])


def hierarchical_attention(attn, layer: int, q, keys, values, visible, hires: HiResContext):
    """FlexAttention's attention for the last `hires.n_rows` rows (the others: SDPA).

    Each high-res row first attends to the low-res keys alone; that softmax drives the row's
    selection for the next layer. From layer S + 1 on, the row's output comes from one softmax
    over the low-res keys and the high-res tokens the previous layer selected for it.
    """
    b, h, t, d = q.shape
    r = hires.n_rows
    # Rows before the high-res ones: SDPA over all rows, sliced (the kernel's numbers do not depend on r).
    out_lowres_rows = sdpa_attention(q, keys, values, visible)[:, :, : t - r] if r < t else None
    q_hd = q[:, :, t - r:]  # [B, H, R, d]
    scores = lowres_scores(q_hd, keys, visible[:, t - r:])  # [B, H, R, K]
    probs_lowres = torch.softmax(scores, dim=-1)  # the low-res-only softmax: selection reads this
    selection = select_hires_tokens(layer, probs_lowres, hires, q.dtype)
    hd_kv = None
    if layer > hires.options.select_layer and hires.previous_selection is not None:
        hd_kv = selected_kv(attn, hires, h // attn.num_kv_heads)
    hires.previous_selection = selection
    if hd_kv is None:
        out_hd = probs_lowres.to(q.dtype) @ values  # [B, H, R, d]
    else:
        k_hd, v_hd, row_mask = hd_kv  # [B, H, M, d] x2, [B, R, M]
        s_hd = ((q_hd @ k_hd.transpose(-1, -2)) / math.sqrt(d)).float()  # [B, H, R, M]
        s_hd = s_hd.masked_fill(~row_mask[:, None], float("-inf"))
        probs = torch.softmax(torch.cat([scores, s_hd], dim=-1), dim=-1).to(q.dtype)  # one softmax over the union
        n_keys = keys.shape[2]
        out_hd = probs[..., :n_keys] @ values + probs[..., n_keys:] @ v_hd
    return out_hd if out_lowres_rows is None else torch.cat([out_lowres_rows, out_hd], dim=2)


def lowres_scores(q_rows, keys, visible_rows):
    """[B, H, R, d] x [B, H, K, d] -> [B, H, R, K] masked scores. As the release: q.k in the model
    dtype divided by sqrt(d), then float32 for the softmax. Only these scores are upcast, never the cache."""
    scores = ((q_rows @ keys.transpose(-1, -2)) / math.sqrt(q_rows.shape[-1])).float()
    return scores.masked_fill(~visible_rows[:, None], float("-inf"))


def image_attention(probs: torch.Tensor, img_cols: torch.Tensor, dtype) -> torch.Tensor:
    """[B, H, R, keys] post-softmax attention -> [B, R, 576] over the image columns, summed over heads
    in the model dtype (as the release's selection)."""
    b, h, r, _ = probs.shape
    cols = img_cols[:, None, None, :].expand(b, h, r, img_cols.shape[1])
    return probs.gather(-1, cols).to(dtype).sum(1)


def record_map(layer: int, q, keys, visible, hires: HiResContext) -> None:
    """A layer whose rows use no high-res keys: the map of the last `hires.n_rows` rows, for the picture
    only (the layer's output stays SDPA's)."""
    t, r = q.shape[2], hires.n_rows
    probs = torch.softmax(lowres_scores(q[:, :, t - r:], keys, visible[:, t - r:]), dim=-1)
    hires.trace.maps[layer] = image_attention(probs, hires.trace.map_cols, q.dtype)


def select_hires_tokens(layer: int, probs_lowres, hires: HiResContext, dtype) -> torch.Tensor:
    """The selection each high-res row makes at `layer` from its low-res-only attention
    probs_lowres [B, H, R, K] -> [B, R, N] bool; recorded in the trace (the one place it is filled)."""
    b, h, r, _ = probs_lowres.shape
    images, opts, trace = hires.images, hires.options, hires.trace
    if opts.selection == "attention" or trace.wants_map(layer):
        img = image_attention(probs_lowres, images.img_cols, dtype)  # [B, R, 576]
        if trace.wants_map(layer):
            trace.maps[layer] = img
    if opts.selection == "attention":
        sel = attention_selection(img, images.pad_cells, opts.threshold, images.hd_grid)
    elif opts.selection == "random":
        sel = random_selection(images.sample_keys, layer, hires.row_positions, opts.random_ratio, opts.seed,
                               images.hd_grid, probs_lowres.device)
    elif opts.selection == "center":
        sel = center_selection(b, r, images.hd_grid, probs_lowres.device)
    elif opts.selection == "all":
        sel = all_selection(b, r, images.hd_grid, probs_lowres.device)
    else:
        raise ValueError(f"unknown selection {opts.selection!r}")
    hires.trace.record(layer, sel)
    return sel


def selected_kv(attn, hires: HiResContext, n_rep: int):
    """The high-res keys/values the previous layer's selection needs: from the call's cache when it has
    one (projecting only what it lacks), else projected now (also when the cache's budget is full)."""
    if hires.kv_cache is not None:
        hd_kv = hires.kv_cache.lookup(attn, hires.images, hires.previous_selection, n_rep)
        if hd_kv is not None:
            return hd_kv
    return project_selected(attn, hires.images, hires.previous_selection, n_rep)


def project_selected(attn, images: HiResImages, sel: torch.Tensor, n_rep: int):
    """High-res keys/values for the tokens any row of a sample selected (others are never computed).

    sel [B, R, N] -> k, v: [B, H, M, d] and row_mask [B, R, M] (which of the M tokens each row
    selected), or None when no row selected anything.
    """
    b, r, n = sel.shape
    union = sel.any(1)  # [B, N]
    counts = union.sum(1)
    m = int(counts.max())  # the one host sync of a high-res layer
    if m == 0:
        return None
    order = torch.argsort((~union).to(torch.int32), dim=1, stable=True)[:, :m]  # [B, M] selected first, in index order
    valid = torch.arange(m, device=sel.device)[None] < counts[:, None]
    row_mask = sel.gather(2, order[:, None, :].expand(b, r, m)) & valid[:, None]
    k, v = project_tokens(attn, images, order)
    return repeat_kv(k, n_rep), repeat_kv(v, n_rep), row_mask
