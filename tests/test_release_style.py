"""`flexeval attention --style release` (the release visualiser's mask, checked on a planted map) and
`--strip LAYER` (one map per generated answer token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flexeval.analysis.release_style import overlay_mean, pad_square_black, release_mask, release_overlay
from flexeval.cli import app


def planted_map() -> torch.Tensor:
    """A 24 x 24 map whose top 115 cells (20% of 576) are: 1.0 at (10, 10), 112 cells of 0.3 (rows 0..3 and
    row 4 columns 0..15), 0.26 at (13, 20) and 0.25 at (20, 5); every other cell 0.1."""
    a = torch.full((24, 24), 0.1)
    a[0:4] = 0.3
    a[4, 0:16] = 0.3
    a[10, 10] = 1.0
    a[13, 20] = 0.26  # 0.26 * 255 = 66.3 > 64: kept
    a[20, 5] = 0.25  # 63.75: dropped although it is in the top 20%
    return a.flatten()


def test_release_mask_on_a_planted_map():
    mask = release_mask(planted_map())
    want = np.zeros((8, 8))
    want[0:2, :] = 1  # rows 0..5 of the 24 grid hold selected 0.3 cells (row 4 and 5 -> pooled row 1)
    want[10 // 3, 10 // 3] = 1
    want[13 // 3, 20 // 3] = 1
    np.testing.assert_array_equal(mask.numpy(), want)
    # Without the top-20% step the 0.3 cells would normalise to (0.3 - 0.1) / 0.9 = 0.22 < 64/255: gone.
    # Keeping the top 20% zeroes the 0.1 background, so the minimum is 0 and they stay.
    assert overlay_mean(mask, 480) == pytest.approx(18 / 64)


def test_release_mask_edge_cases():
    assert release_mask(torch.full((576,), 0.5)).sum() == 0  # constant map: 0/0 = NaN, nothing selected
    one = torch.zeros(576)
    one[24 * 23 + 23] = 2.0  # the bottom-right cell only: ties at 0 fill the top 20%, all zero after normalising
    mask = release_mask(one)
    assert mask.sum() == 1 and mask[7, 7] == 1


def test_overlay_and_black_square():
    mask = torch.zeros(8, 8)
    mask[3, 5] = 1
    up = release_overlay(mask, 640)
    assert up[240:320, 400:480].min() == 1 and up.sum() == 80 * 80
    for side in (500, 333, 1001):  # nearest upsampling of 8 onto sizes it does not divide
        assert overlay_mean(mask, side) == pytest.approx(float(release_overlay(mask, side).mean()), abs=1e-9)
    img = Image.new("RGB", (200, 100), (200, 50, 50))
    sq = np.asarray(pad_square_black(img))
    assert sq.shape == (200, 200, 3) and sq[:50].max() == 0 and sq[150:].max() == 0
    assert (sq[50:150] == (200, 50, 50)).all()


def test_attention_cli_release_style_and_strip(release_dir, release_model, tmp_path):
    from flexeval.analysis.attention import compute_maps
    from flexeval.analysis.token_strip import strip_maps
    from flexeval.model.conversation import llava_v1_prompt

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8))
    path = tmp_path / "x.png"
    img.save(path)
    out = tmp_path / "o.png"
    res = CliRunner().invoke(app, ["attention", "--model", str(release_dir), "--image", str(path), "--prompt",
                                   "What is it?", "--out", str(out), "--layers", "all", "--style", "both",
                                   "--strip", "9", "--max-new-tokens", "4", "--dtype", "float32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for name in ("o.png", "o-release.png", "o-strip-layer9.png"):
        assert Image.open(tmp_path / name).size[0] > 300
    res = CliRunner().invoke(app, ["attention", "--model", str(release_dir), "--image", str(path), "--prompt", "q",
                                   "--out", str(tmp_path / "r.png"), "--style", "release", "--dtype", "float32"])
    n_layers = release_model.cfg.num_layers
    assert res.exit_code == 0 and f"last prompt token's row, layers {list(range(n_layers))}" in res.output
    assert sorted(p.name for p in tmp_path.glob("r*.png")) == ["r.png"]
    bad = CliRunner().invoke(app, ["attention", "--model", str(release_dir), "--image", str(path), "--prompt", "q",
                                   "--out", str(out), "--style", "paper"])
    assert bad.exit_code == 1 and "--style must be one of flexeval, release, both" in bad.output
    prompt = llava_v1_prompt("What is it?")
    im = release_model.preprocess(img)
    strip = strip_maps(release_model, prompt, im, 9, 4)
    assert len(strip.maps) == len(strip.pieces) >= 2
    # panel 0 is the last prompt row, panel 1 the first answer token's row: `--token prompt-end` and `answer`
    for k, token in ((0, -1), (1, 0)):
        want = compute_maps(release_model, [prompt], [im], token, [9], 4, ["x"])[0].maps.maps[9]
        torch.testing.assert_close(strip.maps[k].maps[9], want)
    assert not torch.allclose(strip.maps[0].maps[9], strip.maps[1].maps[9])
