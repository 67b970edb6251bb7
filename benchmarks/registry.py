"""Benchmark names (and aliases) -> adapter instances; `all` -> every benchmark with its data folder."""

from __future__ import annotations

from pathlib import Path

from flexeval.errors import FlexEvalError

from .base import Benchmark
from .gqa import GQA
from .magnifierbench import MagnifierBench
from .rsvqa import RSVQAHRBEN
from .textvqa import TextVQA
from .vstar import VStar

ALL = "all"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (VStar(), MagnifierBench(), TextVQA(), RSVQAHRBEN(), GQA())}
# The accuracy benchmarks of the paper's tables, in their order (`all`, the report). GQA is for the
# attention-map analysis only (`flexeval grounding`), so it is registered but not among them.
ORDER = ["vstar", "magnifierbench", "textvqa", "rsvqa_hrben"]


def list_benchmarks() -> list[Benchmark]:
    """Every accuracy benchmark, in the order of the paper's tables (GQA, analysis only, is not one)."""
    return [BENCHMARKS[n] for n in ORDER]


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower().replace("-", "_")
    for b in BENCHMARKS.values():
        if key == b.name or key in b.aliases:
            return b
    known = ", ".join(BENCHMARKS)
    raise FlexEvalError(f"unknown benchmark '{name}'; choose one of: {known} (or '{ALL}')")


def select_benchmarks(name: str) -> list[Benchmark]:
    """`name`, `all`, or a comma-separated list (`vstar,textvqa`; `all` in it means every one) -> the
    benchmarks it means, each once, in the order given."""
    parts = [p.strip() for p in str(name).split(",")]
    if any(not p for p in parts):
        raise FlexEvalError(f"--bench {name!r} has an empty name; write e.g. --bench vstar,textvqa")
    if ALL in parts:
        return list_benchmarks()
    found: list[Benchmark] = []
    for p in parts:
        b = get_benchmark(p)  # raises with the choices
        if b not in found:
            found.append(b)
    return found


def several_benchmarks(name: str) -> bool:
    """Whether `--bench name` means more than one benchmark (then --data-dir is a root of folders)."""
    return len(select_benchmarks(name)) > 1 or name.strip() == ALL


def data_folders(name: str, data_dir: Path | None, must_exist: bool = False) -> dict[str, Path]:
    """Where each selected benchmark's data lives: several (`all`, a list) -> one folder per benchmark
    under `data_dir` (default data/); one benchmark -> `data_dir` itself (default data/<name>)."""
    benches = select_benchmarks(name)
    if not several_benchmarks(name):
        return {benches[0].name: Path(data_dir) if data_dir else Path("data") / benches[0].name}
    root = Path(data_dir or "data")
    dirs = {b.name: root / b.name for b in benches}
    missing = [str(d) for d in dirs.values() if not d.exists()]
    if must_exist and missing:
        raise FlexEvalError(f"--bench {name} expects one folder per benchmark under {root}; missing: "
                            f"{', '.join(missing)} (`flexeval data make-sample --bench all --out {root}` "
                            "writes sample data; `flexeval data fetch --bench all` the real data)")
    return dirs
