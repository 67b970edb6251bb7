"""The `flexeval` command line (typer). Every user-facing error is a FlexEvalError: printed, exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from flexeval.errors import FlexEvalError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Evaluate FlexAttention / LLaVA-1.5 models on high-resolution VQA benchmarks.")
model_app = typer.Typer(no_args_is_help=True, help="Build and inspect models.")
data_app = typer.Typer(no_args_is_help=True, help="Benchmark data: generated samples and real downloads.")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")

DEFAULT_MODEL = "senfu/llava-v1.5-7b-flexattn"


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def run(
    bench: str = typer.Option(..., "--bench", "-b", help="vstar | magnifierbench | textvqa | rsvqa_hrben | all"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="checkpoint folder or hub id"),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", "-d", help="benchmark folder (with --bench all: a root holding one folder per benchmark)"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="results root"),
    limit: Optional[int] = typer.Option(None, "--limit", help="only the first N items (a quick look)"),
    batch_size: str = typer.Option("auto", "--batch-size", help="N or 'auto' (largest that fits; backs off on OOM)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="paper (default) | official | ... per benchmark"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | float16 | bfloat16 | float32"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    selection: Optional[str] = typer.Option(None, "--selection", help="attention | random | center | all | none (default: attention; none for plain LLaVA-1.5)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="selection threshold out of 255 (release: 48)"),
    first_layer: Optional[int] = typer.Option(None, "--first-layer", help="first layer that uses high-res keys (release: 9)"),
    zoom: Optional[int] = typer.Option(None, "--zoom", help="zoom ratio 2|3|4 -> 672/1008/1344 px high-res view"),
    split: Optional[str] = typer.Option(None, "--split", help="RSVQA-HRBEN split: test_phili (default) | test"),
    workers: Optional[int] = typer.Option(None, "--workers", help="image decoding worker processes (default: cores - 1, at most 8)"),
    tag: Optional[str] = typer.Option(None, "--tag", help="model tag used as the results folder name"),
    seed: int = typer.Option(0, "--seed", help="seed for the random selection ablation"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars, log lines only"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="override the benchmark's generation length"),
) -> None:
    """Evaluate a model on a benchmark; writes predictions.jsonl, accuracy.csv and run.json."""
    from flexeval.runner import RunConfig, run_benchmarks

    try:
        cfg = RunConfig(bench=bench, model=model, data_dir=data_dir, out=out, limit=limit,
                        batch_size=batch_size, protocol=protocol, dtype=dtype, device=device,
                        selection=selection, threshold=threshold, first_layer=first_layer, zoom=zoom,
                        split=split, workers=workers, tag=tag, seed=seed, quiet=quiet,
                        max_new_tokens=max_new_tokens)
        run_benchmarks(cfg)
    except FlexEvalError as e:
        _fail(e)


@app.command("list")
def list_cmd(data_root: Path = typer.Option(Path("data"), "--data-dir", "-d", help="root holding one folder per benchmark")) -> None:
    """Each benchmark, where its data is expected, whether it is there, and how many items it has."""
    from flexeval.tables import list_benchmarks_table

    try:
        typer.echo(list_benchmarks_table(data_root))
    except FlexEvalError as e:
        _fail(e)


@app.command()
def rescore(path: Path = typer.Argument(..., help="a benchmark results folder, or a folder above several")) -> None:
    """Recompute accuracy.csv from predictions.jsonl alone (no model)."""
    from flexeval.tables import rescore_tree

    try:
        for p in rescore_tree(path):
            typer.echo(f"rescored {p}")
    except FlexEvalError as e:
        _fail(e)


@app.command()
def report(results_dir: Path = typer.Argument(Path("results"), help="results root")) -> None:
    """Print and regenerate summary.csv and summary.md (paper numbers as reference rows)."""
    from flexeval.tables import write_report

    try:
        typer.echo(write_report(results_dir))
    except FlexEvalError as e:
        _fail(e)


@app.command()
def inspect(
    model: str = typer.Option(..., "--model", "-m"),
    image: Path = typer.Option(..., "--image"),
    prompt: str = typer.Option(..., "--prompt"),
    options: Optional[str] = typer.Option(None, "--options", help='"a|b|..." scored by mean NLL (likelihood mode)'),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    dump_logits: Optional[Path] = typer.Option(None, "--dump-logits", help="safetensors file for prefill logits"),
    raw: bool = typer.Option(False, "--raw", help="use the prompt as is (no conversation template)"),
    selection: Optional[str] = typer.Option(None, "--selection", help="attention | random | center | all | none"),
) -> None:
    """A window into one sample: generated tokens, selections per layer, option NLLs, logits."""
    from flexeval.model.inspect import inspect_sample

    try:
        result = inspect_sample(model=model, image=image, prompt=prompt,
                                options=options.split("|") if options else None,
                                max_new_tokens=max_new_tokens, dtype=dtype, device=device,
                                dump_logits=dump_logits, raw=raw, selection=selection)
    except FlexEvalError as e:
        _fail(e)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for k, v in result.items():
            typer.echo(f"{k}: {v}")


@model_app.command("make-tiny")
def make_tiny(out: Path = typer.Option(..., "--out"), seed: int = typer.Option(0, "--seed"),
              fmt: str = typer.Option("release", "--format", help="release | llava | llava-hf")) -> None:
    """Write a tiny random FlexAttention LLaVA in the release format (for tests and the demo)."""
    from flexeval.model.tiny import make_tiny_model

    try:
        path = make_tiny_model(out, seed=seed, fmt=fmt)
    except FlexEvalError as e:
        _fail(e)
    typer.echo(f"tiny model written to {path}")


@app.command()
def bench(
    arch: str = typer.Option("llava-1.5-7b", "--arch", help="llava-1.5-7b | tiny: that shape with random weights"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a real checkpoint instead of --arch"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | float16 | bfloat16 | float32"),
    out: Path = typer.Option(Path("results/bench"), "--out", "-o", help="folder for bench.csv, bench.json, e2e data"),
    new_tokens: int = typer.Option(8, "--new-tokens", help="generated tokens per sample (TextVQA-like)"),
    repeat: Optional[int] = typer.Option(None, "--repeat", help="timed calls per figure (default: 3 on CUDA, 1 on CPU)"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="batch search cap (default: 64 on CUDA, 4 on CPU)"),
    stage_batch: int = typer.Option(16, "--stage-batch", help="batch of the stage rows (capped by --max-batch)"),
    e2e_items: int = typer.Option(256, "--e2e-items", help="items of the end-to-end run (half V*-like, half TextVQA-like; 0: skip)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="end-to-end data workers (default: the runner's)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU intra-op threads (default: torch's)"),
    profile: bool = typer.Option(False, "--profile", help="also write torch.profiler tables of the best-batch calls"),
) -> None:
    """Benchmark the fast path: ms/sample, TFLOP/s, ratios vs the reference / none / all, stages, end to end."""
    from flexeval.bench import BenchConfig, main

    try:
        main(BenchConfig(arch=arch, model=model, device=device, dtype=dtype, out=out, new_tokens=new_tokens,
                         repeat=repeat, max_batch=max_batch, stage_batch=stage_batch, e2e_items=e2e_items,
                         workers=workers, threads=threads, profile=profile))
    except FlexEvalError as e:
        _fail(e)


@data_app.command("make-sample")
def make_sample(bench: str = typer.Option(..., "--bench", "-b", help="a benchmark or 'all'"),
                out: Path = typer.Option(..., "--out"),
                n: int = typer.Option(6, "--n", help="items per subset"),
                seed: int = typer.Option(0, "--seed")) -> None:
    """Generate sample items in the benchmark's exact release layout."""
    from flexeval.benchmarks import get_benchmark, list_benchmarks

    try:
        if bench == "all":
            for b in list_benchmarks():
                b.make_sample(out / b.name, n=n, seed=seed)
                typer.echo(f"{b.name}: sample data in {out / b.name}")
        else:
            b = get_benchmark(bench)
            b.make_sample(out, n=n, seed=seed)
            typer.echo(f"{b.name}: sample data in {out}")
    except FlexEvalError as e:
        _fail(e)


@data_app.command("fetch")
def fetch(bench: str = typer.Option(..., "--bench", "-b"),
          out: Optional[Path] = typer.Option(None, "--out", help="default: data/<benchmark>")) -> None:
    """Download the real release files (needs a network)."""
    from flexeval.benchmarks import get_benchmark, list_benchmarks

    try:
        targets = list_benchmarks() if bench == "all" else [get_benchmark(bench)]
        for b in targets:
            dest = (out / b.name if bench == "all" else out) if out else Path("data") / b.name
            typer.echo(f"{b.name}: {b.fetch(dest)}")
    except FlexEvalError as e:
        _fail(e)


def main() -> None:  # pragma: no cover
    sys.exit(app())
