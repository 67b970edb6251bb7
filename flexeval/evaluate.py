"""Evaluate: plan a benchmark run, hand its items to the execution core (flexeval/execute.py), finish it.

A benchmark run in named phases over one `Item` type:

    build_items (sample -> request -> store key) -> pending_indices (resume: what the shards lack)
    -> run_items (decode images in workers, batch, dispatch by request kind, append records and
       fsync per batch) -> store.collect -> score_records (once) -> predictions.jsonl, accuracy.csv,
       run.json (its figures: a function of the records).

The request kinds are one table, REQUEST_KINDS: request type -> model method -> record builder. A
model is anything with a `preprocessor` and those methods (`generate`, `choose`). `run_benchmark`
takes a work (flexeval/execute.py `Answers` by default); `grounding` and `attention --bench` pass
theirs (flexeval/analysis/maps_work.py) and get the same plan, shares, store, lock and run.json.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from flexeval import __version__
from flexeval.analysis.coverage_report import write_coverage_csv
from flexeval.benchmarks import data_folders, select_benchmarks, several_benchmarks
from flexeval.benchmarks.base import DEFAULT_MAX_IMAGE_PIXELS, Benchmark, Sample
from flexeval.benchmarks.question_style import changes_questions, check_question_style
from flexeval.checks import (
    canonical_dtype,
    check_model_options,
    check_protocol_exists,
    check_run_options,
    check_samples,
    check_tag,
    count_sentence,
    effective_seed,
    generation_override,
    load_samples,
    replaced_results_note,
    split_for,
)
from flexeval.distributed import Cluster, RankProgress, rank_summary, share_digests, take_share
from flexeval.execute import Answers, BatchSizer, Item, Progress, build_items, log, pending_indices, run_items
from flexeval.interrupt import note_progress
from flexeval.items import IdList, check_unprefixed_ids_found, items_to_run, read_id_file
from flexeval.plugins import load_plugin_model, model_plugin
from flexeval.results.accuracy import format_rows, write_accuracy_csv
from flexeval.results.identity import files_to_read, model_identity, model_tag
from flexeval.results.intervals import METHOD as INTERVAL_METHOD
from flexeval.results.layout import items_part, results_dir, variant_name
from flexeval.results.lock import hold_run_lock
from flexeval.results.nonfinite import DEFAULT_LIMIT, NonFiniteGuard, per_subset
from flexeval.results.report import write_report
from flexeval.results.runinfo import run_command
from flexeval.results.scoring import score_records
from flexeval.results.store import PredictionStore, fingerprint, write_json_atomic
from flexeval.speed.run_cost import run_cost


@dataclass
class RunConfig:
    bench: str
    model: str
    data_dir: Path | None = None
    out: Path = Path("results")
    limit: int | float | None = None  # N items, or a fraction 0 < x < 1 (run_options.limit_count)
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
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # decompression-bomb guard (benchmarks/base.py)
    max_non_finite: int = DEFAULT_LIMIT  # more NaN/inf items than this stop the run (flexeval/results/nonfinite.py)
    offset: int = 0  # item selection (flexeval/items.py): --offset, --ids, --limit N or a fraction
    ids_file: Path | None = None
    question_style: str = "release"  # benchmarks/question_style.py: lmms-eval's question.capitalize()
    # which implementation serves the checkpoint (model/loading.py load_model), its input recipe, HF processor knobs
    model_kind: str = "auto"  # auto | flexattention | hf
    recipe: str | None = None  # release | native; None: release for LLaVA-1.5 formats, else native
    trust_remote_code: bool = False
    min_pixels: int | None = None
    max_pixels: int | None = None
    image_options: tuple[str, ...] = ()  # "KEY=VALUE" image-processor settings (tiles: max_patches=6, ...)
    peer_timeout: float | None = None  # multi-process: floor of the progress bound (flexeval/coordination.py)


# ---------------------------------------------------------------- model identity

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
        "skipped_per_subset": per_subset(records, "skipped"),
        "non_finite": sum(1 for r in records if r.get("non_finite")),
        "non_finite_per_subset": per_subset(records, "non_finite"),
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 6) if xs else None


@dataclass
class BenchmarkPlan:
    """What one benchmark run covers and where it goes."""

    items: list[Item]
    bench_dir: Path  # <out>/<tag>/<bench>: the shards (every variant's)
    out_dir: Path  # the variant's folder: predictions.jsonl, accuracy.csv, run.json
    config_fp: str
    identity: dict
    where_run: dict  # protocol, split, variant, config fingerprint, data dir, counts, selection (run.json)


def plan_benchmark(bench: Benchmark, model, cfg: RunConfig, data_dir: Path, protocol: str,
                   samples: list[Sample] | None, ids: IdList | None, say: bool = True,
                   work: Answers | None = None) -> BenchmarkPlan:
    """Samples -> the selected items, their requests and keys, the results folders and the config fingerprint."""
    several = several_benchmarks(cfg.bench)
    split = split_for(bench, cfg.split, several=several)
    if samples is None:
        samples = bench.load(data_dir, split=split, protocol=protocol)
    check_samples(bench.name, samples, data_dir)  # no items, or an id twice: an error, not an empty table
    counts = bench.count_report(samples)
    if counts["mismatch"] and say:
        log(count_sentence(bench.name, counts))
    chosen, chosen_items = items_to_run(samples, bench.name, ids, cfg.offset, cfg.limit, 2 if several else 1)
    if cfg.question_style != "release" and not changes_questions(bench.name, cfg.question_style) and say:
        log(f"[{bench.name}] --question-style {cfg.question_style} changes nothing here (benchmarks/question_style.py)")
    work = work or Answers()
    items = build_items(bench, chosen, protocol, cfg.max_new_tokens, cfg.question_style, work)
    identity = model_identity(model)
    config_fp = fingerprint({"benchmark": bench.name, "protocol": protocol, "model": identity,
                             "flexeval_scoring_inputs": 1} | work.settings())
    bench_dir = results_folder(cfg, model, bench) / (work.folder or "")
    # Other protocols, splits and --limit runs get their own folder (flexeval/results/layout.py); shards are shared.
    subset = items_part([s.id for s in chosen], len(samples), first_n=ids is None and not cfg.offset)
    variant = variant_name(bench, protocol, split, subset,
                           generation_override(bench, chosen, protocol, cfg.max_new_tokens, cfg.question_style))
    where_run = {"protocol": protocol, "split": split, "variant": variant, "config_fingerprint": config_fp,
                 "data_dir": data_dir, "counts": counts, "items": chosen_items}
    return BenchmarkPlan(items, bench_dir, results_dir(bench_dir, variant), config_fp, identity, where_run)


def run_benchmark(bench: Benchmark, model, cfg: RunConfig, data_dir: Path, protocol: str,
                  samples: list[Sample] | None = None, ids: IdList | None = None,
                  cluster: Cluster | None = None, work: Answers | None = None) -> dict | None:
    """One benchmark. Every rank runs its cost-balanced share of the pending items (flexeval/distributed.py)
    with the work (default: answer each request); rank 0 alone writes the results and returns run.json
    (the other ranks return None)."""
    t0 = time.time()
    cluster = cluster or Cluster.from_environ(cfg.device)
    work = work or Answers()
    if hasattr(model, "folder"):  # rank 0 reads the checkpoint (and the given samples' images) once, for every work
        share_digests(cluster, files_to_read(model.folder), [samples] if samples else [])
    plan = plan_benchmark(bench, model, cfg, data_dir, protocol, samples, ids, say=cluster.is_main, work=work)
    lock = hold_run_lock(plan.bench_dir, log) if cluster.is_main else None  # a second run on the folder refuses
    if cluster.is_main and (note := replaced_results_note(plan.out_dir, plan.config_fp, plan.identity)):
        log(f"[{bench.name}] {note}")
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    store = PredictionStore(plan.bench_dir, plan.config_fp, rank=cluster.rank, world_size=cluster.world_size)
    keys = [it.key for it in plan.items]
    note_progress(bench.name, plan.bench_dir, store, keys)  # for the line Ctrl-C / a full disk prints
    done = store.completed()
    pending = pending_indices(plan.items, done)
    guard = NonFiniteGuard(model.dtype, cfg.max_non_finite, where=str(plan.bench_dir))
    guard.add(done[k] for k in keys if k in done)  # NaN/inf items of an earlier try count too
    if cluster.is_main:
        log(f"[{bench.name}] {len(keys)} items, {len(keys) - len(pending)} already done, {len(pending)} to run "
            f"-> {plan.out_dir}")
    sizer = BatchSizer(cfg.batch_size, str(model.device))
    share, status = take_share(cluster, plan.bench_dir, plan.config_fp, keys, pending,
                               [it.sample for it in plan.items], [it.request for it in plan.items], sizer.size)
    progress = RankProgress(bench.name, len(share.items), status, cfg.quiet)  # per-rank bar; watches the peers
    try:
        stats = run_items([plan.items[i] for i in share.items], model, store, sizer, cfg,
                          Progress(progress.bar, progress), guard, work)
    finally:
        progress.close()
        store.close()  # the shard's flock goes even when a stop raises (an in-process rerun needs it)
    rank_infos = status.finish(model_s=round(stats.model_seconds, 3))
    if not cluster.is_main:
        return None
    run = finish_benchmark(bench, model, cfg, plan, store, {"t0": t0, "stats": stats, "sizer": sizer,
                                                            "pending": len(pending), "mine": len(share.items),
                                                            "ranks": rank_infos}, work)
    lock.release()
    return run


def finish_benchmark(bench: Benchmark, model, cfg: RunConfig, plan: BenchmarkPlan, store: PredictionStore,
                     ran: dict, work: Answers | None = None) -> dict:
    """Rank 0, once every rank is done: score the records once, predictions.jsonl, accuracy.csv, run.json."""
    where = str(plan.out_dir / "predictions.jsonl")
    records, rows = score_records(bench, store.collect([it.key for it in plan.items]), plan.where_run["protocol"],
                                  where=where)
    store.write_predictions(records, plan.out_dir)
    write_accuracy_csv(plan.out_dir / "accuracy.csv", rows)
    write_coverage_csv(plan.out_dir, records)  # V* with a selecting model: target_coverage.csv
    stats, n_items = ran["stats"], len(plan.items)
    timing = {"wall_s": round(time.time() - ran["t0"], 3), "ran": ran["pending"], "reused": n_items - ran["pending"],
              "model_s": round(stats.model_seconds, 3),
              "samples_per_s": round(ran["mine"] / stats.model_seconds, 4) if stats.model_seconds else None,
              "batch_size_final": ran["sizer"].size, "batches": stats.batches}
    if timing["samples_per_s"]:  # this rank's model time; at GQA's size the number that says how long a run takes
        log(f"[{bench.name}] {ran['mine']} items in {stats.model_seconds:.1f} s of model time: "
            f"{timing['samples_per_s']:.2f} questions/s")
    run = run_summary(bench, model, cfg, plan.where_run, plan.identity, records, rows, timing)
    run["distributed"] = rank_summary(ran["ranks"])  # per rank: items, estimated cost, wall time; finish spread
    run["cost"] = run_cost(model, [it.request for it in plan.items], records, timing)  # counted TFLOP, seconds
    extra = work.finish(plan, records, run) if work is not None else None
    if extra is not None:
        run[work.name] = extra
    write_json_atomic(plan.out_dir / "run.json", run)
    report_run(bench, plan.out_dir, records, rows, run["stats"])
    return run


def run_summary(bench, model, cfg, where_run: dict, identity: dict, records, rows, timing) -> dict:
    """run.json: what ran (model, config, data, environment), how long, and the figures of the records."""
    from flexeval.results.runinfo import data_fingerprint, environment_info

    data_dir, protocol, split = Path(where_run["data_dir"]), where_run["protocol"], where_run["split"]
    return {
        "benchmark": bench.name, "protocol": protocol, "split": split, "variant": where_run["variant"],
        "flexeval_version": __version__, "config_fingerprint": where_run["config_fingerprint"],
        "command": run_command(cfg, getattr(bench, "cli_name", bench.name), data_dir, protocol, split),
        **(bench.run_info() if hasattr(bench, "run_info") else {}),  # file benchmarks: the file, the metric
        "model": {"tag": model_tag(cfg, model), "kind": model_kind(model), "recipe": model.recipe,
                  "source": model.source, "folder": str(Path(model.folder).resolve()),
                  **identity, "device": str(model.device), "architecture": model.cfg.to_dict()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "data": {"dir": str(data_dir.resolve()), "fingerprint": data_fingerprint([data_dir]),
                 "counts": where_run["counts"], "limit": cfg.limit, "evaluated": len(records),
                 "items": where_run["items"]},
        "environment": environment_info(),
        "timing": timing,
        "stats": run_figures(records),
        "accuracy": rows,
        "accuracy_intervals": INTERVAL_METHOD,  # how stderr / ci95_* were computed (flexeval/results/intervals.py)
    }


def model_kind(model) -> str:
    """run.json model.kind: flexattention | llava-1.5 (FlexLlava) or hf:<model_type> (hf_vlm.HFVisionModel)."""
    return getattr(model, "kind", None) or ("flexattention" if model.cfg.has_hd else "llava-1.5")


def report_run(bench: Benchmark, out_dir: Path, records: list[dict], rows: list[dict], stats: dict) -> None:
    skipped = [r for r in records if r.get("skipped")]
    if skipped:
        log(f"[{bench.name}] {len(skipped)} items were not run and count as wrong, e.g. {skipped[0]['id']}: "
            f"{skipped[0]['skipped']} (all are marked 'skipped' in predictions.jsonl)")
    if stats["non_finite"]:
        log(f"[{bench.name}] {stats['non_finite']} items gave NaN/inf outputs and count as wrong, per subset "
            f"{stats['non_finite_per_subset']} (marked 'non_finite' in predictions.jsonl)")
    print(format_rows(rows))
    print(f"accuracy table: {out_dir / 'accuracy.csv'}")


# ---------------------------------------------------------------- entry point

def resolve_protocols(benches: list[Benchmark], protocol: str | None, is_all: bool) -> dict[str, str]:
    """Each benchmark's protocol: the one asked for, or (with --bench all, where a benchmark lacks
    it) the benchmark's default, said on screen."""
    if is_all:
        check_protocol_exists(benches, protocol)  # a typo none of them has is an error, not a default run
    protocols = {}
    for b in benches:
        if protocol and protocol not in b.protocols:
            if not is_all:
                b.check_protocol(protocol)  # raises with the choices
            log(f"[{b.name}] has no protocol '{protocol}'; using its default '{b.protocols[0]}'")
        protocols[b.name] = protocol if protocol in b.protocols else b.protocols[0]
    return protocols


def plan_benchmarks(cfg: RunConfig) -> list[tuple[Benchmark, Path, str]]:
    """(benchmark, data folder, protocol) for each benchmark the run covers; bad names raise."""
    benches = select_benchmarks(cfg.bench)
    dirs = data_folders(cfg.bench, cfg.data_dir, must_exist=True)
    protocols = resolve_protocols(benches, cfg.protocol, several_benchmarks(cfg.bench))
    return [(b, dirs[b.name], protocols[b.name]) for b in benches]


def on_cluster(cfg: RunConfig, body):
    """body(cfg, cluster) in this process's place of a launch (torchrun, accelerate: rank from the
    environment, device cuda:LOCAL_RANK; alone: rank 0 of 1); a failure is reported to the peers,
    which stop. -> (body's result, cluster)."""
    cluster = Cluster.from_environ(cfg.device, cfg.peer_timeout)
    cfg = replace(cfg, device=cluster.device, workers=cluster.default_workers(cfg.workers))
    try:
        return body(cfg, cluster), cluster
    except BaseException as e:
        cluster.report_failure(e)  # the peers see "failed" and this error, and stop
        raise
    finally:
        cluster.close()


def run_benchmarks(cfg: RunConfig) -> list[dict]:
    from flexeval.model import RunOptions, load_model

    check_run_options(cfg)
    cfg = replace(cfg, dtype=canonical_dtype(cfg.dtype))  # bf16 and bfloat16: one folder
    check_question_style(cfg.question_style)
    if cfg.tag:
        check_tag(cfg.tag)  # before the model loads: a tag like ../../x would write outside --out
    plan = plan_benchmarks(cfg)
    options = RunOptions(selection=cfg.selection, threshold=cfg.threshold, first_hd_layer=cfg.first_layer,
                         zoom=cfg.zoom, seed=effective_seed(cfg))
    # Everything a typo can break is checked before the model loads (flexeval/checks.py).
    plugin = model_plugin(cfg.model_kind)  # --model-kind NAME of a `flexeval.models` plugin
    if plugin is None:
        check_model_options(cfg.model, options, cfg.model_kind, cfg.recipe)
    several = several_benchmarks(cfg.bench)
    ids = read_id_file(cfg.ids_file, [b.name for b, _, _ in plan])
    if cfg.split and several:
        log(f"--split {cfg.split} applies to {', '.join(b.name for b, _, _ in plan if b.splits) or 'no benchmark'}")
    samples = {b.name: load_samples(b, data_dir, split_for(b, cfg.split, several),
                                    explicit_dir=cfg.data_dir is not None and not several, protocol=protocol)
               for b, data_dir, protocol in plan}
    torch.manual_seed(cfg.seed)

    def body(cfg: RunConfig, cluster: Cluster) -> list:
        if cluster.is_main:
            log(f"loading {cfg.model} ...")
        model = load_plugin_model(plugin, cfg.model, cfg.device, cfg.dtype) if plugin else load_model(
                           cfg.model, dtype=cfg.dtype, device=cfg.device, options=options, model_kind=cfg.model_kind,
                           recipe=cfg.recipe, trust_remote_code=cfg.trust_remote_code, min_pixels=cfg.min_pixels,
                           max_pixels=cfg.max_pixels, image_options=cfg.image_options)
        if cluster.is_main:
            log(f"model: {model_kind(model)} ({model.cfg.format}), recipe {model.recipe}")
        return [run_benchmark(b, model, cfg, data_dir, protocol, samples[b.name], ids, cluster)
                for b, data_dir, protocol in plan]

    runs, cluster = on_cluster(cfg, body)
    if not cluster.is_main:
        return []
    check_unprefixed_ids_found(ids, [r["data"]["items"] for r in runs])
    if several:
        print(write_report(Path(cfg.out)))
        print(f"summary: {Path(cfg.out) / 'summary.csv'} and {Path(cfg.out) / 'summary.md'}")
    else:
        print(f"every result under {cfg.out} side by side: flexeval report {cfg.out}")
    return runs
