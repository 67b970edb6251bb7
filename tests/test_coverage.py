"""Target coverage (flexeval/analysis/coverage.py): geometry, planted boxes, and the V* run's records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexeval.analysis.coverage import cell_coverage, parse_boxes, target_coverage, unit_boxes
from flexeval.errors import FlexEvalError
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.model.selection import attention_selection, padding_cell_mask
from flexeval.model.tiny import make_tiny_model

# A wide 1200x600 image: padded to 1200x1200 with the image at y offset 300.
# Box A [400, 300, 200, 100] -> square x 400..600, y 600..700 -> unit x 1/3..1/2, y 1/2..7/12 (in the centre).
# Box B [0, 0, 300, 150] -> square x 0..300, y 300..450 -> unit x 0..1/4, y 1/4..3/8 (off the centre).
WIDE = (1200, 600)
BOXES = [[400, 300, 200, 100], [0, 0, 300, 150]]
AREA_A, AREA_B = (1 / 6) * (1 / 12), (1 / 4) * (1 / 8)
CENTER = {"recall": AREA_A / (AREA_A + AREA_B), "precision": AREA_A / (1 / 9)}  # centre = the middle 3x3 of 9x9
ALL = {"recall": 1.0, "precision": AREA_A + AREA_B}


def test_boxes_follow_pad_to_square_and_centre_crop():
    np.testing.assert_allclose(unit_boxes(BOXES, WIDE, padded=True),
                               [(1 / 3, 1 / 2, 1 / 2, 7 / 12), (0, 1 / 4, 1 / 4, 3 / 8)])
    tall = unit_boxes([[100, 200, 50, 100]], (400, 800), padded=True)  # pasted at x offset 200
    np.testing.assert_allclose(tall, [(300 / 800, 200 / 800, 350 / 800, 300 / 800)])
    # crop: 1200x600 -> 672x336 at size 336, centre crop from x = 168; a box outside the crop disappears
    crop = unit_boxes([[400, 300, 200, 100], [0, 0, 100, 100]], WIDE, padded=False, size=336)
    np.testing.assert_allclose(crop, [((400 * 0.56 - 168) / 336, 300 * 0.56 / 336, (600 * 0.56 - 168) / 336,
                                       400 * 0.56 / 336)])


def test_cell_coverage_is_the_exact_area_of_the_union():
    # two overlapping boxes: union area = 0.25 + 0.25 - 0.0625, partial cells on a 3x3 grid
    boxes = [(0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)]
    cov = cell_coverage(boxes, 3)
    assert cov.sum() / 9 == pytest.approx(0.4375)
    fine = np.zeros((300, 300), dtype=bool)  # an independent raster of the union
    for x0, y0, x1, y1 in boxes:
        fine[int(y0 * 300):int(y1 * 300), int(x0 * 300):int(x1 * 300)] = True
    np.testing.assert_allclose(cov, fine.reshape(3, 100, 3, 100).mean((1, 3)), atol=1e-9)


def test_bad_boxes_are_errors_naming_the_field():
    assert parse_boxes([1, 2, 3, 4], "x.json") == [[1, 2, 3, 4]]
    for bad in ([[1, 2, 3]], "box", [[1, 2, -3, 4]], [[1, 2, float("nan"), 4]]):
        with pytest.raises(FlexEvalError, match=r"x\.json.*bbox"):
            parse_boxes(bad, "x.json")


def test_attention_selection_on_a_planted_map_gives_the_hand_computed_values():
    # 1800x900 wide image: side 1800, y offset 450. Box [600, 150, 200, 100] -> square x 600..800,
    # y 600..700 -> unit x 1/3..4/9, y 1/3..7/18. A hot low-res cell (8, 8) selects exactly the 9x9
    # pool window 3 (cells 8..10) -> hd block rows/cols 24..31 = unit 1/3..4/9: recall 1, precision
    # (200 x 100) / (200 x 200) = 0.5. Map: 1.0 at (8, 8) (cell = 75 px: square 600..675, inside the
    # box), 0.1 at (9, 9) (square 675..750 in x, inside; y 675..750 of which 675..700: 1/3), 0.1 at
    # (0, 0) (padding: zeroed by the selection, still mass): mass on target (1 + 0.1/3) / 1.2.
    amap = torch.zeros(24, 24)
    amap[8, 8], amap[9, 9], amap[0, 0] = 1.0, 0.1, 0.1
    pad = padding_cell_mask(torch.tensor([1]), torch.tensor([6]), 24)  # 450 / 1800 x 24 = 6 rows a side
    mask = attention_selection(amap.reshape(1, 1, 576), pad, 48.0, 72)[0, 0]
    cov = target_coverage([[600, 150, 200, 100]], (1800, 900), True, 1008, [9], {9: mask.numpy()},
                          {9: amap.flatten().numpy()})
    assert cov["layers"] == [9]
    assert cov["recall"][0] == pytest.approx(1.0, abs=1e-6)
    assert cov["precision"][0] == pytest.approx(0.5, abs=1e-6)
    assert cov["attention_mass"][0] == pytest.approx((1 + 0.1 / 3) / 1.2, abs=1e-6)
    # the same map against a box next to the selected block: nothing covered
    off = target_coverage([[900, 150, 100, 100]], (1800, 900), True, 1008, [9], {9: mask.numpy()}, {})
    assert off["recall"] == [0.0] and off["precision"] == [0.0] and off["attention_mass"] == [None]


# ---------------------------------------------------------------- through a V* run on the tiny model

def _vstar_with_planted_boxes(root: Path) -> Path:
    data = root / "vstar"
    for k, subset in enumerate(("direct_attributes", "relative_position")):
        (data / subset).mkdir(parents=True)
        Image.new("RGB", WIDE, (30 + 40 * k, 120, 90)).save(data / subset / f"sa_{k + 1}.png")
        (data / subset / f"sa_{k + 1}.json").write_text(json.dumps({
            "target_object": ["cup"], "bbox": BOXES, "question": "What is the color of the cup?",
            "options": ["red", "blue"]}))
    return data


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("coverage")
    return make_tiny_model(root / "tiny", seed=0), _vstar_with_planted_boxes(root), root


def _records(planted, selection: str) -> tuple[list[dict], Path]:
    model_dir, data, root = planted
    cfg = RunConfig(bench="vstar", model=str(model_dir), data_dir=data, out=root / "out", workers=0, quiet=True,
                    batch_size="2", selection=selection)
    run = run_benchmarks(cfg)[0]
    folder = root / "out" / run["model"]["tag"] / "vstar"
    return [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()], folder


@pytest.mark.parametrize("selection,expected", [("center", CENTER), ("all", ALL)])
def test_center_and_all_selection_give_the_analytic_values(planted, selection, expected):
    records, folder = _records(planted, selection)
    for r in records:
        cov = r["target_coverage"]
        assert cov["layers"] == list(range(8, 11))  # tiny: S = 8, 12 layers; layer 11's choice is unused
        for key in ("recall", "precision"):
            assert cov[key] == pytest.approx([expected[key]] * 3, abs=1e-6)
        assert all(0 < m < 1 for m in cov["attention_mass"])
        assert r["meta"]["bbox"] == BOXES
    rows = list(csv.DictReader((folder / "target_coverage.csv").open()))
    overall = [x for x in rows if x["subset"] == "overall" and x["answers"] == "all"]
    assert [int(x["layer"]) for x in overall] == [8, 9, 10] and {x["n"] for x in overall} == {"2"}
    assert float(overall[0]["recall"]) == pytest.approx(expected["recall"], abs=1e-5)


def test_attention_run_maps_are_the_prompt_end_rows_and_nll_is_unchanged(planted):
    from flexeval.benchmarks import get_benchmark
    from flexeval.benchmarks.base import open_image
    from flexeval.model import load_pretrained

    records, _ = _records(planted, "attention")
    model_dir, data, _ = planted
    model = load_pretrained(model_dir, dtype="float32", device="cpu")
    bench = get_benchmark("vstar")
    sample = bench.load(data)[0]
    req = bench.request(sample, "paper")
    img = model.preprocess(open_image(sample.image))
    plain = model.choose([(req, img)])[0]
    assert plain.selection is None  # off by default: nothing traced
    model.keep_selection = True
    traced = model.choose([(req, img)])[0]
    assert traced.option_nll == plain.option_nll  # the trace changes no number
    # independent: the attention_maps() path (generation's prompt-end row) gives the same maps
    maps = model.attention_maps([model.prompt_text(req)], [img], [[]], [8, 9, 10])[0]
    for layer in (8, 9, 10):
        np.testing.assert_allclose(traced.selection.maps[layer], maps.maps[layer], rtol=1e-4, atol=1e-6)
        assert torch.equal(traced.selection.masks[layer], maps.masks[layer])
    fine = np.zeros((1008, 1008))  # attention mass by a pixel raster of the boxes on the 1008 square
    for x, y, w, h in BOXES:
        s = 1008 / 1200
        fine[round((y + 300) * s):round((y + 300 + h) * s), round(x * s):round((x + w) * s)] = 1
    frac = fine.reshape(24, 42, 24, 42).mean((1, 3)).flatten()
    m = maps.maps[9].numpy()
    assert records[0]["target_coverage"]["attention_mass"][1] == pytest.approx((m * frac).sum() / m.sum(), abs=2e-3)


def test_a_broken_bbox_in_a_vstar_file_is_an_error_naming_the_file(tmp_path):
    from flexeval.benchmarks import get_benchmark

    data = _vstar_with_planted_boxes(tmp_path)
    item = data / "relative_position" / "sa_2.json"
    obj = json.loads(item.read_text())
    obj["bbox"] = [[1, 2, "wide", 4]]
    item.write_text(json.dumps(obj))
    with pytest.raises(FlexEvalError, match=r"sa_2\.json: bbox\[0\].*restore the release file"):
        get_benchmark("vstar").load(data)
    del obj["bbox"]  # no annotation: a valid item without coverage
    item.write_text(json.dumps(obj))
    assert [s.meta for s in get_benchmark("vstar").load(data)][1] == {}
