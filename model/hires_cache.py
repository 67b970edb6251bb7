"""High-res keys/values kept across the forward calls of one generate() call (issue 22).

A token's high-res key and value at layer L depend only on its projector feature, its fixed
(interpolated) RoPE position and that layer's `k_proj_hd`/`v_proj_hd`: never on the step or the
query row. So a cache per (sample, layer) is exact. It is never shared across layers (each has its
own weights) nor across generate() calls (nothing survives a call).

- `center` / `all` (a selection that never changes): the selected tokens are projected once per
  sample and layer, at the first high-res layer call (the prefill), into fixed-capacity buffers
  [B, Hkv, M, d] with M known on the host (576 / 5184 in the 7B shape). Decode steps only read them:
  no projection, no host sync, static shapes.
- `attention` / `random` (each row selects anew): the cache holds the blocks a row selects by (the
  9x9 grid's 8x8 tokens at zoom 3; the random ablation's 8x8 grid of 9x9 tokens). A step projects only the blocks its selection needs that were not projected before, into
  per-sample slots. The budget (`DEFAULT_BUDGET_BYTES` per sample, all high-res layers together)
  sets the number of slots; a layer whose new blocks don't fit any more re-projects its selection
  for that call, as without a cache (exact either way). Finding how many blocks are new is one host
  sync per high-res layer, and the projection's shape follows it (this path is not graph-captured).

Rows that use the cache see exactly the keys the release gives them: the cached tokens outside a
row's own selection are masked with -inf, as the per-row mask of `fast.project_selected`.
"""

from __future__ import annotations

import torch

from .rope import apply_rope, repeat_kv
from .selection import POOL, RANDOM_CELLS, all_selection, center_selection

DEFAULT_BUDGET_BYTES = 1 << 30  # 1 GiB per sample: 44 of the 81 blocks in the 7B shape (fp16, 23 layers)
STATIC_MODES = ("center", "all")
BLOCK_MODES = ("attention", "random")


def block_layout(hd_grid: int, cells: int = POOL) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks of a cells x cells selection grid over an hd_grid x hd_grid token grid (nearest
    upsampling: token i of an axis belongs to cell i * cells // hd_grid): 9x9 for attention / center
    (8x8 tokens at zoom 3), the random ablation's 8x8 (9x9 tokens).
    -> tokens [cells^2, T] (padded with 0) and valid [cells^2, T]."""
    axis = torch.arange(hd_grid) * cells // hd_grid
    block_of = (axis[:, None] * cells + axis[None, :]).flatten()  # [N]
    members = [torch.nonzero(block_of == k).flatten() for k in range(cells * cells)]
    width = max(len(m) for m in members)
    tokens = torch.zeros(cells * cells, width, dtype=torch.long)
    valid = torch.zeros(cells * cells, width, dtype=torch.bool)
    for k, m in enumerate(members):
        tokens[k, : len(m)], valid[k, : len(m)] = m, True
    return tokens, valid


class HiResKVCache:
    """One generate() call's high-res K/V, per high-res layer (see the module docstring)."""

    def __init__(self, mode: str, batch: int, hd_grid: int, hd_layers: int, kv_dim: int, dtype_bytes: int,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES):
        if mode not in STATIC_MODES + BLOCK_MODES:
            raise ValueError(f"no high-res cache for selection {mode!r}")
        self.mode, self.batch, self.hd_grid = mode, batch, hd_grid
        self.layers: dict[int, dict] = {}
        self.block_tokens, self.block_valid = block_layout(hd_grid, RANDOM_CELLS if mode == "random" else POOL)
        self.n_blocks = self.block_tokens.shape[0]
        block_bytes = self.block_tokens.shape[1] * kv_dim * 2 * dtype_bytes * max(1, hd_layers)
        self.slots = min(self.n_blocks, budget_bytes // block_bytes)  # blocks per sample and layer
        self.fallbacks = 0  # layer calls that re-projected because the budget was full
        self._on_device: dict = {}  # the block layout copied to each device once (a copy per call would sync)

    def layout(self, dev) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(dev)
        if key not in self._on_device:
            self._on_device[key] = (self.block_tokens.to(dev), self.block_valid.to(dev))
        return self._on_device[key]

    @property
    def static(self) -> bool:
        return self.mode in STATIC_MODES

    def lookup(self, attn, images, sel: torch.Tensor, n_rep: int):
        """Keys/values [B, H, M, d] and row_mask [B, R, M] for selection sel [B, R, N] at attn's layer,
        projecting what is not cached; None when the block budget is full (the caller re-projects)."""
        if self.static:
            return self._static(attn, images, sel, n_rep)
        return self._blocks(attn, images, sel, n_rep)

    # ---- center / all: one projection per sample and layer ----
    def _static(self, attn, images, sel, n_rep):
        entry = self.layers.get(attn.layer)
        if entry is None:
            make = center_selection if self.mode == "center" else all_selection
            fixed = make(1, 1, self.hd_grid, "cpu")[0, 0]  # on the host: its size needs no sync
            order = torch.nonzero(fixed).flatten().to(sel.device)[None].expand(sel.shape[0], -1)
            k, v = project_tokens(attn, images, order)
            entry = self.layers[attn.layer] = {"k": k, "v": v, "order": order}
        order = entry["order"]
        row_mask = sel.gather(2, order[:, None, :].expand(sel.shape[0], sel.shape[1], order.shape[1]))
        return repeat_kv(entry["k"], n_rep), repeat_kv(entry["v"], n_rep), row_mask

    # ---- attention / random: blocks projected once, into per-sample slots ----
    def _blocks(self, attn, images, sel, n_rep):
        b, r, _ = sel.shape
        dev = sel.device
        tokens, tvalid = self.layout(dev)
        entry = self.layers.get(attn.layer) or self._new_entry(attn, images, dev)
        union = sel.any(1)  # [B, N]
        need = (union[:, tokens] & tvalid).any(-1)  # [B, blocks]
        new = need & (entry["slot_of"][:, :-1] < 0)
        n_new = new.sum(1)
        m_new, fits = torch.stack([n_new.max(), (entry["used"] + n_new > self.slots).any().logical_not()]).tolist()
        if not fits:  # the sync of this layer (one per call): the budget is spent, re-project as uncached
            self.fallbacks += 1
            return None
        self.layers[attn.layer] = entry
        if m_new:
            self._add_blocks(attn, images, entry, new, n_new, m_new)
            entry["used_max"] = min(self.slots, entry["used_max"] + m_new)  # a host-side bound, no sync
        width = tokens.shape[1]
        cap = int(entry["used_max"]) * width
        tok = entry["tok"][:, :cap]
        row_mask = sel.gather(2, tok[:, None, :].expand(b, r, cap)) & entry["tok_valid"][:, None, :cap]
        return repeat_kv(entry["k"][:, :, :cap], n_rep), repeat_kv(entry["v"][:, :, :cap], n_rep), row_mask

    def _new_entry(self, attn, images, dev) -> dict:
        b, width = self.batch, self.block_tokens.shape[1]
        size = (self.slots + 1) * width  # + one spill slot that padding writes land in
        dtype = images.feats.dtype
        return {"k": torch.zeros(b, attn.num_kv_heads, size, attn.head_dim, dtype=dtype, device=dev),
                "v": torch.zeros(b, attn.num_kv_heads, size, attn.head_dim, dtype=dtype, device=dev),
                "tok": torch.zeros(b, size, dtype=torch.long, device=dev),
                "tok_valid": torch.zeros(b, size, dtype=torch.bool, device=dev),
                "slot_of": torch.full((b, self.n_blocks + 1), -1, dtype=torch.long, device=dev),
                "used": torch.zeros(b, dtype=torch.long, device=dev), "used_max": 0}

    def _add_blocks(self, attn, images, entry, new, n_new, cap: int) -> None:
        dev, b = new.device, new.shape[0]
        tokens, tvalid = self.layout(dev)
        width = tokens.shape[1]
        blocks = torch.argsort((~new).to(torch.int32), dim=1, stable=True)[:, :cap]  # [B, cap] new first
        ok = torch.arange(cap, device=dev)[None] < n_new[:, None]
        slot = torch.where(ok, entry["used"][:, None] + torch.arange(cap, device=dev)[None], self.slots)
        tok = tokens[blocks].reshape(b, cap * width)  # [B, cap * T]
        tok_ok = (tvalid[blocks] & ok[..., None]).reshape(b, cap * width)
        k, v = project_tokens(attn, images, tok)
        dest = (slot[..., None] * width + torch.arange(width, device=dev)).reshape(b, cap * width)
        idx = dest[:, None, :, None].expand_as(k)
        entry["k"].scatter_(2, idx, k)
        entry["v"].scatter_(2, idx, v)
        entry["tok"].scatter_(1, dest, tok)
        entry["tok_valid"].scatter_(1, dest, tok_ok)
        entry["slot_of"].scatter_(1, torch.where(ok, blocks, self.n_blocks), slot)
        entry["used"] += n_new


def project_tokens(attn, images, order: torch.Tensor):
    """k (RoPE'd), v [B, Hkv, M, d] of the high-res tokens order [B, M] of each sample."""
    b, m = order.shape
    feats = images.feats.gather(1, order[..., None].expand(b, m, images.feats.shape[-1]))
    cos = images.cos.gather(1, order[..., None].expand(b, m, images.cos.shape[-1]))[:, None]
    sin = images.sin.gather(1, order[..., None].expand(b, m, images.sin.shape[-1]))[:, None]
    k = attn.k_proj_hd(feats).view(b, m, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj_hd(feats).view(b, m, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    return apply_rope(k, cos, sin), v
