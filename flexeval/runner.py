"""The runner: the one place that knows both a benchmark and a model.

samples -> pending (resume) -> decode images in worker processes -> batches -> model requests ->
records appended and fsync'ed per batch -> predictions.jsonl, accuracy.csv, run.json.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flexeval import __version__
from flexeval.benchmarks import get_benchmark, list_benchmarks
from flexeval.benchmarks.base import Benchmark, Choice, Generate, Sample, open_image
from flexeval.distributed import Cluster, RankProgress, rank_summary, take_share
from flexeval.errors import FlexEvalError
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
    r = model.resolved
    if model.cfg.has_hd:
        if r["selection"] != "attention":
            parts.append(f"sel-{r['selection']}")
        if r["threshold"] != model.cfg.threshold:
            parts.append(f"thr{r['threshold']:g}")
        if r["select_layer"] != model.cfg.first_select_layer:
            parts.append(f"first{r['select_layer'] + 1}")
        if r["zoom"] != model.cfg.zoom_ratio:
            parts.append(f"zoom{r['zoom']}")
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
            "options": model.resolved, "dtype": str(model.dtype).replace("torch.", "")}


# ---------------------------------------------------------------- data workers

class _ImageDataset(Dataset):
    """Decodes and preprocesses images in worker processes; a bad image becomes an error record."""

    def __init__(self, samples: list[Sample], requests: list, preprocessor):
        self.samples, self.requests, self.pre = samples, requests, preprocessor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        if s.image is None:
            return i, None, "no image"
        try:
            return i, self.pre(open_image(s.image, where=f"{s.id}"), self.requests[i].image_mode), None
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
            self.auto = True
        else:
            try:
                self.size = int(spec)
            except ValueError as e:
                raise FlexEvalError(f"--batch-size must be a positive integer or 'auto', not {spec!r}") from e
            if self.size < 1:
                raise FlexEvalError(f"--batch-size must be at least 1, not {spec}")
            self.auto = False

    def run(self, items: list, fn):
        """fn(items) -> results; splits the batch on OOM when auto (or when a fixed size can't fit)."""
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


# ---------------------------------------------------------------- one benchmark

def _request_fp(req) -> str:
    return fingerprint(asdict(req) | {"kind": type(req).__name__})


def _choice_records(model, batch, reqs):
    prompts = [r.prompt for r in reqs]
    out = model.score_options(prompts, [im for _, im in batch], [list(r.options) for r in reqs],
                              append_eos=reqs[0].append_eos)
    recs = []
    for r, res in zip(reqs, out):
        best = int(np.argmin(res.option_nll))  # first minimum: a tie goes to the lowest index
        recs.append({"prediction": r.options[best], "option_nll": res.option_nll,
                     "n_prompt_tokens": res.n_prompt_tokens, "hd_selected_ratio": res.hd_selected_ratio})
    return recs


def _generate_records(model, batch, reqs, max_new_tokens):
    out = model.generate([r.prompt for r in reqs], [im for _, im in batch],
                         max_new_tokens=max(max_new_tokens or r.max_new_tokens for r in reqs))
    return [{"prediction": res.text, "generated_ids": res.token_ids, "n_prompt_tokens": res.n_prompt_tokens,
             "n_new_tokens": len(res.token_ids), "hd_selected_ratio": res.hd_selected_ratio} for res in out]


def run_benchmark(bench: Benchmark, model, cfg: RunConfig, data_dir: Path, protocol: str,
                  cluster: Cluster | None = None) -> dict | None:
    from flexeval.meta import data_fingerprint, environment_info

    t0 = time.time()
    cluster = cluster or Cluster.from_environ(cfg.device)  # distributed (issue 10)
    samples = bench.load(data_dir, split=cfg.split)
    counts = bench.count_report(samples)
    if counts["mismatch"] and cluster.is_main:
        log(f"[{bench.name}] item counts differ from the published ones: {counts['mismatch']}")
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    requests = [bench.request(s, protocol) for s in samples]
    if cfg.max_new_tokens:
        requests = [Generate(r.prompt, cfg.max_new_tokens, r.image_mode) if isinstance(r, Generate) else r
                    for r in requests]
    keys = [f"{s.fingerprint()}-{_request_fp(r)}" for s, r in zip(samples, requests)]
    identity = model_identity(model)
    config_fp = fingerprint({"benchmark": bench.name, "protocol": protocol, "model": identity,
                             "flexeval_scoring_inputs": 1})
    tag = model_tag(cfg, model)
    bench_dir = Path(cfg.out) / tag / bench.name
    bench_dir.mkdir(parents=True, exist_ok=True)
    store = PredictionStore(bench_dir, config_fp, rank=cluster.rank, world_size=cluster.world_size)
    done = store.completed()
    pending = [i for i, k in enumerate(keys) if k not in done]
    if cluster.is_main:
        log(f"[{bench.name}] {len(samples)} items, {len(samples) - len(pending)} already done, {len(pending)} to run "
            f"-> {bench_dir}")
    sizer = BatchSizer(cfg.batch_size, str(model.device))
    stats = {"batches": 0, "model_seconds": 0.0}
    # ---- distributed (issue 10): every rank runs its cost-balanced share; rank 0 alone writes the results
    share, status = take_share(cluster, bench_dir, config_fp, keys, pending, samples, requests, sizer.size)
    if share.items:
        _run_pending(bench, model, cfg, samples, requests, keys, share.items, store, sizer, stats, protocol, status)
    store.close()
    rank_infos = status.finish(model_s=round(stats["model_seconds"], 3))
    if not cluster.is_main:
        return None
    # ---- end distributed
    records = store.finalize(keys)
    scored, rows = score_records(bench, records, protocol, where=str(bench_dir / "predictions.jsonl"))
    write_accuracy_csv(bench_dir / "accuracy.csv", rows)
    wall = time.time() - t0
    ratios = [r["hd_selected_ratio"] for r in records if r.get("hd_selected_ratio") is not None]
    run = {
        "benchmark": bench.name, "protocol": protocol, "flexeval_version": __version__,
        "config_fingerprint": config_fp,
        "model": {"tag": tag, "kind": "flexattention" if model.cfg.has_hd else "llava-1.5",
                  **identity, "device": str(model.device), "architecture": model.cfg.to_dict()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "data": {"dir": str(Path(data_dir).resolve()), "fingerprint": data_fingerprint([Path(data_dir)]),
                 "counts": counts, "limit": cfg.limit, "evaluated": len(records)},
        "environment": environment_info(),
        "timing": {"wall_s": round(wall, 3), "ran": len(pending), "reused": len(samples) - len(pending),
                   "model_s": round(stats["model_seconds"], 3),
                   "samples_per_s": round(len(share.items) / stats["model_seconds"], 4) if stats["model_seconds"] else None,
                   "batch_size_final": sizer.size, "batches": stats["batches"]},
        "stats": {
            "mean_prompt_tokens": _mean([r.get("n_prompt_tokens") for r in records]),
            "mean_new_tokens": _mean([r.get("n_new_tokens") for r in records]),
            "mean_hd_selected_ratio": _mean(ratios),
            "skipped": sum(1 for r in records if r.get("skipped")),
        },
        "accuracy": rows,
        "distributed": rank_summary(rank_infos),  # per rank: items, estimated cost, wall time; finish spread
    }
    write_json_atomic(bench_dir / "run.json", run)
    skipped = [r for r in records if r.get("skipped")]
    if skipped:
        log(f"[{bench.name}] {len(skipped)} items were not run and count as wrong, e.g. {skipped[0]['id']}: "
            f"{skipped[0]['skipped']} (all are marked 'skipped' in predictions.jsonl)")
    print(format_rows(rows))
    print(f"accuracy table: {bench_dir / 'accuracy.csv'}")
    return run


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 6) if xs else None


def _run_pending(bench, model, cfg, samples, requests, keys, pending, store, sizer, stats, protocol, status):
    sub_samples = [samples[i] for i in pending]
    sub_requests = [requests[i] for i in pending]
    dataset = _ImageDataset(sub_samples, sub_requests, model.preprocessor)
    bar = RankProgress(bench.name, len(pending), status, cfg.quiet)  # per-rank bar; watches the peers
    buffer: list = []

    def flush(items):
        ready = [(j, im) for j, im, err in items if err is None]
        records = {}
        for j, _, err in items:
            if err is not None:
                records[j] = {"prediction": "", "skipped": err}
        if ready:
            reqs = [sub_requests[j] for j, _ in ready]
            batch = [(sub_samples[j], im) for j, im in ready]
            t = time.time()
            if isinstance(reqs[0], Choice):
                outs = _group_run(sizer, batch, reqs, lambda b, r: _choice_records(model, b, r))
            else:
                outs = _group_run(sizer, batch, reqs, lambda b, r: _generate_records(model, b, r, cfg.max_new_tokens))
            stats["model_seconds"] += time.time() - t
            for (j, _), rec in zip(ready, outs):
                records[j] = rec
        out = []
        for j, _, _ in items:
            s = sub_samples[j]
            rec = {"key": keys[pending[j]], "id": s.id, "subset": s.subset, "question": s.question,
                   "target": s.target, "options": list(s.options), **records[j], "meta": s.meta}
            out.append({**rec, **bench.score(rec, protocol)})
        store.append(out)  # flushed and fsync'ed: a kill after this loses nothing
        stats["batches"] += 1
        bar.update(len(items))

    for item in _loader(dataset, cfg.workers):
        buffer.append(item)
        if len(buffer) >= sizer.size:
            flush(buffer)
            buffer = []
    if buffer:
        flush(buffer)
    bar.close()


def _group_run(sizer: BatchSizer, batch, reqs, fn):
    """Run a batch through fn, with OOM back-off; requests of one batch share append_eos."""
    pairs = list(zip(batch, reqs))
    return sizer.run(pairs, lambda items: fn([b for b, _ in items], [r for _, r in items]))


# ---------------------------------------------------------------- entry point

def run_benchmarks(cfg: RunConfig) -> list[dict]:
    from flexeval.model import RunOptions, load_pretrained

    if cfg.bench == "all":
        benches = list_benchmarks()
        root = Path(cfg.data_dir or "data")
        dirs = {b.name: root / b.name for b in benches}
        missing = [str(d) for d in dirs.values() if not d.exists()]
        if missing:
            raise FlexEvalError(f"--bench all expects one folder per benchmark under {root}; missing: "
                                f"{', '.join(missing)} (`flexeval data make-sample --bench all --out {root}` "
                                "writes sample data; `flexeval data fetch --bench all` the real data)")
    else:
        benches = [get_benchmark(cfg.bench)]
        dirs = {benches[0].name: Path(cfg.data_dir or Path("data") / benches[0].name)}
    protocols = {}
    for b in benches:
        if cfg.protocol and cfg.protocol not in b.protocols:
            if cfg.bench != "all":
                b.check_protocol(cfg.protocol)  # raises with the choices
            log(f"[{b.name}] has no protocol '{cfg.protocol}'; using its default '{b.protocols[0]}'")
        protocols[b.name] = cfg.protocol if cfg.protocol in b.protocols else b.protocols[0]
    options = RunOptions(selection=cfg.selection, threshold=cfg.threshold, first_hd_layer=cfg.first_layer,
                         zoom=cfg.zoom, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    # ---- distributed (issue 10): rank from the launcher's environment, device cuda:LOCAL_RANK
    cluster = Cluster.from_environ(cfg.device)
    cfg = replace(cfg, device=cluster.device, workers=cluster.default_workers(cfg.workers))
    try:
        if cluster.is_main:
            log(f"loading {cfg.model} ...")
        model = load_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device, options=options)
        runs = [run_benchmark(b, model, cfg, dirs[b.name], protocols[b.name], cluster) for b in benches]
    except BaseException as e:
        cluster.report_failure(e)  # the peers see "failed" and this error, and stop
        raise
    finally:
        cluster.close()
    if not cluster.is_main:
        return []
    # ---- end distributed
    if cfg.bench == "all":
        print(write_report(Path(cfg.out)))
        print(f"summary: {Path(cfg.out) / 'summary.csv'} and {Path(cfg.out) / 'summary.md'}")
    return runs
