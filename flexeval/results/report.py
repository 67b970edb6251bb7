"""The cross-model report (summary.csv, summary.md beside the paper's numbers) and the `flexeval list`
overview of the data folders."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from flexeval.errors import FlexEvalError
from flexeval.results.accuracy import (
    ACCURACY_COLUMNS,
    DASH,
    aligned,
    read_accuracy_csv,
    row_cells,
)
from flexeval.results.compute import compute_markdown
from flexeval.results.layout import benchmark_folder, is_variant_folder
from flexeval.results.readonly import tables_written_in
from flexeval.results.scoring import read_run_json
from flexeval.results.store import write_text_atomic

SUMMARY_COLUMNS = ["model", *ACCURACY_COLUMNS]

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

# A Δ-vs-paper cell needs this many items: at n = 50 and 50% accuracy the 95% interval is ±14 points.
MIN_DELTA_N = 50
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


# -- the cross-model report ---------------------------------------------------------------------------

def _collect(results_dir: Path) -> list[dict]:
    """One entry per `<tag>/<bench>[/<variant>]/accuracy.csv`: tag (with `[variant]`), kind, bench, protocol, rows."""
    found = []
    paths = sorted(results_dir.glob("*/*/accuracy.csv")) + sorted(
        p for p in results_dir.glob("*/*/*/accuracy.csv") if is_variant_folder(p.parent.name))
    for csv_path in paths:
        bench_dir = benchmark_folder(csv_path.parent)
        run = read_run_json(csv_path.parent)
        model = run.get("model") if isinstance(run.get("model"), dict) else {}
        variant = "" if bench_dir == csv_path.parent else f" [{csv_path.parent.name}]"
        found.append({"tag": bench_dir.parent.name + variant, "kind": model.get("kind"), "bench": bench_dir.name,
                      "protocol": run.get("protocol"), "recipe": model.get("recipe"), "rows": read_accuracy_csv(csv_path),
                      "cost": run.get("cost")})
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
        n = {(r["benchmark"], r["subset"]): r.get("n") or 0 for e in mine for r in e["rows"]}
        if kind in PAPER_ROWS:
            ref_name, ref = PAPER_ROWS[kind]
            deltas = [_diff(acc.get((b, s)) if n.get((b, s), 0) >= MIN_DELTA_N else None,
                            ref[(b, s)][0] if (b, s) in ref else None) for _, b, s in REPORT_COLUMNS]
            if any(d != DASH for d in deltas):  # a 2-item run printed a Δ-vs-paper row (issue 24)
                row([f"Δ {tag} − {ref_name}", *deltas])
        parts = []
        for e in mine:
            overall = next((r for r in e["rows"] if r["subset"] == "overall"), None)
            parts.append(f"{e['bench']} n={overall['n'] if overall else '?'} protocol={e['protocol'] or '?'}"
                         + (f" recipe={e['recipe']}" if e.get("recipe") else ""))
        why = "" if kind in PAPER_ROWS else (
            "; no difference row: run.json model.kind is " + (" and ".join(kinds) if kinds else "missing"))
        notes.append(f"- `{tag}`: " + "; ".join(parts) + why)

    lines += ["", "Accuracy in percent. Δ rows: the model minus the paper row of the same model kind, "
              f"only for cells of at least {MIN_DELTA_N} items (below that the 95% interval is wider than ±14 "
              "points: a difference means nothing). "
              "95% interval rows: percentile bootstrap over items (seeded; RSVQA average resampled within "
              "each subset); standard errors are in accuracy.csv and summary.csv.",
              "\\* derived, not printed in the paper: V* attribute = (overall x 191 - spatial x 76) / 115 "
              "(LLaVA-1.5-7B 48/115, FlexAttention-7B 55/115). RSVQA presence/comparison are not published.",
              "Compare with the paper only for full runs (n as published) under protocol=paper.", "", *notes,
              "", "## Compute", "", compute_markdown(entries).rstrip("\n")]
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
            w.writerow([e["tag"], *row_cells(r)])
    md = summary_markdown(entries)
    with tables_written_in(results_dir, "report"):  # a read-only folder: one line, a fix that works
        write_text_atomic(results_dir / "summary.csv", buf.getvalue())
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
    from flexeval.items import RECIPES

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
