"""Selection (spec section 5) against hand-computed values: padding rows/columns, min-max
normalisation, the 48/255 threshold, adaptive max pooling 24x24 -> 9x9, nearest upsampling 9 -> 72."""

from __future__ import annotations

import pytest
import torch

from flexeval.model.image import padding_patches
from flexeval.model.selection import (
    all_selection,
    attention_selection,
    center_selection,
    padding_cell_mask,
    random_selection,
)

G, HD = 24, 72
# adaptive_max_pool2d 24 -> 9 windows: [floor(i*24/9), ceil((i+1)*24/9)), overlapping
WINDOWS = [(0, 3), (2, 6), (5, 8), (8, 11), (10, 14), (13, 16), (16, 19), (18, 22), (21, 24)]


def blocks_of(cell: int) -> list[int]:
    return [i for i, (a, b) in enumerate(WINDOWS) if a <= cell < b]


def expected_mask(cells: set[tuple[int, int]]) -> torch.Tensor:
    """[72, 72] mask: every 9x9 block whose window holds a selected 24x24 cell, as 8x8 token squares."""
    out = torch.zeros(HD, HD, dtype=torch.bool)
    for r, c in cells:
        for br in blocks_of(r):
            for bc in blocks_of(c):
                out[br * 8:(br + 1) * 8, bc * 8:(bc + 1) * 8] = True
    return out


def no_padding(b=1):
    return torch.zeros(b, G, G, dtype=torch.bool)


def select(amap: torch.Tensor, pad=None, threshold=48.0) -> torch.Tensor:
    """One 24x24 map -> [72, 72] mask."""
    pad = no_padding() if pad is None else pad
    out = attention_selection(amap.reshape(1, 1, G * G).float(), pad, threshold, HD)
    assert out.shape == (1, 1, HD * HD) and out.dtype == torch.bool
    return out[0, 0].reshape(HD, HD)


def test_windows_are_what_adaptive_max_pool_uses():
    """One hot cell at a time through the pool itself: the blocks that light up are WINDOWS' blocks."""
    import torch.nn.functional as F

    for cell in range(G):
        one = torch.zeros(1, 1, G, G)
        one[0, 0, cell, 5] = 1.0
        pooled = F.adaptive_max_pool2d(one, (9, 9))[0, 0]
        assert pooled.nonzero()[:, 0].unique().tolist() == blocks_of(cell), cell


# ---- padding ----

def test_padding_patches_hand_computed():
    # wide: margin (1600-900)//2 = 350, n = int(350/1600*24) = int(5.25) = 5 rows per side
    assert padding_patches((1600, 900)) == ("rows", 5)
    # tall: margin 350, n = int(350/1400*24) = 6 columns per side
    assert padding_patches((700, 1400)) == ("cols", 6)
    # odd difference: margin (1001-500)//2 = 250, int(250/1001*24) = int(5.994) = 5
    assert padding_patches((1001, 500)) == ("rows", 5)
    # small margins truncate to 0: margin 20, int(20/1000*24) = int(0.48) = 0
    assert padding_patches((1000, 960))[1] == 0
    assert padding_patches((500, 500))[1] == 0


def test_padding_cell_mask_rows_cols_none():
    m = padding_cell_mask(torch.tensor([1, 2, 1]), torch.tensor([5, 6, 0]), G)
    assert m.shape == (3, G, G)
    rows = torch.zeros(G, G, dtype=torch.bool)
    rows[:5] = True
    rows[-5:] = True
    cols = torch.zeros(G, G, dtype=torch.bool)
    cols[:, :6] = True
    cols[:, -6:] = True
    assert torch.equal(m[0], rows)
    assert torch.equal(m[1], cols)
    assert not bool(m[2].any())  # n = 0 zeroes nothing (a [-0:] slice would zero everything)


def test_padding_is_zeroed_before_normalising_wide():
    """Padding rows hold the largest values; zeroed, they become the minimum and are never selected."""
    a = torch.full((G, G), 0.3)
    a[:5] = 0.9
    a[-5:] = 0.9
    a[12, 12] = 0.6
    pad = padding_cell_mask(torch.tensor([1]), torch.tensor([5]), G)
    # after zeroing: min 0, max 0.6 -> the 0.3 cells normalise to 0.5 (127.5 > 48): rows 5..18 selected
    got = select(a, pad)
    want = expected_mask({(r, c) for r in range(5, 19) for c in range(G)})
    assert torch.equal(got, want)
    # by hand: row windows holding a row in 5..18 are blocks 1..7 -> token rows 8..63, every column
    assert bool(got[8:64].all()) and not bool(got[:8].any()) and not bool(got[64:].any())
    # without the padding zeroed, the 0.9 rows are the max: 0.3 -> 0, 0.6 -> 0.5, padding -> 1
    got_raw = select(a)
    assert torch.equal(got_raw, expected_mask({(r, c) for r in (*range(5), *range(19, 24)) for c in range(G)}
                                              | {(12, 12)}))


def test_padding_is_zeroed_before_normalising_tall():
    a = torch.zeros(G, G)
    a[:, 0] = 1.0  # a padding column, the largest value
    a[3, 10] = 0.5
    pad = padding_cell_mask(torch.tensor([2]), torch.tensor([6]), G)
    assert torch.equal(select(a, pad), expected_mask({(3, 10)}))


def test_zero_padding_cells_zero_nothing():
    a = torch.zeros(G, G)
    a[0, 0] = 1.0  # would be a padding cell if n > 0
    for axis in (1, 2):
        pad = padding_cell_mask(torch.tensor([axis]), torch.tensor([0]), G)
        assert torch.equal(select(a, pad), expected_mask({(0, 0)}))


# ---- normalisation and threshold ----

def test_constant_map_selects_nothing():
    for v in (0.0, 1 / 576, 0.7):
        assert not bool(select(torch.full((G, G), v)).any())
    # constant outside the padding, and the padding zeroed -> min 0 < max: everything else selected
    a = torch.full((G, G), 0.2)
    pad = padding_cell_mask(torch.tensor([1]), torch.tensor([3]), G)
    assert torch.equal(select(a, pad), expected_mask({(r, c) for r in range(3, 21) for c in range(G)}))


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.1, 0.5), (0.002, 0.004)])
def test_threshold_is_48_of_255_after_min_max(lo, hi):
    a = torch.full((G, G), lo)
    a[0, 23] = hi  # the max
    above = lo + (hi - lo) * 48.4 / 255  # normalised * 255 = 48.4 > 48
    below = lo + (hi - lo) * 47.6 / 255  # 47.6, not selected
    a[12, 12] = above
    a[6, 6] = below
    got = select(a)
    assert torch.equal(got, expected_mask({(0, 23), (12, 12)}))
    # the threshold is strict and configurable: 48.4 is not above 48.5
    assert torch.equal(select(a, threshold=48.5), expected_mask({(0, 23)}))
    assert torch.equal(select(a, threshold=47.5), expected_mask({(0, 23), (12, 12), (6, 6)}))


def test_selection_is_per_row_and_per_sample():
    a = torch.zeros(2, 3, G * G)
    a[0, 0, 0] = 1.0  # sample 0 row 0: cell (0, 0)
    a[0, 1, 12 * G + 12] = 1.0  # row 1: cell (12, 12)
    a[0, 2] = 0.5  # row 2: constant
    a[1, 0, 23 * G + 23] = 1.0
    a[1, 1, 13 * G + 5] = 1.0
    a[1, 2, 2 * G + 2] = 1.0
    out = attention_selection(a, no_padding(2), 48.0, HD).reshape(2, 3, HD, HD)
    assert torch.equal(out[0, 0], expected_mask({(0, 0)}))
    assert torch.equal(out[0, 1], expected_mask({(12, 12)}))
    assert not bool(out[0, 2].any())
    assert torch.equal(out[1, 0], expected_mask({(23, 23)}))
    assert torch.equal(out[1, 1], expected_mask({(13, 5)}))
    assert torch.equal(out[1, 2], expected_mask({(2, 2)}))


# ---- pooling and upsampling, by hand ----

def test_single_cell_blocks_by_hand():
    one = {}
    for cell in [(0, 0), (12, 12), (2, 2), (13, 5), (23, 23), (8, 16)]:
        a = torch.zeros(G, G)
        a[cell] = 1.0
        one[cell] = select(a)
    m = one[(0, 0)]  # window 0 only -> block (0, 0): tokens [0, 8) x [0, 8)
    assert int(m.sum()) == 64 and bool(m[:8, :8].all())
    m = one[(12, 12)]  # 12 is only in window 4 = [10, 14) -> block (4, 4): tokens [32, 40)^2
    assert int(m.sum()) == 64 and bool(m[32:40, 32:40].all())
    m = one[(2, 2)]  # 2 is in windows 0 [0,3) and 1 [2,6) -> blocks {0,1}^2: tokens [0, 16)^2
    assert int(m.sum()) == 256 and bool(m[:16, :16].all())
    m = one[(13, 5)]  # rows: windows 4 [10,14), 5 [13,16); cols: 1 [2,6), 2 [5,8)
    assert int(m.sum()) == 4 * 64 and bool(m[32:48, 8:24].all())
    m = one[(23, 23)]  # window 8 only -> tokens [64, 72)^2
    assert int(m.sum()) == 64 and bool(m[64:, 64:].all())
    m = one[(8, 16)]  # rows: window 3 [8,11); cols: 6 [16,19) -> tokens [24,32) x [48,56)
    assert int(m.sum()) == 64 and bool(m[24:32, 48:56].all())


def test_nearest_upsample_gives_8x8_blocks():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, G * G, generator=g) ** 30  # sparse peaks: a few cells above 48/255
    out = attention_selection(a[:, None], no_padding(5), 48.0, HD).reshape(5, 9, 8, 9, 8)
    assert torch.equal(out, out[:, :, :1, :, :1].expand_as(out))
    assert 0 < int(out.sum()) < out.numel()


def test_row_major_layout():
    a = torch.zeros(G, G)
    a[0, 23] = 1.0  # top right -> block (0, 8): flat indices r*72 + c for r < 8, c >= 64
    flat = attention_selection(a.reshape(1, 1, -1), no_padding(), 48.0, HD)[0, 0]
    idx = set(torch.nonzero(flat).flatten().tolist())
    assert idx == {r * HD + c for r in range(8) for c in range(64, 72)}


# ---- ablations ----

def test_center_all():
    c = center_selection(2, 3, HD, "cpu")
    assert c.shape == (2, 3, HD * HD)
    want = torch.zeros(HD, HD, dtype=torch.bool)
    want[24:48, 24:48] = True
    assert all(torch.equal(c[i, j].reshape(HD, HD), want) for i in range(2) for j in range(3))
    assert bool(all_selection(2, 1, HD, "cpu").all()) and all_selection(2, 1, HD, "cpu").shape == (2, 1, HD * HD)


def test_random_selection_seeded_per_sample_layer_and_position():
    pos = torch.tensor([[10, 11], [10, 11]])
    a = random_selection(["s0", "s1"], 9, pos, 0.1, 0, HD, "cpu")
    assert a.shape == (2, 2, HD * HD)
    assert torch.equal(a, random_selection(["s0", "s1"], 9, pos, 0.1, 0, HD, "cpu"))
    # a sample's draw does not depend on the other samples of the batch
    b = random_selection(["s1"], 9, pos[:1], 0.1, 0, HD, "cpu")
    assert torch.equal(a[1], b[0])
    # changes with the sample, the layer, the row position and the seed
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0, 0], a[0, 1])
    assert not torch.equal(a, random_selection(["s0", "s1"], 10, pos, 0.1, 0, HD, "cpu"))
    assert not torch.equal(a, random_selection(["s0", "s1"], 9, pos, 0.1, 1, HD, "cpu"))
    # 8x8 cells of 9x9 high-res tokens
    cells = a.reshape(2, 2, 8, 9, 8, 9)
    assert torch.equal(cells, cells[:, :, :, :1, :, :1].expand_as(cells))
    # the ratio: over many draws close to p
    many = random_selection([f"k{i}" for i in range(40)], 9, torch.arange(40)[:, None], 0.1, 0, HD, "cpu")
    assert 0.07 <= float(many.float().mean()) <= 0.13
    assert bool(random_selection(["s"], 9, pos[:1], 1.0, 0, HD, "cpu").all())
    assert not bool(random_selection(["s"], 9, pos[:1], 0.0, 0, HD, "cpu").any())
