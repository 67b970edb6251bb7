"""The execution core: one sample's way from a benchmark item to a stored record.

    build_items (sample -> request -> store key) -> pending_indices (resume: what the shards lack)
    -> run_items (decode images in workers, batch, dispatch by request kind, append records and
       fsync per batch)

The request kinds are one table, REQUEST_KINDS: request type -> model method -> record builder. A
model is anything with a `preprocessor` and those methods (`generate`, `choose`). What a run does
with each batch is its work: `Answers` (run: each request answered by its kind) by default; the
appendix's maps and grounding are works too (flexeval/analysis/maps_work.py), so they share the
plan, the shares, the store, resume, the lock and run.json. Planning a run, finishing it (scores,
tables, run.json) and the entry point are in flexeval/evaluate.py.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flexeval.analysis.coverage import enable_coverage, record_coverage
from flexeval.benchmarks.base import DEFAULT_MAX_IMAGE_PIXELS, Benchmark, Sample, open_image
from flexeval.benchmarks.question_style import styled_sample
from flexeval.distributed import RankProgress
from flexeval.errors import FlexEvalError
from flexeval.length import set_aside_overlong
from flexeval.model.conversation import llava_v1_prompt
from flexeval.requests import Choice, Generate, Request
from flexeval.results.nonfinite import NonFiniteGuard, choice_problem
from flexeval.results.store import PredictionStore, fingerprint, is_provisional
from flexeval.workers import guarded


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data workers

class ImageDataset(Dataset):
    """Decodes and preprocesses images in worker processes; a bad image becomes an error message."""

    def __init__(self, items: list[Item], preprocessor, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.items, self.pre, self.max_pixels = items, preprocessor, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        s = self.items[i].sample
        if s.image is None:
            return i, None, "no image"
        try:
            image = open_image(s.image, where=f"{s.id}", max_pixels=self.max_pixels)
            return i, self.pre(image, self.items[i].request.image_mode), None
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

def is_oom(e: BaseException) -> bool:
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
            if not is_oom(e) or len(items) == 1:
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
    """The request's part of a store key: its fields with the question in LLaVA-1.5's v1 conversation,
    as requests carried it before the template moved to the model, so earlier results still resume
    (tests/test_keys.py recomputes the old formula)."""
    fields = {k: v for k, v in asdict(req).items() if k not in ("question", "system")}
    return fingerprint({"prompt": llava_v1_prompt(req.question, req.system)} | fields | {"kind": type(req).__name__})


def _prompt_fields(res) -> dict:
    """The exact prompt text and ids, where the model reports them (hf_vlm builds them from its template)."""
    return {"prompt": res.prompt, "prompt_ids": res.prompt_ids} if getattr(res, "prompt_ids", None) else {}


def choice_record(req: Choice, res) -> dict:
    best = int(np.argmin(res.option_nll))  # first minimum: a tie goes to the lowest index
    bad = choice_problem(res.option_nll)  # NaN would argmin to option 0, the correct one on V*
    return {"prediction": None if bad else req.options[best], "option_nll": res.option_nll,
            "n_prompt_tokens": res.n_prompt_tokens, "hd_selected_ratio": res.hd_selected_ratio,
            **_prompt_fields(res), **({"non_finite": bad} if bad else {})}


def generation_record(req: Generate, res) -> dict:
    return {"prediction": None if getattr(res, "non_finite", False) else res.text, "generated_ids": res.token_ids,
            "n_prompt_tokens": res.n_prompt_tokens, "n_new_tokens": len(res.token_ids),
            "hd_selected_ratio": res.hd_selected_ratio, **_prompt_fields(res),
            **({"non_finite": "logits not finite during generation"} if getattr(res, "non_finite", False) else {})}


@dataclass(frozen=True)
class RequestKind:
    method: str  # the model method answering a list of (request, image)
    record: Callable  # (request, result) -> the record's model fields


REQUEST_KINDS: dict[type, RequestKind] = {
    Generate: RequestKind("generate", generation_record),
    Choice: RequestKind("choose", choice_record),
}


class Answers:
    """The work of `flexeval run`: each ready item's request answered by its kind's model method,
    kind by kind in REQUEST_KINDS order (a batch's out-of-memory back-off per call)."""

    name = "predictions"
    folder: str | None = None  # a sub-folder of <out>/<tag>/<benchmark> for the store and results; None: itself

    def settings(self) -> dict:
        """What joins the config fingerprint (a changed setting never reuses records); {}: run's own."""
        return {}

    def adapt(self, request: Request) -> Request:
        """The request this work asks of the model for a benchmark's request (the store key's request)."""
        return request

    def answer(self, model, ready: list[tuple[Item, object]], sizer: BatchSizer) -> None:
        for req_type, kind in REQUEST_KINDS.items():
            mine = [(it, image) for it, image in ready if type(it.request) is req_type]
            if not mine:
                continue
            results = sizer.run([(it.request, image) for it, image in mine], getattr(model, kind.method))
            for (it, image), res in zip(mine, results):
                it.record = kind.record(it.request, res) | record_coverage(it.sample, res, image)

    def finish(self, plan, records: list[dict], run: dict) -> dict | None:
        """Rank 0, after the records are scored and before run.json is written: extra outputs; a dict
        returned goes into run.json under `name`."""
        return None


@dataclass
class RunStats:
    batches: int = 0
    model_seconds: float = 0.0


# ---------------------------------------------------------------- the phases of one benchmark

def build_items(bench: Benchmark, samples: list[Sample], protocol: str, max_new_tokens: int | None,
                question_style: str = "release", work: Answers | None = None) -> list[Item]:
    """Each sample's request (the benchmark's, in --question-style, with --max-new-tokens applied, as
    the work asks it) and store key."""
    items = []
    for s in samples:
        req = bench.request(styled_sample(bench.name, s, question_style), protocol)
        req = work.adapt(req) if work is not None else req
        if type(req) not in REQUEST_KINDS:
            raise FlexEvalError(f"{bench.name}: item {s.id} asks for a {type(req).__name__} request; the runner "
                                f"answers {', '.join(t.__name__ for t in REQUEST_KINDS)} (add it to REQUEST_KINDS)")
        if max_new_tokens and isinstance(req, Generate):
            req = replace(req, max_new_tokens=max_new_tokens)
        items.append(Item(s, req, f"{s.fingerprint()}-{request_fingerprint(req)}"))
    return items


def pending_indices(items: list[Item], done: dict) -> list[int]:
    """The items no shard of this configuration holds yet (resume), as indices into `items`; a skipped
    row is never a cached result (flexeval/results/store.py is_provisional): it runs again."""
    return [i for i, it in enumerate(items) if it.key not in done or is_provisional(done[it.key])]


class Progress:
    """The progress bar, which says what it is doing while its count still sits at 0 (the decoders
    start, the first batch fills, the first batch runs: the slowest, kernels warm up)."""

    def __init__(self, bar, rank_progress: RankProgress | None = None):
        self.bar, self.rank_progress, self.batches = bar, rank_progress, 0

    def status(self, text: str) -> None:
        if self.batches == 0:
            self.bar.set_postfix_str(text)

    def done(self, n: int) -> None:
        self.batches += 1
        if self.batches == 1:
            self.bar.set_postfix_str("", refresh=False)
        if self.rank_progress is not None:  # also beats this rank's status and watches the peers
            self.rank_progress.update(n)
        else:
            self.bar.update(n)


def run_items(items: list[Item], model, store: PredictionStore, sizer: BatchSizer, cfg,
              progress: Progress, guard: NonFiniteGuard, work: Answers | None = None) -> RunStats:
    """Images decoded in workers (cfg.workers; cfg.max_image_pixels guards each), batches of `sizer.size`
    answered by the work (default: Answers), each batch's records appended and fsync'ed."""
    stats = RunStats()
    items = set_aside_overlong(items, model, store, sample_record, progress)  # over the model's positions: skipped
    if not items:
        return stats
    progress.status("starting the image decoders")
    enable_coverage(model, [it.sample for it in items])  # V* boxes + a selecting model: target_coverage
    work = work or Answers()

    def flush(batch: list) -> None:
        _run_batch(items, batch, model, store, sizer, stats, progress, work)
        guard.add(sample_record(items[i]) for i, _, _ in batch)  # too many NaN/inf items stop the run (stored ones kept)

    feed_batches(ImageDataset(items, model.preprocessor, cfg.max_image_pixels), cfg.workers, sizer, flush, progress)
    return stats


def feed_batches(dataset: Dataset, workers: int | None, sizer: BatchSizer, flush, progress: Progress | None = None):
    """Decoded (index, image, error) entries to flush() in batches of sizer.size (read per batch: an OOM
    back-off shrinks the next)."""
    batch: list = []
    for entry in guarded(_loader(dataset, workers)):  # a killed worker: one clear line (flexeval/workers.py)
        batch.append(entry)
        if progress is not None:
            progress.status(f"first batch: {len(batch)}/{sizer.size} images decoded")
        if sum(err is None for _, _, err in batch) >= sizer.size:  # skipped rows take no model slot: a
            flush(batch)  # rerun that redoes them (flexeval/results/store.py is_provisional) keeps the batches
            batch = []
    if batch:
        flush(batch)


def _run_batch(items: list[Item], batch: list, model, store: PredictionStore, sizer: BatchSizer,
               stats: RunStats, progress: Progress, work: Answers) -> None:
    progress.status(f"model: first batch of {len(batch)} (the slowest: kernels warm up)")
    for i, _, err in batch:
        if err is not None:
            items[i].record = {"prediction": "", "skipped": err}
    t = time.time()
    ready = [(items[i], image) for i, image, err in batch if err is None]
    if ready:
        work.answer(model, ready, sizer)
    stats.model_seconds += time.time() - t
    store.append([sample_record(items[i]) for i, _, _ in batch])  # flushed and fsync'ed: a kill loses nothing
    stats.batches += 1
    progress.done(len(batch))


def sample_record(item: Item) -> dict:
    """A line of predictions.jsonl before scoring: the sample's identity, then the model's fields."""
    s = item.sample
    return {"key": item.key, "id": s.id, "subset": s.subset, "question": s.question, "target": s.target,
            "options": list(s.options), **item.record, "meta": s.meta}

