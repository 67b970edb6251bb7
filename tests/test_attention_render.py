"""Attention-map pictures: the geometry back to the original frame, the --token rows, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flexeval.analysis.attention import (
    PLANTED_SIZES,
    continuation_for,
    parse_layers,
    parse_token,
    planted_hotspot,
    square_to_frame,
)
from flexeval.cli import app
from flexeval.errors import FlexEvalError


@pytest.mark.parametrize("name", sorted(PLANTED_SIZES))
@pytest.mark.parametrize("where", [(0.7, 0.3), (0.12, 0.85)])
def test_planted_hot_spot_lands_on_the_disc(name, where):
    """A red disc drawn on a wide / tall / square image goes through the model's real image path; the
    map forced to the cell the disc landed in must peak on the disc in the ORIGINAL frame, and the
    outline of the high-res tokens under that cell must enclose it."""
    w, h = PLANTED_SIZES[name]
    x0, y0 = int(w * where[0]), int(h * where[1])
    r = planted_hotspot((w, h), (x0, y0))
    half_cell = max(w, h) / 48  # the disc is somewhere in its cell; the peak is the cell's centre
    fx, fy = r["found"]
    assert abs(fx - x0) <= half_cell + 1 and abs(fy - y0) <= half_cell + 1
    bx0, by0, bx1, by1 = r["selected_box"]
    assert bx0 - 1 <= x0 <= bx1 + 1 and by0 - 1 <= y0 <= by1 + 1
    assert (bx1 - bx0 + 1) == pytest.approx(2 * half_cell, abs=2)  # one low-res cell wide, in original pixels


def test_square_to_frame_crops_the_padding_wide_and_tall():
    """Bilinear between cell centres: a frame pixel is exactly a cell's value once it is half a cell
    (side / 48 = 4.17 px here) inside that cell; nearer a cell border it blends the two cells."""
    # wide 200x100: the square is 200x200 with the image on rows 50..150, i.e. 24-grid rows 6..17
    pad_rows = torch.zeros(24, 24)
    pad_rows[:6] = 1.0
    pad_rows[18:] = 1.0
    frame = square_to_frame(pad_rows, (200, 100), (100, 200))
    assert frame[5:95].max() == 0.0 and frame[0].min() > 0.0  # padding only blends into the outer half cell
    top = torch.zeros(24, 24)
    top[6:12] = 1.0  # the upper half of the image: y 0..50 of 100
    frame = square_to_frame(top, (200, 100), (100, 200))
    assert frame[4:46].min() == pytest.approx(1.0) and frame[54:].max() == 0.0
    # tall 100x200: columns 6..17 hold the image; the left half of the image is columns 6..11
    left = torch.zeros(24, 24)
    left[:, 6:12] = 1.0
    frame = square_to_frame(left, (100, 200), (200, 100))
    assert frame[:, 4:46].min() == pytest.approx(1.0) and frame[:, 54:].max() == 0.0
    # square: no offset; the map's row 0 is the image's top row
    corner = torch.zeros(24, 24)
    corner[0, 23] = 1.0
    frame = square_to_frame(corner, (240, 240), (240, 240))
    assert frame[:5, 235:].min() == 1.0  # the top-right cell, flat out to the border (10 px cells)
    assert frame[:, :225].max() == 0.0 and frame[15:].max() == 0.0


def test_token_rows_and_layers():
    assert parse_token("prompt-end") == -1 and parse_token("answer") == 0 and parse_token("3") == 3
    gen = [11, 12, 13]
    assert continuation_for(-1, gen, "x") == []
    assert continuation_for(0, gen, "x") == [11]
    assert continuation_for(2, gen, "x") == [11, 12, 13]
    with pytest.raises(FlexEvalError, match="has 3 tokens"):
        continuation_for(3, gen, "x")
    with pytest.raises(FlexEvalError, match="--token"):
        parse_token("last")
    assert parse_layers("all", 4) == [0, 1, 2, 3] and parse_layers("3,1,1", 4) == [1, 3]
    with pytest.raises(FlexEvalError, match="layers 0..3"):
        parse_layers("4", 4)


def test_attention_cli_for_bench_items(release_dir, tmp_path):
    """--bench gqa --ids: one PNG per asked item under <out>/<tag>/gqa/attention/, at the image's aspect."""
    from flexeval.benchmarks import get_benchmark

    data = get_benchmark("gqa").make_sample(tmp_path / "gqa", n=4)
    samples = get_benchmark("gqa").load(data)
    ids = [samples[1].id, samples[2].id]  # 375x500 (tall) and 500x500
    res = CliRunner().invoke(app, ["attention", "--model", str(release_dir), "--bench", "gqa", "--data-dir",
                                   str(data), "--ids", ",".join(ids), "--layers", "7,8", "--out",
                                   str(tmp_path / "res"), "--tag", "tiny", "--style", "both"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "res" / "tiny" / "gqa" / "attention"
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(f"{i}{s}.png" for i in ids for s in ("", "-release"))
    # the execution core's run: records with each picture, run.json; a rerun reuses them and draws nothing
    (run_json,) = folder.rglob("run.json")
    records = [json.loads(x) for x in (run_json.parent / "predictions.jsonl").read_text().splitlines()]
    assert [r["picture"] for r in records] == [f"{s.id}.png" for s in samples if s.id in ids]
    assert all(r["generated_ids"] for r in records)
    drawn = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    again = CliRunner().invoke(app, ["attention", "--model", str(release_dir), "--bench", "gqa", "--data-dir",
                                     str(data), "--ids", ",".join(ids), "--layers", "7,8", "--out",
                                     str(tmp_path / "res"), "--tag", "tiny", "--style", "both"])
    assert again.exit_code == 0, again.output
    assert json.loads(run_json.read_text())["timing"]["reused"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == drawn
    bad = CliRunner().invoke(app, ["attention", "--model", str(release_dir), "--bench", "gqa", "--data-dir",
                                   str(data), "--ids", "nope", "--out", str(tmp_path / "res")])
    assert bad.exit_code == 1 and "nope not in gqa" in bad.output


def test_attention_cli_needs_one_mode(release_dir, tmp_path):
    res = CliRunner().invoke(app, ["attention", "--model", str(release_dir)])
    assert res.exit_code == 1 and "either --image" in res.output
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(img)
    res = CliRunner().invoke(app, ["attention", "--model", str(release_dir), "--image", str(img), "--prompt", "q",
                                   "--out", str(tmp_path / "o.png"), "--token", "bogus"])
    assert res.exit_code == 1 and "--token must be" in res.output
