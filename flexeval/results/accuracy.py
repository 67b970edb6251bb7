"""accuracy.csv: writing, reading and printing the per-benchmark accuracy table.

Columns: benchmark,subset,n,correct,accuracy,stderr,ci95_low,ci95_high (percent; the last three from
flexeval/results/intervals.py; files with only the first five still read).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from flexeval.errors import FlexEvalError
from flexeval.results.store import write_text_atomic

DASH = "–"  # a missing cell

LEGACY_ACCURACY_COLUMNS = ["benchmark", "subset", "n", "correct", "accuracy"]  # before intervals
INTERVAL_COLUMNS = ["stderr", "ci95_low", "ci95_high"]  # flexeval/results/intervals.py; percent
ACCURACY_COLUMNS = [*LEGACY_ACCURACY_COLUMNS, *INTERVAL_COLUMNS]


# -- accuracy.csv ----------------------------------------------------------------------------------

def fmt_number(x: float, decimals: int = 4) -> str:
    """Integers as integers; other values with up to `decimals` decimals; NaN (no items) as 'nan'."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if x == int(x):
        return str(int(x))
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".")


def fmt_percent(x: float | None) -> str:
    """A percent cell: 4 decimals; NaN or None (not computed, e.g. an old accuracy.csv) as 'nan'."""
    return "nan" if x is None or math.isnan(float(x)) else f"{float(x):.4f}"


def row_cells(r: dict) -> list:
    return [r["benchmark"], r["subset"], int(r["n"]), fmt_number(r["correct"]), fmt_percent(r["accuracy"]),
            *(fmt_percent(r.get(c)) for c in INTERVAL_COLUMNS)]


def accuracy_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ACCURACY_COLUMNS)
    for r in rows:
        w.writerow(row_cells(r))
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

    body = [[r["benchmark"], r["subset"], str(r["n"]), fmt_number(r["correct"]), pct(r["accuracy"]),
             pct(r.get("stderr")), f"[{pct(r.get('ci95_low'))}, {pct(r.get('ci95_high'))}]"] for r in rows]
    return aligned([[*LEGACY_ACCURACY_COLUMNS, "stderr", "95% interval"], *body])


def aligned(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


