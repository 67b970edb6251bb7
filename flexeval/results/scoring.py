"""Scoring: records -> scored records and accuracy rows (once per run), and rescoring a results
folder from predictions.jsonl alone, without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from flexeval.errors import FlexEvalError
from flexeval.results.accuracy import format_rows, write_accuracy_csv
from flexeval.results.intervals import add_intervals
from flexeval.results.layout import benchmark_folder
from flexeval.results.nonfinite import score_record
from flexeval.results.readonly import tables_written_in
from flexeval.results.store import PREDICTIONS, read_records


def score_records(benchmark, records: list[dict], protocol: str | None,
                  where: str = "predictions") -> tuple[list[dict], list[dict]]:
    """Score each record (benchmark.score's fields merged into a copy) and build the table rows,
    each with its standard error and seeded bootstrap interval (flexeval/results/intervals.py)."""
    protocol = benchmark.check_protocol(protocol)
    scored = []
    for rec in records:
        try:
            scored.append({**rec, **score_record(benchmark, rec, protocol)})  # a non_finite item scores 0
        except (KeyError, TypeError, IndexError) as e:
            raise FlexEvalError(
                f"{where}: record {rec.get('key', rec.get('id'))!r} cannot be scored by {benchmark.name} "
                f"({type(e).__name__}: {e}); the record lacks a field the scorer needs — rerun the benchmark"
            ) from e
    # issue 15: intervals over items for every row (stats.py; benchmark.row_scores says which items)
    rows = add_intervals(benchmark.table(scored, protocol), benchmark.row_scores(scored, protocol))
    return scored, rows


def read_run_json(bench_dir: Path) -> dict:
    path = bench_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FlexEvalError(f"{path} is not valid JSON ({e}); fix or delete it") from e
    if not isinstance(run, dict):
        raise FlexEvalError(f"{path}: expected a JSON object; fix or delete it")
    return run


def rescore_dir(bench_dir: Path) -> list[dict]:
    """Recompute accuracy.csv from predictions.jsonl (predictions.jsonl itself is left as is).

    The benchmark and protocol come from run.json; without it, the folder name and the
    benchmark's default protocol.
    """
    bench_dir = Path(bench_dir)
    _, _, _, rows = scored_dir(bench_dir)
    with tables_written_in(bench_dir, "rescore"):  # a read-only folder: one line, a fix that works
        write_accuracy_csv(bench_dir / "accuracy.csv", rows)
    return rows


def check_record_count(pred_path: Path, records: list[dict], run: dict) -> None:
    """predictions.jsonl is written whole (atomically), so a cut last line or fewer records than
    run.json's count means the file was damaged or edited: rescoring it would give another number."""
    pred_path = Path(pred_path)
    data = pred_path.read_bytes()
    expected = (run.get("data") or {}).get("evaluated") if isinstance(run.get("data"), dict) else None
    torn = bool(data) and not data.endswith(b"\n")
    if not torn and (expected is None or expected == len(records)):
        return
    command = run.get("command")
    fix = (f"rebuild it from the shards with `{command}` (finished predictions are reused), then rescore"
           if command else "rebuild it by running the `flexeval run` command that wrote it again (its options "
           "are in run.json 'config'; finished predictions are reused from shards/), then rescore")
    found = f"{len(records)} complete records" + (" and a cut last line" if torn else "")
    said = f" but {pred_path.parent / 'run.json'} says the run evaluated {expected}" if expected is not None else ""
    raise FlexEvalError(f"{pred_path} holds {found}{said}; the file was damaged or edited: {fix}")


def scored_dir(bench_dir: Path):
    """(benchmark, protocol, scored records, rows) of a results folder, from predictions.jsonl alone;
    the benchmark and protocol from run.json, else the folder name and the default protocol."""
    from flexeval.benchmarks.registry import benchmark_for_run

    run = read_run_json(Path(bench_dir))
    benchmark = benchmark_for_run(run, benchmark_folder(Path(bench_dir)).name)
    protocol = benchmark.check_protocol(run.get("protocol"))
    pred_path = Path(bench_dir) / PREDICTIONS
    records = read_records(pred_path)
    check_record_count(pred_path, records, run)
    scored, rows = score_records(benchmark, records, protocol, where=str(pred_path))
    return benchmark, protocol, scored, rows


def rescore_tree(path: Path, echo: Callable[[str], None] | None = print) -> list[Path]:
    """Rescore `path` if it holds predictions.jsonl, else every folder below it that does.

    Returns the accuracy.csv files written; `echo` receives each folder's table.
    """
    path = Path(path)
    if not path.exists():
        raise FlexEvalError(f"{path} does not exist; give a results folder (e.g. results/<tag>/<bench>)")
    # The folder itself and every folder below it: a benchmark folder holds its variants (flexeval/results/layout.py).
    dirs = sorted({p.parent for p in path.rglob(PREDICTIONS) if p.is_file()})
    if not dirs:
        raise FlexEvalError(
            f"no {PREDICTIONS} in or below {path}; run `flexeval run --bench ... --out {path}` first "
            f"(an interrupted run resumes from its shards/ when run again)"
        )
    written = []
    for d in dirs:
        rows = rescore_dir(d)
        if echo is not None:
            echo(f"{d}:\n{format_rows(rows)}")
        written.append(d / "accuracy.csv")
    return written


