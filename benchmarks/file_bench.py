"""What the benchmarks read from one local file (`--bench path/to/file.tsv|jsonl`) share: the
results folder named after the file, `--bench` given again as its path, nothing to fetch or make."""

from __future__ import annotations

import re
from pathlib import Path

from flexeval.errors import FlexEvalError

from .base import Benchmark


def file_bench_name(path: Path) -> str:
    """The results folder of a file benchmark: the file's stem as a plain folder name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).stem).strip(".-") or "file"
    return name


class FileBenchmark(Benchmark):
    """A benchmark that is one local file: results under <out>/<tag>/<file stem>/."""

    reads_own_file = True  # --data-dir plays no part: the benchmark is the file

    def __init__(self, path: Path | str, name: str | None = None):
        self.path = Path(path)
        self.name = name or file_bench_name(self.path)

    @property
    def cli_name(self) -> str:
        """What `--bench` takes to run it again (run.json `command`): the file's path."""
        return str(self.path.resolve())

    def fetch(self, out_dir: Path) -> Path:
        raise FlexEvalError(f"{self.path} is a local file benchmark: nothing to fetch")

    def make_sample(self, out_dir: Path, n: int = 6, seed: int = 0) -> Path:
        raise FlexEvalError(f"{self.path} is a local file benchmark: it is its own data (make-sample writes the "
                            f"named benchmarks' layouts, e.g. --bench hrbench_4k)")
