"""The runner: the one place that knows both a benchmark and a model.

A benchmark run in named phases over one `Item` type:

    build_items (sample -> request -> store key) -> pending_items (resume: what the shards lack)
    -> run_items (decode images in workers, batch, dispatch by request kind, append records and
       fsync per batch) -> store.collect -> score_records (once) -> predictions.jsonl, accuracy.csv,
       run.json (its figures: a function of the records).

The request kinds are one table, REQUEST_KINDS: request type -> model method -> record builder. A
model is anything with a `preprocessor` and those methods (`generate`, `choose`).
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flexeval import __version__
from flexeval.benchmarks import data_folders, select_benchmarks
from flexeval.benchmarks.base import Benchmark, Sample, open_image
from flexeval.errors import FlexEvalError
from flexeval.requests import Choice, Generate, Request
from flexeval.store import PredictionStore, fingerprint, write_json_atomic
from flexeval.tables import format_rows, score_records, write_accuracy_csv, write_report


@dataclass
class RunConfig:
    bench: str
    model: str
    data_dir: Path | None = None
    out: Path = Path("results")
    limit: int | None = None
    batch_size: str = "auto"
    protocol: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    selection: str | None = None
    threshold: float | None = None
    first_layer: int | None = None
    zoom: int | None = None
    split: str | None = None
    workers: int | None = None  # None: cores - 1, at most 8
    tag: str | None = None
    seed: int = 0
    quiet: bool = False
    max_new_tokens: int | None = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- model identity

def model_tag(cfg: RunConfig, model) -> str:
    """Results folder name: the checkpoint's name plus every non-default knob."""
    if cfg.tag:
        return cfg.tag
    name = Path(str(cfg.model).rstrip("/")).name or "model"
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "-", name)]
    r = model.options
    if model.cfg.has_hd:
        if r.selection != "attention":
            parts.append(f"sel-{r.selection}")
        if r.threshold != model.cfg.threshold:
            parts.append(f"thr{r.threshold:g}")
        if r.select_layer != model.cfg.first_select_layer:
            parts.append(f"first{r.select_layer + 1}")
        if r.zoom != model.cfg.zoom_ratio:
            parts.append(f"zoom{r.zoom}")
    if cfg.dtype not in ("auto", None):
        parts.append(str(cfg.dtype))
    return "-".join(parts)


def model_identity(model) -> dict:
    """What makes two runs' predictions comparable: weights, config, knobs, dtype."""
    folder = Path(model.folder)
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir()
                   if p.suffix in (".safetensors", ".bin", ".model", ".json"))
    config_text = (folder / "config.json").read_text()
    return {"source": model.source, "folder": str(folder.resolve()), "files": files,
            "config_sha": fingerprint(config_text), "format": model.cfg.format,
            "options": model.options.to_dict(), "dtype": str(model.dtype).replace("torch.", "")}


# ---------------------------------------------------------------- data workers

class _ImageDataset(Dataset):
    """Decodes and preprocesses images in worker processes; a bad image becomes an error message."""

    def __init__(self, items: list[Item], preprocessor):
        self.items, self.pre = items, preprocessor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        s = self.items[i].sample
        if s.image is None:
            return i, None, "no image"
        try:
            return i, self.pre(open_image(s.image, where=f"{s.id}"), self.items[i].request.image_mode), None
        except FlexEvalError as e:
            return i, None, str(e)


def _loader(dataset: Dataset, workers: int | None) -> DataLoader:
    if workers is None:  # decoding a 2000x1500 JPEG + resize takes ~90 ms: several workers keep a GPU fed
        workers = max(0, min(8, (os.cpu_count() or 1) - 1))
    kw = {"num_workers": workers, "collate_fn": lambda x: x[0], "batch_size": 1}
    if workers > 0:
        kw.update(prefetch_factor=4, persistent_workers=False)
    return DataLoader(dataset, **kw)


# ---------------------------------------------------------------- batching with OOM back-off

def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


class BatchSizer:
    """Fixed batch size, or `auto`: start at 64 on CUDA (4 on the CPU) and halve on out-of-memory until a
    batch fits; the failed batch is retried in halves, so no work is lost."""

    def __init__(self, spec: str, device: str):
        if str(spec) == "auto":
            self.size = 64 if str(device).startswith("cuda") else 4
        else:
            try:
                self.size = int(spec)
            except ValueError as e:
                raise FlexEvalError(f"--batch-size must be a positive integer or 'auto', not {spec!r}") from e
            if self.size < 1:
                raise FlexEvalError(f"--batch-size must be at least 1, not {spec}")

    def run(self, items: list, fn):
        """fn(items) -> results; on out-of-memory the batch is split in halves (auto or fixed size alike)."""
        try:
            return fn(items)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not _is_oom(e) or len(items) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(items) // 2
            self.size = max(1, half)
            log(f"out of memory with batch {len(items)}: retrying as {half} + {len(items) - half}")
            return self.run(items[:half], fn) + self.run(items[half:], fn)


# ---------------------------------------------------------------- the request kinds

@dataclass
class Item:
    """One sample on its way through a run: its request, its store key, its record once run."""

    sample: Sample
    request: Request
    key: str  # sample content + request: a changed item or prompt is never reused
    record: dict | None = None


def request_fingerprint(req: Request) -> str:
    # `question` is left out: it is part of `prompt`, and keys stay those of runs made before it existed.
    fields = {k: v for k, v in asdict(req).items() if k != "question"}
    return fingerprint(fields | {"kind": type(req).__name__})


def choice_record(req: Choice, res) -> dict:
    best = int(np.argmin(res.option_nll))  # first minimum: a tie goes to the lowest index
    return {"prediction": req.options[best], "option_nll": res.option_nll,
            "n_prompt_tokens": res.n_prompt_tokens, "hd_selected_ratio": res.hd_selected_ratio}


def generation_record(req: Generate, res) -> dict:
    return {"prediction": res.text, "generated_ids": res.token_ids, "n_prompt_tokens": res.n_prompt_tokens,
            "n_new_tokens": len(res.token_ids), "hd_selected_ratio": res.hd_selected_ratio}


@dataclass(frozen=True)
class RequestKind:
    method: str  # the model method answering a list of (request, image)
    record: Callable  # (request, result) -> the record's model fields


REQUEST_KINDS: dict[type, RequestKind] = {
    Generate: RequestKind("generate", generation_record),
    Choice: RequestKind("choose", choice_record),
}


@dataclass
class RunStats:
    batches: int = 0
    model_seconds: float = 0.0


# ---------------------------------------------------------------- the phases of one benchmark

def build_items(bench: Benchmark, samples: list[Sample], protocol: str, max_new_tokens: int | None) -> list[Item]:
    """Each sample's request (the benchmark's, with --max-new-tokens applied) and store key."""
    items = []
    for s in samples:
        req = bench.request(s, protocol)
        if type(req) not in REQUEST_KINDS:
            raise FlexEvalError(f"{bench.name}: item {s.id} asks for a {type(req).__name__} request; the runner "
                                f"answers {', '.join(t.__name__ for t in REQUEST_KINDS)} (add it to REQUEST_KINDS)")
        if max_new_tokens and isinstance(req, Generate):
            req = replace(req, max_new_tokens=max_new_tokens)
        items.append(Item(s, req, f"{s.fingerprint()}-{request_fingerprint(req)}"))
    return items


def pending_items(items: list[Item], store: PredictionStore) -> list[Item]:
    """The items no shard of this configuration holds yet (resume)."""
    done = store.completed()
    return [it for it in items if it.key not in done]


def run_items(items: list[Item], model, store: PredictionStore, sizer: BatchSizer, workers: int | None,
              progress) -> RunStats:
    """Images decoded in workers, batches of `sizer.size`, each batch's records appended and fsync'ed."""
    stats = RunStats()
    if not items:
        return stats
    batch: list = []
    for entry in _loader(_ImageDataset(items, model.preprocessor), workers):
        batch.append(entry)
        if len(batch) >= sizer.size:
            _run_batch(items, batch, model, store, sizer, stats)
            progress(len(batch))
            batch = []
    if batch:
        _run_batch(items, batch, model, store, sizer, stats)
        progress(len(batch))
    return stats


def _run_batch(items: list[Item], batch: list, model, store: PredictionStore, sizer: BatchSizer,
               stats: RunStats) -> None:
    for i, _, err in batch:
        if err is not None:
            items[i].record = {"prediction": "", "skipped": err}
    t = time.time()
    for req_type, kind in REQUEST_KINDS.items():
        ready = [(items[i], image) for i, image, err in batch if err is None and type(items[i].request) is req_type]
        if not ready:
            continue
        answer = getattr(model, kind.method)
        results = sizer.run([(it.request, image) for it, image in ready], answer)
        for (it, _), res in zip(ready, results):
            it.record = kind.record(it.request, res)
    stats.model_seconds += time.time() - t
    store.append([sample_record(items[i]) for i, _, _ in batch])  # flushed and fsync'ed: a kill loses nothing
    stats.batches += 1


def sample_record(item: Item) -> dict:
    """A line of predictions.jsonl before scoring: the sample's identity, then the model's fields."""
    s = item.sample
    return {"key": item.key, "id": s.id, "subset": s.subset, "question": s.question, "target": s.target,
            "options": list(s.options), **item.record, "meta": s.meta}


def results_folder(cfg: RunConfig, model, bench: Benchmark) -> Path:
    """<out>/<model tag>/<benchmark>/"""
    return Path(cfg.out) / model_tag(cfg, model) / bench.name


def run_figures(records: list[dict]) -> dict:
    """run.json's `stats`: means over the records, and how many were skipped."""
    return {
        "mean_prompt_tokens": _mean([r.get("n_prompt_tokens") for r in records]),
        "mean_new_tokens": _mean([r.get("n_new_tokens") for r in records]),
        "mean_hd_selected_ratio": _mean([r.get("hd_selected_ratio") for r in records]),
        "skipped": sum(1 for r in records if r.get("skipped")),
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 6) if xs else None


def run_benchmark(bench: Benchmark, model, cfg: RunConfig, data_dir: Path, protocol: str) -> dict:
    from tqdm import tqdm

    t0 = time.time()
    samples = bench.load(data_dir, split=cfg.split)
    counts = bench.count_report(samples)
    if counts["mismatch"]:
        log(f"[{bench.name}] item counts differ from the published ones: {counts['mismatch']}")
    items = build_items(bench, samples[: cfg.limit] if cfg.limit is not None else samples, protocol,
                        cfg.max_new_tokens)
    identity = model_identity(model)
    config_fp = fingerprint({"benchmark": bench.name, "protocol": protocol, "model": identity,
                             "flexeval_scoring_inputs": 1})
    bench_dir = results_folder(cfg, model, bench)
    bench_dir.mkdir(parents=True, exist_ok=True)
    store = PredictionStore(bench_dir, config_fp)
    pending = pending_items(items, store)
    log(f"[{bench.name}] {len(items)} items, {len(items) - len(pending)} already done, {len(pending)} to run "
        f"-> {bench_dir}")
    sizer = BatchSizer(cfg.batch_size, str(model.device))
    with tqdm(total=len(pending), desc=bench.name, unit="sample", disable=cfg.quiet, dynamic_ncols=True) as bar:
        stats = run_items(pending, model, store, sizer, cfg.workers, bar.update)
    where = str(bench_dir / "predictions.jsonl")
    records, rows = score_records(bench, store.collect([it.key for it in items]), protocol, where=where)
    store.write_predictions(records)
    write_accuracy_csv(bench_dir / "accuracy.csv", rows)
    timing = {"wall_s": round(time.time() - t0, 3), "ran": len(pending), "reused": len(items) - len(pending),
              "model_s": round(stats.model_seconds, 3),
              "samples_per_s": round(len(pending) / stats.model_seconds, 4) if stats.model_seconds else None,
              "batch_size_final": sizer.size, "batches": stats.batches}
    run = run_summary(bench, model, cfg, protocol, config_fp, identity, data_dir, counts, records, rows, timing)
    write_json_atomic(bench_dir / "run.json", run)
    report_run(bench, bench_dir, records, rows)
    return run


def run_summary(bench, model, cfg, protocol, config_fp, identity, data_dir, counts, records, rows, timing) -> dict:
    """run.json: what ran (model, config, data, environment), how long, and the figures of the records."""
    from flexeval.meta import data_fingerprint, environment_info

    return {
        "benchmark": bench.name, "protocol": protocol, "flexeval_version": __version__,
        "config_fingerprint": config_fp,
        "model": {"tag": model_tag(cfg, model), "kind": "flexattention" if model.cfg.has_hd else "llava-1.5",
                  **identity, "device": str(model.device), "architecture": model.cfg.to_dict()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "data": {"dir": str(Path(data_dir).resolve()), "fingerprint": data_fingerprint([Path(data_dir)]),
                 "counts": counts, "limit": cfg.limit, "evaluated": len(records)},
        "environment": environment_info(),
        "timing": timing,
        "stats": run_figures(records),
        "accuracy": rows,
    }


def report_run(bench: Benchmark, bench_dir: Path, records: list[dict], rows: list[dict]) -> None:
    skipped = [r for r in records if r.get("skipped")]
    if skipped:
        log(f"[{bench.name}] {len(skipped)} items were not run and count as wrong, e.g. {skipped[0]['id']}: "
            f"{skipped[0]['skipped']} (all are marked 'skipped' in predictions.jsonl)")
    print(format_rows(rows))
    print(f"accuracy table: {bench_dir / 'accuracy.csv'}")


# ---------------------------------------------------------------- entry point

def resolve_protocols(benches: list[Benchmark], protocol: str | None, is_all: bool) -> dict[str, str]:
    """Each benchmark's protocol: the one asked for, or (with --bench all, where a benchmark lacks
    it) the benchmark's default, said on screen."""
    protocols = {}
    for b in benches:
        if protocol and protocol not in b.protocols:
            if not is_all:
                b.check_protocol(protocol)  # raises with the choices
            log(f"[{b.name}] has no protocol '{protocol}'; using its default '{b.protocols[0]}'")
        protocols[b.name] = protocol if protocol in b.protocols else b.protocols[0]
    return protocols


def run_benchmarks(cfg: RunConfig) -> list[dict]:
    from flexeval.model import RunOptions, load_pretrained

    benches = select_benchmarks(cfg.bench)
    dirs = data_folders(cfg.bench, cfg.data_dir, must_exist=True)
    protocols = resolve_protocols(benches, cfg.protocol, cfg.bench == "all")
    options = RunOptions(selection=cfg.selection, threshold=cfg.threshold, first_hd_layer=cfg.first_layer,
                         zoom=cfg.zoom, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    log(f"loading {cfg.model} ...")
    model = load_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device, options=options)
    runs = [run_benchmark(b, model, cfg, dirs[b.name], protocols[b.name]) for b in benches]
    if cfg.bench == "all":
        print(write_report(Path(cfg.out)))
        print(f"summary: {Path(cfg.out) / 'summary.csv'} and {Path(cfg.out) / 'summary.md'}")
    return runs
