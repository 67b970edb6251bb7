"""`flexeval report DIR --html`, rendered by a real browser (headless Chromium: `.ci/run` installs it):
the DOM after the page's script ran, with planted scores, filters, flips, pages and target boxes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from flexeval.cli import app
from flexeval.results.accuracy import write_accuracy_csv
from flexeval.results.html import write_html_report
from flexeval.results.scoring import score_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (`.ci/run` installs it)")

# Two runs of the same 6 V* items; A right on items 0, 1, 3; B right on 0, 2, 3 -> flips: 1 and 2.
RIGHT = {"A": {0, 1, 3}, "B": {0, 2, 3}}
SIZES = [(300, 200), (200, 300), (250, 250), (320, 160), (180, 240), (260, 200)]
BOXES = {0: [[10, 20, 50, 40], [150, 100, 60, 50]], 1: [[30, 40, 20, 20]]}


def _vstar_data(root: Path) -> Path:
    data = root / "data"
    for k, (w, h) in enumerate(SIZES):
        subset = "direct_attributes" if k < 3 else "relative_position"
        (data / subset).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (40 * k % 255, 120, 200)).save(data / subset / f"sa_{k + 1}.png")
        (data / subset / f"sa_{k + 1}.json").write_text(json.dumps({
            "target_object": ["cup"], "bbox": BOXES.get(k, [[5, 5, 10, 10]]),
            "question": f"What is the color of the cup {k}?", "options": ["red", "blue"]}))
    return data


def _run(results: Path, tag: str, data: Path, selection: str) -> Path:
    from flexeval.benchmarks import get_benchmark

    bench = get_benchmark("vstar")
    records = []
    for k, s in enumerate(bench.load(data)):
        right = k in RIGHT[tag]
        records.append({"key": str(k), "id": s.id, "subset": s.subset, "question": s.question, "target": s.target,
                        "options": list(s.options), "prediction": s.options[0 if right else 1],
                        "option_nll": [1.0, 2.0] if right else [2.0, 1.0], "hd_selected_ratio": 0.1,
                        "target_coverage": {"layers": [8, 9], "recall": [0.25, 0.5], "precision": [0.1, 0.2],
                                            "attention_mass": [0.3, 0.4]}, "meta": s.meta})
    records, rows = score_records(bench, records, "paper")
    folder = results / tag / "vstar"
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_accuracy_csv(folder / "accuracy.csv", rows)
    (folder / "run.json").write_text(json.dumps({"protocol": "paper", "data": {"dir": str(data)},
                                                 "model": {"options": {"selection": selection}}}))
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    data = _vstar_data(root)
    results = root / "results"
    _run(results, "A", data, "attention")
    _run(results, "B", data, "center")
    said = []
    index = write_html_report(results, per_page=2, say=said.append)
    return results, index, said, root


def _dom(url: str, tmp: Path) -> str:
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _item_ids(dom: str) -> list[str]:
    return re.findall(r'<tr class="item (?:correct|wrong)"><td>\d+</td><td><a href="[^"]+">([^<]+)</a>', dom)


@needs_browser
def test_index_lists_every_run_with_its_accuracy_and_the_coverage_plot(site):
    results, index, _, root = site
    dom = _dom(index.as_uri(), root)
    assert dom.count('<section class="run"') == 2
    assert dom.count('<tr class="acc">') == 6  # two subsets + overall, per run
    assert '<td class="num">3</td>' in dom and "50.00" in dom  # 3 of 6 right in each run
    assert 'src="../target_coverage.png"' in dom and (results / "target_coverage.png").is_file()


@needs_browser
def test_run_list_filters_pages_and_flips_in_the_browser(site):
    results, _, _, root = site
    page = results / "report" / "runs" / "A__vstar" / "index.html"
    first = _dom(page.as_uri(), root)
    assert _item_ids(first) == ["direct_attributes/sa_1", "direct_attributes/sa_2"]  # 2 per page
    assert "6 of 6 items; page 1 of 3" in first
    wrong = _dom(page.as_uri() + "?answers=wrong", root)
    assert _item_ids(wrong) == ["direct_attributes/sa_3", "relative_position/sa_5"]
    assert "3 of 6 items; page 1 of 2" in wrong
    second = _dom(page.as_uri() + "?answers=wrong&page=2", root)
    assert _item_ids(second) == ["relative_position/sa_6"]
    subset = _dom(page.as_uri() + "?subset=relative_position&answers=correct", root)
    assert _item_ids(subset) == ["relative_position/sa_4"]
    flipped = _dom(page.as_uri() + "?vs=B__vstar&flipped=flipped", root)
    assert _item_ids(flipped) == ["direct_attributes/sa_2", "direct_attributes/sa_3"]
    same = _dom(page.as_uri() + "?vs=B__vstar&flipped=same&page=2", root)
    assert "4 of 6 items; page 2 of 2" in same


@needs_browser
def test_sample_page_shows_image_boxes_options_and_coverage(site):
    results, _, _, root = site
    page = results / "report" / "runs" / "A__vstar" / "items" / "0" / "0.html"
    dom = _dom(page.as_uri(), root)
    assert dom.count('class="target-box"') == 2  # item 0's two planted boxes
    assert 'x="10" y="20" width="50" height="40"' in dom  # in original pixels, over the thumbnail
    thumb = re.search(r'<image href="([^"]+)"', dom).group(1)
    assert (page.parent / thumb).resolve().is_file()
    assert dom.count('<tr class="option') == 2 and '<tr class="option predicted target">' in dom
    assert dom.count("<tr><td>") >= 2 and "0.500" in dom  # the coverage table, layer 9's recall
    assert "What is the color of the cup 0?" in dom


def test_rerun_writes_only_what_changed_and_images_are_optional(site):
    results, _, said, root = site
    assert any("6 items, 6 pages written" in s for s in said)
    again = []
    write_html_report(results, per_page=2, say=again.append)
    assert all("0 pages written" in s for s in again if "items," in s)
    pred = results / "A" / "vstar" / "predictions.jsonl"
    lines = pred.read_text().splitlines()
    rec = json.loads(lines[4])
    rec["question"] = "changed"
    pred.write_text("\n".join(lines[:4] + [json.dumps(rec)] + lines[5:]) + "\n")
    third = []
    write_html_report(results, per_page=2, say=third.append)
    assert any("A / vstar: 6 items, 1 pages written" in s for s in third)
    assert "changed" in (results / "report" / "runs" / "A__vstar" / "items" / "0" / "4.html").read_text()


def test_cli_html_and_a_missing_folder_is_a_clear_error(site, tmp_path):
    results, _, _, _ = site
    res = CliRunner().invoke(app, ["report", str(results), "--html", "--no-images"])
    assert res.exit_code == 0, res.output
    assert "HTML report:" in res.output
    page = (results / "report" / "runs" / "B__vstar" / "items" / "0" / "0.html").read_text()
    assert "images left out (--no-images)" in page and "<svg" not in page
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing"), "--html"])
    assert res.exit_code != 0 and "Traceback" not in res.output
