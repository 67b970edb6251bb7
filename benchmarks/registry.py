"""Benchmark names (and aliases) -> adapter instances; `all` -> every benchmark with its data folder."""

from __future__ import annotations

from pathlib import Path

from flexeval.errors import FlexEvalError

from .base import Benchmark
from .gqa import GQA
from .hrbench import HRBench
from .magnifierbench import MagnifierBench
from .mcq_file import McqFile
from .rsvqa import RSVQAHRBEN
from .textvqa import TextVQA
from .vqa_file import VqaFile
from .vstar import VStar

ALL = "all"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (VStar(), MagnifierBench(), TextVQA(), RSVQAHRBEN(), GQA(),
                                                        HRBench("4k"), HRBench("8k"))}
# Named benchmarks beyond the paper's tables: in `flexeval list`, not in `all` (benchmarks/hrbench.py).
EXTRA = ["hrbench_4k", "hrbench_8k"]
# `--bench path/to/file.<suffix>`: a benchmark read from that file (benchmarks/mcq_file.py, vqa_file.py).
FILE_KINDS = {".tsv": McqFile, ".jsonl": VqaFile}
# The accuracy benchmarks of the paper's tables, in their order (`all`, the report). GQA is for the
# attention-map analysis only (`flexeval grounding`), so it is registered but not among them.
ORDER = ["vstar", "magnifierbench", "textvqa", "rsvqa_hrben"]


def list_benchmarks() -> list[Benchmark]:
    """Every accuracy benchmark, in the order of the paper's tables (GQA, analysis only, is not one)."""
    return [BENCHMARKS[n] for n in ORDER]


def get_benchmark(name: str) -> Benchmark:
    """A built-in benchmark by name or alias, a file benchmark by path (.tsv, .jsonl), or a plugin's."""
    key = name.strip().lower().replace("-", "_")
    for b in BENCHMARKS.values():
        if key == b.name or key in b.aliases:
            return b
    if Path(name.strip()).suffix.lower() in FILE_KINDS:
        return file_benchmark(Path(name.strip()), must_exist=True)
    from flexeval.plugins import BENCHMARK_GROUP, find_plugin, plugin_benchmark

    plugin = find_plugin(BENCHMARK_GROUP, name)
    if plugin is not None:
        return plugin_benchmark(plugin)
    known = ", ".join(BENCHMARKS)
    raise FlexEvalError(f"unknown benchmark '{name}'; choose one of: {known} (or '{ALL}'), a benchmark plugin "
                        f"(`flexeval list`), or the path of a .tsv (multiple choice) or .jsonl (VQA) file")


def file_benchmark(path: Path, must_exist: bool = True) -> Benchmark:
    """The benchmark a file defines; its results folder is the file's stem (a built-in's name gets `-file`)."""
    kind = FILE_KINDS.get(Path(path).suffix.lower())
    if kind is None:
        raise FlexEvalError(f"{path}: a file benchmark is a .tsv (VLMEvalKit MCQ layout) or a .jsonl (VQA) file")
    if must_exist and not Path(path).is_file():
        raise FlexEvalError(f"--bench {path}: no such file; give the path of a .tsv or .jsonl benchmark file")
    bench = kind(Path(path))
    if bench.name.lower() in BENCHMARKS:
        bench.name += "-file"  # never the results folder of the built-in benchmark of that name
    return bench


def benchmark_for_run(run: dict, folder_name: str) -> Benchmark:
    """The benchmark of a results folder: run.json's `benchmark_file` (file benchmarks, found again even
    if the file has moved: scoring needs only the records), else its `benchmark` name, else the folder."""
    if run.get("benchmark_file"):
        bench = file_benchmark(Path(run["benchmark_file"]), must_exist=False)
        bench.name = run.get("benchmark") or bench.name
        return bench
    return get_benchmark(run.get("benchmark") or folder_name)


def extra_benchmarks() -> list[tuple[Benchmark, str]]:
    """(benchmark, where it comes from) for the named benchmarks outside `all`, then the plugins'."""
    from flexeval.plugins import BENCHMARK_GROUP, plugin_benchmark, plugins

    found = [(BENCHMARKS[n], f"built-in ({type(BENCHMARKS[n]).__module__})") for n in EXTRA]
    for p in plugins(BENCHMARK_GROUP):
        try:
            found.append((plugin_benchmark(p), p.source))
        except FlexEvalError as e:
            found.append((Benchmark(), f"{p.name}: {e}"))
    return found


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
    if any(getattr(b, "reads_own_file", False) for b in benches):  # `--bench path/to/file.tsv[,...]`
        several, root = len(benches) > 1, Path(data_dir or "data")
        return {b.name: b.path if getattr(b, "reads_own_file", False) else
                root / b.name if several else Path(data_dir) if data_dir else root / b.name for b in benches}
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
