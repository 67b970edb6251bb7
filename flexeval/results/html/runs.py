"""What the HTML report reads: the run folders under a results root, their records and images."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from flexeval.errors import FlexEvalError
from flexeval.results.accuracy import read_accuracy_csv
from flexeval.results.layout import benchmark_folder, is_variant_folder
from flexeval.results.scoring import read_run_json


@dataclass
class Run:
    """One results folder (`<tag>/<bench>` or `<tag>/<bench>/<variant>`)."""

    folder: Path
    label: str  # "<tag> [<variant>]"
    bench: str
    slug: str  # its folder name inside report/runs/
    run: dict
    accuracy: list[dict]
    records: list[dict] = field(default_factory=list)

    @property
    def selection(self) -> str | None:
        return ((self.run.get("model") or {}).get("options") or {}).get("selection")

    @property
    def protocol(self) -> str | None:
        return self.run.get("protocol")


def slug_of(rel: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", "__".join(rel.parts))


def find_runs(results_dir: Path) -> list[Run]:
    """Every `<tag>/<bench>[/<variant>]` folder holding accuracy.csv and predictions.jsonl, sorted."""
    results_dir = Path(results_dir)
    paths = sorted(results_dir.glob("*/*/predictions.jsonl")) + sorted(
        p for p in results_dir.glob("*/*/*/predictions.jsonl") if is_variant_folder(p.parent.name))
    runs = []
    for p in paths:
        folder = p.parent
        if not (folder / "accuracy.csv").is_file():
            continue
        bench_dir = benchmark_folder(folder)
        variant = "" if bench_dir == folder else f" [{folder.name}]"
        runs.append(Run(folder, f"{bench_dir.parent.name}{variant}", bench_dir.name,
                        slug_of(folder.relative_to(results_dir)), read_run_json(folder),
                        read_accuracy_csv(folder / "accuracy.csv")))
    return runs


def read_records(run: Run) -> list[dict]:
    path = run.folder / "predictions.jsonl"
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise FlexEvalError(f"{path}: line {n} is not JSON ({e}); rebuild it with `flexeval rescore` "
                                    f"or rerun the run.json command") from e
    return records


def image_sources(run: Run) -> tuple[dict, str | None]:
    """id -> the item's image (path, bytes or parquet reference) from the run's data folder (run.json
    data.dir), and None; or {} and why the images are not shown."""
    from flexeval.benchmarks import get_benchmark

    data_dir = (run.run.get("data") or {}).get("dir")
    if not data_dir or not Path(data_dir).is_dir():
        return {}, f"data folder {data_dir or '(not in run.json)'} not found: no images"
    try:
        samples = get_benchmark(run.bench).load(Path(data_dir), split=run.run.get("split"), protocol=run.protocol)
    except (FlexEvalError, TypeError, KeyError, OSError) as e:
        return {}, f"data in {data_dir} did not load ({str(e)[:120]}): no images"
    return {s.id: s.image for s in samples}, None


def flips(a: list[dict], b: list[dict]) -> set[str]:
    """Ids scored correct in one run and wrong in the other (the items both runs hold)."""
    sb = {r["id"]: _correct(r) for r in b}
    return {r["id"] for r in a if r["id"] in sb and _correct(r) != sb[r["id"]]}


def _correct(record: dict) -> bool:
    return float(record.get("score") or 0.0) == 1.0


def attention_picture(run: Run, item_id: str) -> Path | None:
    """`flexeval attention --bench` writes <tag>/<bench>/attention/<id with / as _>.png."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id) + ".png"
    path = benchmark_folder(run.folder) / "attention" / name
    return path if path.is_file() else None
