"""Scores to tables: accuracy.csv per run, rescoring without a model, the cross-model report,
and the `flexeval list` overview of the data folders.

Files read and written (per `<results>/<model-tag>/<bench>/` and its variant folders, flexeval/layout.py):
  predictions.jsonl  the raw records (never rewritten here)
  run.json           read for "benchmark", "protocol" and model.kind ("flexattention" | "llava-1.5")
  accuracy.csv       benchmark,subset,n,correct,accuracy,stderr,ci95_low,ci95_high (percent; the last
                     three from flexeval/stats.py; files with only the first five still read)
and `<results>/summary.csv`, `<results>/summary.md` for the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Callable

from flexeval.errors import FlexEvalError
from flexeval.layout import benchmark_folder, is_variant_folder
from flexeval.nonfinite import score_record
from flexeval.stats import add_intervals
from flexeval.store import PREDICTIONS, read_records, write_text_atomic

LEGACY_ACCURACY_COLUMNS = ["benchmark", "subset", "n", "correct", "accuracy"]  # before intervals
INTERVAL_COLUMNS = ["stderr", "ci95_low", "ci95_high"]  # flexeval/stats.py; percent
ACCURACY_COLUMNS = [*LEGACY_ACCURACY_COLUMNS, *INTERVAL_COLUMNS]
SUMMARY_COLUMNS = ["model", *ACCURACY_COLUMNS]
DASH = "–"  # a missing cell

# The report's columns: (header, benchmark, accuracy.csv subset).
REPORT_COLUMNS = [
    ("V* attribute", "vstar", "direct_attributes"),
    ("V* spatial", "vstar", "relative_position"),
    ("V* overall", "vstar", "overall"),
    ("MagnifierBench", "magnifierbench", "overall"),
    ("TextVQA", "textvqa", "overall"),
    ("RSVQA presence", "rsvqa_hrben", "presence"),
    ("RSVQA comparison", "rsvqa_hrben", "comparison"),
    ("RSVQA average", "rsvqa_hrben", "average"),
]

# Published numbers (FlexAttention paper, Table 1), keyed like REPORT_COLUMNS; value, derived?
# V* attribute is not printed: it follows from overall and spatial counts, e.g. for LLaVA-1.5
# 47.6% of 191 = 91 right, 56.6% of 76 = 43 right, so attribute = 48/115 = 41.7.
PAPER_ROWS = {
    "llava-1.5": ("paper: LLaVA-1.5-7B", {
        ("vstar", "direct_attributes"): (100 * 48 / 115, True),
        ("vstar", "relative_position"): (56.6, False),
        ("vstar", "overall"): (47.6, False),
        ("magnifierbench", "overall"): (26.8, False),
        ("textvqa", "overall"): (46.0, False),
        ("rsvqa_hrben", "average"): (68.4, False),
    }),
    "flexattention": ("paper: FlexAttention-7B", {
        ("vstar", "direct_attributes"): (100 * 55 / 115, True),
        ("vstar", "relative_position"): (64.5, False),
        ("vstar", "overall"): (54.5, False),
        ("magnifierbench", "overall"): (35.0, False),
        ("textvqa", "overall"): (48.9, False),
        ("rsvqa_hrben", "average"): (72.7, False),
    }),
}


# -- accuracy.csv ----------------------------------------------------------------------------------

def _fmt_number(x: float, decimals: int = 4) -> str:
    """Integers as integers; other values with up to `decimals` decimals; NaN (no items) as 'nan'."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if x == int(x):
        return str(int(x))
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".")


def _fmt_percent(x: float | None) -> str:
    """A percent cell: 4 decimals; NaN or None (not computed, e.g. an old accuracy.csv) as 'nan'."""
    return "nan" if x is None or math.isnan(float(x)) else f"{float(x):.4f}"


def _row_cells(r: dict) -> list:
    return [r["benchmark"], r["subset"], int(r["n"]), _fmt_number(r["correct"]), _fmt_percent(r["accuracy"]),
            *(_fmt_percent(r.get(c)) for c in INTERVAL_COLUMNS)]


def accuracy_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ACCURACY_COLUMNS)
    for r in rows:
        w.writerow(_row_cells(r))
    return buf.getvalue()


def write_accuracy_csv(path: Path, rows: list[dict]) -> None:
    """accuracy.csv, atomically; accuracy in percent with 4 decimals."""
    write_text_atomic(Path(path), accuracy_csv_text(rows))


def read_accuracy_csv(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames not in (ACCURACY_COLUMNS, LEGACY_ACCURACY_COLUMNS):
                raise FlexEvalError(
                    f"{path}: columns are {reader.fieldnames}, expected {','.join(ACCURACY_COLUMNS)} "
                    f"(or the older {','.join(LEGACY_ACCURACY_COLUMNS)}); "
                    f"regenerate it with `flexeval rescore {Path(path).parent}`"
                )
            rows = []
            for i, r in enumerate(reader, start=2):
                try:
                    # An older file has no intervals: NaN, shown as a dash in the report.
                    rows.append({"benchmark": r["benchmark"], "subset": r["subset"], "n": int(r["n"]),
                                 "correct": float(r["correct"]), "accuracy": float(r["accuracy"]),
                                 **{c: float(r.get(c) or "nan") for c in INTERVAL_COLUMNS}})
                except (TypeError, ValueError) as e:
                    raise FlexEvalError(f"{path}: line {i} has a non-numeric n/correct/accuracy ({e}); "
                                        f"regenerate it with `flexeval rescore {Path(path).parent}`") from e
            return rows
    except FileNotFoundError as e:
        raise FlexEvalError(f"missing file {path}") from e


def format_rows(rows: list[dict]) -> str:
    """accuracy rows as an aligned text table (for the terminal)."""
    def pct(x):
        return DASH if x is None or math.isnan(float(x)) else f"{float(x):.2f}"

    body = [[r["benchmark"], r["subset"], str(r["n"]), _fmt_number(r["correct"]), pct(r["accuracy"]),
             pct(r.get("stderr")), f"[{pct(r.get('ci95_low'))}, {pct(r.get('ci95_high'))}]"] for r in rows]
    return aligned([[*LEGACY_ACCURACY_COLUMNS, "stderr", "95% interval"], *body])


def aligned(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


# -- scoring and rescoring -----------------------------------------------------------------------------

def score_records(benchmark, records: list[dict], protocol: str | None,
                  where: str = "predictions") -> tuple[list[dict], list[dict]]:
    """Score each record (benchmark.score's fields merged into a copy) and build the table rows,
    each with its standard error and seeded bootstrap interval (flexeval/stats.py)."""
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


def _read_run_json(bench_dir: Path) -> dict:
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
    from flexeval.benchmarks import get_benchmark

    run = _read_run_json(Path(bench_dir))
    benchmark = get_benchmark(run.get("benchmark") or benchmark_folder(Path(bench_dir)).name)
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
    # The folder itself and every folder below it: a benchmark folder holds its variants (flexeval/layout.py).
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


# -- the cross-model report ---------------------------------------------------------------------------

def _collect(results_dir: Path) -> list[dict]:
    """One entry per `<tag>/<bench>[/<variant>]/accuracy.csv`: tag (with `[variant]`), kind, bench, protocol, rows."""
    found = []
    paths = sorted(results_dir.glob("*/*/accuracy.csv")) + sorted(
        p for p in results_dir.glob("*/*/*/accuracy.csv") if is_variant_folder(p.parent.name))
    for csv_path in paths:
        bench_dir = benchmark_folder(csv_path.parent)
        run = _read_run_json(csv_path.parent)
        model = run.get("model") if isinstance(run.get("model"), dict) else {}
        variant = "" if bench_dir == csv_path.parent else f" [{csv_path.parent.name}]"
        found.append({"tag": bench_dir.parent.name + variant, "kind": model.get("kind"), "bench": bench_dir.name,
                      "protocol": run.get("protocol"), "recipe": model.get("recipe"), "rows": read_accuracy_csv(csv_path)})
    return found


def _cell(x: float | None, derived: bool = False) -> str:
    if x is None or math.isnan(x):
        return DASH
    return f"{x:.1f}" + ("*" if derived else "")


def _interval_cell(low: float | None, high: float | None) -> str:
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return DASH
    return f"{low:.1f}–{high:.1f}"


def _diff(x: float | None, ref: float | None) -> str:
    if x is None or ref is None or math.isnan(x):
        return DASH
    d = round(x - ref, 1)
    return f"{d:+.1f}" if d != 0 else "0.0"


def summary_markdown(entries: list[dict]) -> str:
    header = ["Model", *(c[0] for c in REPORT_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(REPORT_COLUMNS)) + "|"]

    def row(cells: list[str]) -> None:
        lines.append("| " + " | ".join(cells) + " |")

    for name, ref in PAPER_ROWS.values():
        row([name, *(_cell(*ref[(b, s)]) if (b, s) in ref else DASH for _, b, s in REPORT_COLUMNS)])

    tags = sorted({e["tag"] for e in entries})
    notes = []
    for tag in tags:
        mine = [e for e in entries if e["tag"] == tag]
        acc = {(r["benchmark"], r["subset"]): r["accuracy"] for e in mine for r in e["rows"]}
        kinds = sorted({e["kind"] for e in mine if e["kind"]})
        kind = kinds[0] if len(kinds) == 1 else None
        row([f"{tag} ({kind or 'kind unknown'})", *(_cell(acc.get((b, s))) for _, b, s in REPORT_COLUMNS)])
        ci = {(r["benchmark"], r["subset"]): (r.get("ci95_low"), r.get("ci95_high")) for e in mine for r in e["rows"]}
        ci_cells = [_interval_cell(*ci.get((b, s), (None, None))) for _, b, s in REPORT_COLUMNS]
        if any(c != DASH for c in ci_cells):  # issue 15: older accuracy.csv files have no intervals
            row([f"95% interval {tag}", *ci_cells])
        if kind in PAPER_ROWS:
            ref_name, ref = PAPER_ROWS[kind]
            row([f"Δ {tag} − {ref_name}",
                 *(_diff(acc.get((b, s)), ref[(b, s)][0] if (b, s) in ref else None)
                   for _, b, s in REPORT_COLUMNS)])
        parts = []
        for e in mine:
            overall = next((r for r in e["rows"] if r["subset"] == "overall"), None)
            parts.append(f"{e['bench']} n={overall['n'] if overall else '?'} protocol={e['protocol'] or '?'}"
                         + (f" recipe={e['recipe']}" if e.get("recipe") else ""))
        why = "" if kind in PAPER_ROWS else (
            "; no difference row: run.json model.kind is " + (" and ".join(kinds) if kinds else "missing"))
        notes.append(f"- `{tag}`: " + "; ".join(parts) + why)

    lines += ["", "Accuracy in percent. Δ rows: the model minus the paper row of the same model kind. "
              "95% interval rows: percentile bootstrap over items (seeded; RSVQA average resampled within "
              "each subset); standard errors are in accuracy.csv and summary.csv.",
              "\\* derived, not printed in the paper: V* attribute = (overall x 191 - spatial x 76) / 115 "
              "(LLaVA-1.5-7B 48/115, FlexAttention-7B 55/115). RSVQA presence/comparison are not published.",
              "Compare with the paper only for full runs (n as published) under protocol=paper.", "", *notes]
    return "\n".join(lines) + "\n"


def write_report(results_dir: Path) -> str:
    """summary.csv (every model x benchmark x subset) and summary.md (paper-style); returns the markdown."""
    results_dir = Path(results_dir)
    entries = _collect(results_dir) if results_dir.is_dir() else []
    if not entries:
        raise FlexEvalError(
            f"no results in {results_dir} (looked for {results_dir}/<model-tag>/<bench>/accuracy.csv); "
            f"run `flexeval run --bench all --out {results_dir}` first"
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    order = ["vstar", "magnifierbench", "textvqa", "rsvqa_hrben"]
    rank = {b: i for i, b in enumerate(order)}
    for e in sorted(entries, key=lambda e: (e["tag"], rank.get(e["bench"], len(order)), e["bench"])):
        for r in e["rows"]:
            w.writerow([e["tag"], *_row_cells(r)])
    write_text_atomic(results_dir / "summary.csv", buf.getvalue())
    md = summary_markdown(entries)
    write_text_atomic(results_dir / "summary.md", md)
    return md


# -- `flexeval list` ------------------------------------------------------------------------------------

def _short_reason(e: Exception, limit: int = 70) -> str:
    text = str(e).split("; ")[0].split(". ")[0].strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def list_benchmarks_table(data_root: Path) -> str:
    """Each benchmark: expected folder, whether it is there, items loaded, published count, and
    its protocols (the default first) and input recipes."""
    from flexeval.benchmarks import list_benchmarks
    from flexeval.run_options import RECIPES

    data_root = Path(data_root)
    table = [["benchmark", "folder", "present", "items", "published", "protocols", "recipes", "note"]]
    for b in list_benchmarks():
        folder = data_root / b.name
        published = b.expected_counts.get("overall") or sum(b.expected_counts.values()) or "?"
        note = ""
        if not folder.is_dir():
            # Never call load here: adapters may try a download when the folder is absent.
            items = "missing: no folder"
        else:
            try:
                samples = b.load(folder)
                items = str(len(samples))
                if b.count_report(samples)["mismatch"]:
                    note = "count differs from published (a sample, a partial copy or another release?)"
            except FlexEvalError as e:
                items = f"missing: {_short_reason(e)}"
            except Exception as e:  # an adapter bug must not hide the other rows; shown, not skipped
                items = f"error: {type(e).__name__}: {_short_reason(e)}"
        table.append([b.name, str(folder), "yes" if folder.is_dir() else "no", items, str(published),
                      ",".join(b.protocols), ",".join(RECIPES), note])
    return aligned(table)
