"""The end-to-end part of `flexeval speed`: a generated benchmark in the release layouts, run by
the real runner (data workers, batching, the prediction store, scoring), with the share of wall
time the model was not running.

Items: V*-like (2246x1582 JPEGs, the size of V*'s SA-1B images, 4 colour options) and
TextVQA-like (1024x768 JPEGs, about the val set's mean size, short-answer generation), half each.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import ImageDraw

from flexeval.benchmarks import get_benchmark
from flexeval.benchmarks.samples import draw_scene

VSTAR_SIZE = (2246, 1582)
TEXTVQA_SIZE = (1024, 768)
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange"]


def _vstar_item(folder: Path, k: int, seed: int) -> None:
    rng = random.Random(seed * 1_000_003 + k)  # one seed per item: the same data with any pool size
    img, boxes = draw_scene(rng, *VSTAR_SIZE, 6)
    img.save(folder / "direct_attributes" / f"sa_{k}.jpg", format="JPEG", quality=90)
    meta = {"target_object": ["cup"], "bbox": boxes[:1], "question": "What is the color of the cup?",
            "options": rng.sample(COLOURS, 4)}
    (folder / "direct_attributes" / f"sa_{k}.json").write_text(json.dumps(meta))


def _textvqa_image(folder: Path, k: int, seed: int) -> None:
    rng = random.Random(seed * 1_000_003 + k)
    img, boxes = draw_scene(rng, *TEXTVQA_SIZE, 4)
    ImageDraw.Draw(img).text((boxes[0][0], boxes[0][1]), "OPEN", fill=(0, 0, 0))
    img.save(folder / "train_images" / f"{k:016x}.jpg", format="JPEG", quality=90)


def write_vstar_like(folder: Path, n: int, seed: int, pool) -> None:
    """`direct_attributes/sa_K.jpg` + `sa_K.json` (relative_position/ exists, empty)."""
    for subset in ("direct_attributes", "relative_position"):
        (folder / subset).mkdir(parents=True, exist_ok=True)
    list(pool.map(_vstar_item, [folder] * n, range(1, n + 1), [seed] * n))


def write_textvqa_like(folder: Path, n: int, seed: int, pool) -> None:
    """`TextVQA_0.5.1_val.json` + `train_images/<image_id>.jpg`, one image per question."""
    (folder / "train_images").mkdir(parents=True, exist_ok=True)
    list(pool.map(_textvqa_image, [folder] * n, range(n), [seed] * n))
    entries = [{"question": "what does the sign say?", "image_id": f"{k:016x}", "question_id": k,
                "answers": ["open"] * 10, "image_width": TEXTVQA_SIZE[0], "image_height": TEXTVQA_SIZE[1],
                "set_name": "val"} for k in range(n)]
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "data": entries}))


def make_data(root: Path, n_items: int, seed: int = 0) -> dict[str, Path]:
    """Both benchmarks under `root`, reused when a previous bench wrote the same ones."""
    stamp = {"n_items": n_items, "seed": seed, "vstar": VSTAR_SIZE, "textvqa": TEXTVQA_SIZE}
    stamp_file = root / "stamp.json"
    dirs = {"vstar": root / "vstar", "textvqa": root / "textvqa"}
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == json.loads(json.dumps(stamp)):
        return dirs
    shutil.rmtree(root, ignore_errors=True)
    n_vstar = (n_items + 1) // 2
    with ProcessPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        write_vstar_like(dirs["vstar"], n_vstar, seed, pool)
        write_textvqa_like(dirs["textvqa"], n_items - n_vstar, seed + 1, pool)
    stamp_file.write_text(json.dumps(stamp))
    return dirs


class GpuUtilisation:
    """Samples the driver's GPU utilisation (percent of time a kernel ran) every 50 ms, where NVML
    is installed; `idle` is None otherwise (then only the host-side figure is reported)."""

    def __init__(self, device: torch.device):
        self.samples: list[int] = []
        self.device = device
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.device.type == "cuda":
            try:
                torch.cuda.utilization(self.device)
            except Exception:  # pynvml missing or NVML not usable: no driver-side figure
                return self
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.05):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def idle(self) -> float | None:
        return 1 - sum(self.samples) / (100 * len(self.samples)) if self.samples else None


def run_end_to_end(model, out: Path, n_items: int, batch_sizes: dict[str, int], workers: int | None,
                   new_tokens: int) -> list[dict]:
    """Run the generated benchmarks through the real runner; one row per benchmark."""
    from flexeval.evaluate import RunConfig, run_benchmark

    dirs = make_data(out / "e2e-data", n_items)
    results = out / "e2e-results"
    shutil.rmtree(results, ignore_errors=True)  # a fresh store: resume must not skip the work
    rows = []
    for name, kind in (("vstar", "choice"), ("textvqa", "generate")):
        bench = get_benchmark(name)
        cfg = RunConfig(bench=name, model=str(model.source), out=results, batch_size=str(batch_sizes[kind]),
                        workers=workers, tag="speed", quiet=True, max_new_tokens=new_tokens)
        t = time.perf_counter()
        # the runner's accuracy table of random weights is noise here: keep stdout for the speed table
        with GpuUtilisation(model.device) as util, contextlib.redirect_stdout(io.StringIO()):
            run = run_benchmark(bench, model, cfg, dirs[name], bench.protocols[0])
        wall = time.perf_counter() - t
        timing = run["timing"]
        rows.append({"benchmark": name, "kind": kind, "items": timing["ran"], "batch": batch_sizes[kind],
                     "workers": workers, "wall_s": wall, "model_s": timing["model_s"],
                     "samples_per_s": timing["ran"] / wall,
                     "outside_model_fraction": max(0.0, 1 - timing["model_s"] / wall),
                     "gpu_idle_fraction": util.idle,
                     "mean_hd_selected_ratio": run["stats"]["mean_hd_selected_ratio"]})
    return rows
