"""`flexeval model ...` and `flexeval data ...`: the tiny models and the benchmark data (generated
samples in the release layouts, the real downloads). Registered on the one error path like every
command (flexeval/cli_common.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexeval.checks import check_at_least, check_writable
from flexeval.cli_common import FlexEvalTyper

model_app = FlexEvalTyper(no_args_is_help=True, help="Build and inspect models.")
data_app = FlexEvalTyper(no_args_is_help=True, help="Benchmark data: generated samples and real downloads.")


@model_app.command("make-tiny")
def make_tiny(out: Path = typer.Option(..., "--out"), seed: int = typer.Option(0, "--seed"),
              fmt: str = typer.Option("release", "--format", help="release | llava | llava-hf; transformers "
                                      "checkpoints with processor and chat template: hf-llava | hf-llava-next | hf-qwen2-vl")) -> None:
    """Write a tiny random FlexAttention LLaVA in the release format (for tests and the demo)."""
    from flexeval.model.tiny import make_tiny_model
    from flexeval.model.tiny_hf import make_tiny_hf_model

    check_writable(out)
    if fmt.startswith("hf-"):
        path = make_tiny_hf_model(out, family={"hf-llava": "llava-hf"}.get(fmt, fmt[3:]), seed=seed)
    else:
        path = make_tiny_model(out, seed=seed, fmt=fmt)
    typer.echo(f"tiny model written to {path}")


@data_app.command("make-sample")
def make_sample(bench: str = typer.Option(..., "--bench", "-b", help="a benchmark or 'all'"),
                out: Path = typer.Option(..., "--out"),
                n: int = typer.Option(6, "--n", help="items per subset"),
                seed: int = typer.Option(0, "--seed")) -> None:
    """Generate sample items in the benchmark's exact release layout."""
    from flexeval.benchmarks import data_folders, get_benchmark

    check_at_least(n, "--n") or check_writable(out)
    for name, dest in data_folders(bench, out).items():
        get_benchmark(name).make_sample(dest, n=n, seed=seed)
        typer.echo(f"{name}: sample data in {dest}")


@data_app.command("fetch")
def fetch(bench: str = typer.Option(..., "--bench", "-b"),
          out: Optional[Path] = typer.Option(None, "--out", help="default: data/<benchmark>")) -> None:
    """Download the real release files (needs a network)."""
    from flexeval.benchmarks import data_folders, get_benchmark

    for name, dest in data_folders(bench, out).items():
        typer.echo(f"{name}: {get_benchmark(name).fetch(dest)}")
