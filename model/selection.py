"""Which high-res tokens a query row attends to (spec section 5 and the Fig. 4 ablations).

All functions are batched over samples B and query rows R, and return boolean masks over the
(zoom*24)^2 high-res tokens, row-major.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

POOL = 9  # the release pools the 24x24 binary map to 9x9 (overlapping windows), hard-coded
RANDOM_CELLS = 8  # the release's random ablation draws cells of an 8x8 grid


def padding_cell_mask(pad_axis: torch.Tensor, pad_n: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, grid, grid] True on the low-res cells that cover pad-to-square padding.

    pad_axis: 0 none, 1 rows (wide image), 2 columns (tall image); pad_n: cells per side.
    """
    idx = torch.arange(grid, device=pad_n.device)
    n = pad_n[:, None]
    edge = (idx[None, :] < n) | (idx[None, :] >= grid - n)  # [B, grid]
    rows = edge[:, :, None].expand(-1, grid, grid) & (pad_axis == 1)[:, None, None]
    cols = edge[:, None, :].expand(-1, grid, grid) & (pad_axis == 2)[:, None, None]
    return rows | cols


def attention_selection(img_probs: torch.Tensor, pad_cells: torch.Tensor, threshold: float, hd_grid: int) -> torch.Tensor:
    """The release's selection from attention.

    img_probs: [B, R, grid*grid] post-softmax attention over the low-res image columns, summed
    over heads (in the model's dtype, as the release). pad_cells: [B, grid, grid].
    Returns [B, R, hd_grid*hd_grid] bool.
    """
    b, r, n = img_probs.shape
    grid = int(round(n ** 0.5))
    a = img_probs.reshape(b, r, grid, grid).masked_fill(pad_cells[:, None], 0.0).reshape(b, r, n)
    lo = a.min(-1, keepdim=True).values
    hi = a.max(-1, keepdim=True).values
    a = (a - lo) / (hi - lo)  # a constant map gives NaN, which selects nothing (as the release)
    binary = ((a * 255) > threshold).float().reshape(b * r, 1, grid, grid)
    pooled = F.adaptive_max_pool2d(binary, (POOL, POOL))
    return _upsample(pooled, hd_grid).reshape(b, r, hd_grid * hd_grid)


def _upsample(cells: torch.Tensor, hd_grid: int) -> torch.Tensor:
    return F.interpolate(cells, size=(hd_grid, hd_grid), mode="nearest").bool()


def center_selection(b: int, r: int, hd_grid: int, device) -> torch.Tensor:
    """The central 3x3 of the 9x9 block grid (about 11% of the tokens, like the ~10% of attention)."""
    cells = torch.zeros(1, 1, POOL, POOL, device=device)
    c = POOL // 2
    cells[..., c - 1:c + 2, c - 1:c + 2] = 1.0
    return _upsample(cells, hd_grid).reshape(1, 1, -1).expand(b, r, -1)


def all_selection(b: int, r: int, hd_grid: int, device) -> torch.Tensor:
    return torch.ones(b, r, hd_grid * hd_grid, dtype=torch.bool, device=device)


def random_selection(sample_keys: list[str], layer: int, row_positions: torch.Tensor, ratio: float, seed: int,
                     hd_grid: int, device) -> torch.Tensor:
    """The release's random ablation: each cell of an 8x8 grid selected with probability `ratio`.

    Seeded per (seed, sample, layer, row position) so that a sample's draw does not depend on the
    batch it runs in. row_positions: [B, R] absolute positions of the query rows.
    """
    b, r = row_positions.shape
    cells = torch.empty(b, r, RANDOM_CELLS, RANDOM_CELLS)
    pos = row_positions.tolist()
    for i in range(b):
        for j in range(r):
            digest = hashlib.sha256(f"{seed}|{sample_keys[i]}|{layer}|{pos[i][j]}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
            cells[i, j] = (torch.rand(RANDOM_CELLS, RANDOM_CELLS, generator=g) <= ratio).float()
    return _upsample(cells.reshape(b * r, 1, RANDOM_CELLS, RANDOM_CELLS).to(device), hd_grid).reshape(b, r, -1)
