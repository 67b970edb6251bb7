"""Image path (spec section 2) and the high-res keys' positions (section 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flexeval.model.image import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOR,
    lowres_view,
    pad_to_square,
    preprocess,
    split_crops,
    stitch_crops,
)
from flexeval.model.rope import hd_rope, rope_cos_sin

RED = (200, 10, 30)


def solid(w, h, color=RED):
    return Image.new("RGB", (w, h), color)


def test_pad_colour_is_the_truncated_clip_mean():
    assert PAD_COLOR == (122, 116, 104)


def test_pad_wide_pastes_at_the_vertical_middle():
    sq = np.asarray(pad_to_square(solid(41, 20)))
    assert sq.shape == (41, 41, 3)
    top = (41 - 20) // 2  # 10; the extra odd row goes to the bottom
    assert (sq[:top] == PAD_COLOR).all()
    assert (sq[top:top + 20] == RED).all()
    assert (sq[top + 20:] == PAD_COLOR).all() and sq[top + 20:].shape[0] == 11


def test_pad_tall_pastes_at_the_horizontal_middle():
    sq = np.asarray(pad_to_square(solid(20, 40)))
    assert sq.shape == (40, 40, 3)
    assert (sq[:, :10] == PAD_COLOR).all() and (sq[:, 10:30] == RED).all() and (sq[:, 30:] == PAD_COLOR).all()


def test_square_is_not_padded():
    img = solid(30, 30)
    assert pad_to_square(img) is img


def test_preprocess_matches_pil_bicubic_and_clip_normalisation():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(50, 80, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out = preprocess(img, 1008)
    assert out.pixels.shape == (3, 1008, 1008) and out.pixels.dtype == torch.float32
    assert out.orig_size == (80, 50) and out.padded
    sq = Image.new("RGB", (80, 80), (122, 116, 104))
    sq.paste(img, (0, 15))
    u8 = np.asarray(sq.resize((1008, 1008), Image.BICUBIC))
    x = (u8 * (1 / 255)).astype(np.float32)
    want = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    assert torch.equal(out.pixels, torch.from_numpy(want.transpose(2, 0, 1).copy()))


def test_pad_area_normalises_to_near_zero():
    out = preprocess(solid(100, 40), 336)
    corner = out.pixels[:, 0, 0]
    want = torch.tensor([(c / 255 - m) / s for c, m, s in zip(PAD_COLOR, CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(corner, want, atol=1e-6)
    assert float(corner.abs().max()) < 0.02  # truncated mean: just below zero


def test_preprocess_crop_mode_is_not_padded():
    out = preprocess(solid(600, 300), 336, mode="crop")
    assert out.pixels.shape == (3, 336, 336) and not out.padded
    with pytest.raises(ValueError):
        preprocess(solid(10, 10), 336, mode="anyres")


def test_lowres_view_is_antialiased_bilinear():
    """Antialiased bilinear at scale 3 is a triangle filter stretched by 3: output pixel j averages
    input pixels 3j-1 .. 3j+3 with weights 1, 2, 3, 2, 1 (/9) per axis, computed here by hand."""
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, 1008, 1008, generator=g)
    low = lowres_view(px, 336)
    assert low.shape == (2, 3, 336, 336)
    x = px.double()
    w = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0], dtype=torch.float64) / 9
    rows = sum(w[k] * x[:, :, 2 + k: 2 + k + 3 * 334: 3] for k in range(5))  # output rows 1..334
    want = sum(w[k] * rows[:, :, :, 2 + k: 2 + k + 3 * 334: 3] for k in range(5))
    assert torch.allclose(low[:, :, 1:335, 1:335].double(), want, atol=1e-5)
    # plain bilinear (no antialias) would pick the pixel under each output centre: visibly different
    assert not torch.allclose(low[:, :, 1:335, 1:335].double(), x[:, :, 4:1006:3, 4:1006:3], atol=1e-2)
    small = px[:, :, :336, :336]
    assert lowres_view(small, 336) is small


def test_split_crops_raster_order():
    px = torch.zeros(2, 3, 1008, 1008)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                px[b, :, i * 336:(i + 1) * 336, j * 336:(j + 1) * 336] = 100 * b + 10 * i + j
    crops = split_crops(px, 336)
    assert crops.shape == (18, 3, 336, 336)
    for k in range(18):
        b, r = divmod(k, 9)
        i, j = divmod(r, 3)  # row by row
        assert bool((crops[k] == 100 * b + 10 * i + j).all()), k


def test_stitch_crops_row_major_over_the_72_grid():
    # crop k, patch (r, c) -> feature (k, r, c); stitched index R*72 + C: crop (R//24)*3 + C//24, patch (R%24, C%24)
    feats = torch.zeros(2 * 9, 576, 3)
    for k in range(18):
        rr, cc = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
        feats[k, :, 0] = k
        feats[k, :, 1] = rr.flatten().float()
        feats[k, :, 2] = cc.flatten().float()
    out = stitch_crops(feats, 3, 24)
    assert out.shape == (2, 5184, 3)
    for b in range(2):
        for R in (0, 5, 23, 24, 40, 71):
            for C in (0, 23, 24, 47, 48, 71):
                k, r, c = out[b, R * 72 + C].tolist()
                assert (k, r, c) == (9 * b + (R // 24) * 3 + C // 24, R % 24, C % 24)


def test_split_then_stitch_recovers_the_patch_grid():
    """A 'CLIP' that returns each 14x14 patch's top-left value: stitching must give the full image's
    72x72 patch grid, row-major."""
    g = torch.Generator().manual_seed(1)
    px = torch.randn(1, 3, 1008, 1008, generator=g)
    crops = split_crops(px, 336)
    feats = crops[:, :, ::14, ::14].permute(0, 2, 3, 1).reshape(9, 576, 3)
    out = stitch_crops(feats, 3, 24)
    want = px[0, :, ::14, ::14].permute(1, 2, 0).reshape(5184, 3)
    assert torch.equal(out[0], want)


def test_zoom_2_and_4_grids():
    for zoom in (2, 4):
        px = torch.randn(1, 3, 336 * zoom, 336 * zoom)
        crops = split_crops(px, 336)
        assert crops.shape == (zoom * zoom, 3, 336, 336)
        assert torch.equal(crops[zoom - 1], px[0, :, :336, -336:])  # last crop of the first row
        feats = crops[:, :, ::14, ::14].permute(0, 2, 3, 1).reshape(zoom * zoom, 576, 3)
        out = stitch_crops(feats, zoom, 24)
        assert torch.equal(out[0], px[0, :, ::14, ::14].permute(1, 2, 0).reshape(-1, 3))


# ---- RoPE of the high-res keys ----

HEAD_DIM, THETA = 16, 10000.0


def direct_hd_rope(p0: int, hd_grid: int = 72):
    pos = torch.arange(p0, p0 + 576, dtype=torch.float64)
    inv_freq = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM))
    emb = torch.cat([pos[:, None] * inv_freq] * 2, dim=-1)
    out = []
    for table in (emb.cos(), emb.sin()):
        grid = table.float().reshape(24, 24, HEAD_DIM).permute(2, 0, 1)[None]
        up = F.interpolate(grid, size=(hd_grid, hd_grid), mode="bicubic", align_corners=False)
        out.append(up[0].reshape(HEAD_DIM, -1).T)
    return out


def test_hd_rope_is_bicubic_interpolation_of_the_image_positions():
    starts = torch.tensor([5, 40])
    positions = starts[:, None] + torch.arange(576)
    cos, sin = hd_rope(positions, 72, HEAD_DIM, THETA, torch.float32)
    assert cos.shape == sin.shape == (2, 5184, HEAD_DIM)
    for b, p0 in enumerate(starts.tolist()):
        want_cos, want_sin = direct_hd_rope(p0)
        assert torch.allclose(cos[b], want_cos, atol=1e-5), float((cos[b] - want_cos).abs().max())
        assert torch.allclose(sin[b], want_sin, atol=1e-5)
        # align_corners=True moves them visibly (the spec's warning): the test can tell them apart
        pos = torch.arange(p0, p0 + 576)
        lc, _ = rope_cos_sin(pos, HEAD_DIM, THETA, torch.float32)
        ac = F.interpolate(lc.reshape(24, 24, HEAD_DIM).permute(2, 0, 1)[None], size=(72, 72), mode="bicubic",
                           align_corners=True)[0].reshape(HEAD_DIM, -1).T
        assert float((cos[b] - ac).abs().max()) > 1e-2


def test_hd_rope_centre_tokens_carry_the_low_res_positions():
    """With align_corners=False and scale 3, high-res token (3r+1, 3c+1) sits exactly on low-res cell
    (r, c): its cos/sin equal the low-res token's. Corner tokens (0, 0) do not (they extrapolate)."""
    p0 = 37
    positions = (p0 + torch.arange(576))[None]
    cos, sin = hd_rope(positions, 72, HEAD_DIM, THETA, torch.float32)
    low_cos, low_sin = rope_cos_sin(positions[0], HEAD_DIM, THETA, torch.float32)
    hd_cos = cos[0].reshape(72, 72, HEAD_DIM)[1::3, 1::3].reshape(576, HEAD_DIM)
    hd_sin = sin[0].reshape(72, 72, HEAD_DIM)[1::3, 1::3].reshape(576, HEAD_DIM)
    assert torch.allclose(hd_cos, low_cos, atol=1e-6)
    assert torch.allclose(hd_sin, low_sin, atol=1e-6)
    assert not torch.allclose(cos[0, 0], low_cos[0], atol=1e-3)
    # neighbours of a centre token lie between the low-res positions: row-major layout check
    assert not torch.allclose(cos[0, 1], cos[0, 72 + 1], atol=1e-6)


def test_hd_rope_depends_on_the_image_start():
    a = hd_rope((3 + torch.arange(576))[None], 72, HEAD_DIM, THETA, torch.float32)[0]
    b = hd_rope((50 + torch.arange(576))[None], 72, HEAD_DIM, THETA, torch.float32)[0]
    assert not torch.allclose(a, b, atol=1e-3)


def test_model_uses_per_sample_image_positions_under_left_padding(release_model, samples, release_images):
    """In a batch the shorter prompt is left-padded; its image still starts at its own position
    (prefix length), so its high-res RoPE matches hd_rope of its own positions."""
    m = release_model
    ids = [m.tokenizer.encode_prompt(s.prompt) for s in samples[:2]]
    low, _ = m.encode_images(release_images[:2])
    batch = m._embed(ids, low)
    p0 = [i.index(-200) for i in ids]
    for b in range(2):
        assert batch.positions[b].gather(0, batch.img_cols[b]).tolist() == list(range(p0[b], p0[b] + 576))
        assert int(batch.valid[b].sum()) == len(ids[b]) - 1 + 576
