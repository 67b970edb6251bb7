"""`flexeval report DIR --html`: a static site under DIR/report/ that opens from disk (no server, no
network): index.html (every run's accuracy table and intervals), runs/<run>/index.html (the items,
paginated and filtered in the page: subset, correct/wrong, flipped against another run of the same
benchmark), runs/<run>/items/<k // 1000>/<k>.html (one page per item).

Written incrementally: a page is rewritten only when its text changed, and a thumbnail (named by
the image's content) only when missing, so a killed report resumes where it stopped and a rerun
after new runs does only the new work.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from flexeval.analysis.coverage import parse_boxes
from flexeval.analysis.coverage_report import coverage_rows, write_coverage_csv, write_coverage_summary
from flexeval.errors import FlexEvalError

from . import pages
from .assets import CSS, LIST_JS
from .runs import Run, attention_picture, find_runs, image_sources, read_records
from .thumbs import source_file, thumbnail, write_file

PER_PAGE = 100


def write_if_changed(path: Path, text: str) -> bool:
    data = text.encode("utf-8")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_file(path, data)
    return True


def write_html_report(results_dir: Path, images: bool = True, per_page: int = PER_PAGE, say=None) -> Path:
    """Writes results_dir/report/ and returns its index.html."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results_dir = Path(results_dir)
    runs = find_runs(results_dir) if results_dir.is_dir() else []
    if not runs:
        raise FlexEvalError(f"no runs in {results_dir} (looked for <model-tag>/<bench>/predictions.jsonl with "
                            f"accuracy.csv); run `flexeval run --bench vstar --out {results_dir}` first")
    out = results_dir / "report"
    write_if_changed(out / "assets" / "style.css", CSS)
    write_if_changed(out / "assets" / "list.js", LIST_JS)
    coverage = {}
    for r in runs:
        r.records = read_records(r)
        coverage[r.slug] = coverage_rows(r.records)
        write_coverage_csv(r.folder, r.records, coverage[r.slug])  # from the records, as rescore does accuracy.csv
    has_plot = bool(write_coverage_summary(results_dir))
    notes = {}
    for r in runs:
        notes[r.slug] = write_run(r, runs, out, images, per_page, say, coverage[r.slug])
    write_if_changed(out / "index.html", pages.index_html(runs, notes, has_plot))
    return out / "index.html"


def write_run(run: Run, runs: list[Run], out: Path, images: bool, per_page: int, say,
              coverage: list[dict]) -> str | None:
    """The run's list page, items.js and item pages; returns a note for the index (e.g. no images)."""
    folder = out / "runs" / run.slug
    comparable = [o for o in runs if o is not run and o.bench == run.bench]
    subsets = sorted({str(rec.get("subset")) for rec in run.records})
    write_if_changed(folder / "items.js", pages.items_js(run.slug, run.records))
    write_if_changed(folder / "index.html", pages.list_html(run, subsets, comparable, coverage, per_page))
    sources, note = image_sources(run) if images else ({}, "images left out (--no-images)")
    t0, written, n = time.time(), 0, len(run.records)
    for k, rec in enumerate(run.records):
        info = image_info(rec, sources, out / "thumbs") if images and not note else {"why": note}
        att = attention_picture(run, str(rec.get("id")))
        rel = os.path.relpath(att, folder / "items" / str(k // 1000)) if att else None
        written += write_if_changed(folder / "items" / str(k // 1000) / f"{k}.html",
                                    pages.sample_html(run, k, n, rec, info, rel))
        if (k + 1) % 5000 == 0:
            say(f"[report] {run.label} / {run.bench}: {k + 1}/{n} item pages ({time.time() - t0:.0f} s)")
    say(f"[report] {run.label} / {run.bench}: {n} items, {written} pages written, {time.time() - t0:.1f} s")
    return note


def image_info(rec: dict, sources: dict, thumbs_dir: Path) -> dict:
    """Thumbnail, original size, target boxes in original pixels, full-image path (or why none)."""
    item_id = str(rec.get("id"))
    if item_id not in sources:
        return {"why": f"item {item_id} is not in the run's data folder any more"}
    thumb, size, why = thumbnail(sources[item_id], thumbs_dir, item_id)
    info = {"thumb": thumb, "size": size, "why": why, "full": source_file(sources[item_id])}
    bbox = (rec.get("meta") or {}).get("bbox")
    if thumb and bbox:
        try:
            boxes = parse_boxes(bbox, item_id)
        except FlexEvalError:
            boxes = []
        w, h = size  # clipped to the frame, as the coverage measures them
        info["boxes"] = [[b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h]
                         for b in _frame_boxes(boxes, size)]
    return info


def _frame_boxes(boxes: list, size: tuple[int, int]) -> list:
    """Boxes clipped to the image, as fractions of its width and height (x0, y0, x1, y1)."""
    w, h = size
    out = []
    for b in boxes:
        x0, y0 = max(b[0], 0) / w, max(b[1], 0) / h
        x1, y1 = min(b[0] + b[2], w) / w, min(b[1] + b[3], h) / h
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1, y1))
    return out
