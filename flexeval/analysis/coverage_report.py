"""Target coverage summaries: `target_coverage.csv` per run, and across a results folder one CSV and
one plot of recall per layer for each run (labelled by its selection mode: attention / random /
center / all, the paper's Fig. 4 ablation measured on the target itself).

Per run: one row per (subset, answers, layer), `answers` = all | correct | wrong (score 1 or not),
with n and the means of recall, precision and attention_mass over the items where each is defined.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from flexeval.analysis.coverage import COVERAGE_FIELDS
from flexeval.results.store import write_text_atomic

CSV_NAME = "target_coverage.csv"
COLUMNS = ["subset", "answers", "layer", "n", *COVERAGE_FIELDS]


def _table(covered: list[dict], layers: list[int]) -> dict:
    """field -> [items, layers] float array (NaN where a record lacks the layer or the value is None)."""
    col = {layer: j for j, layer in enumerate(layers)}
    out = {k: np.full((len(covered), len(layers)), np.nan) for k in COVERAGE_FIELDS}
    for i, r in enumerate(covered):
        tc = r["target_coverage"]
        js = [col[layer] for layer in tc["layers"]]
        for k in COVERAGE_FIELDS:
            out[k][i, js] = [np.nan if v is None else v for v in tc[k]]
    return out


def coverage_rows(records: list[dict]) -> list[dict]:
    """The per-run table's rows (empty when no record carries `target_coverage`)."""
    covered = [r for r in records if isinstance(r.get("target_coverage"), dict)]
    if not covered:
        return []
    layers = sorted({layer for r in covered for layer in r["target_coverage"]["layers"]})
    table = _table(covered, layers)
    subset = np.array([str(r["subset"]) for r in covered])
    correct = np.array([float(r.get("score") or 0) == 1.0 for r in covered])
    rows = []
    for name in sorted(set(subset.tolist())) + ["overall"]:
        in_subset = np.ones(len(covered), bool) if name == "overall" else subset == name
        for answers, pick in (("all", in_subset), ("correct", in_subset & correct), ("wrong", in_subset & ~correct)):
            means = {k: _column_means(table[k][pick]) for k in COVERAGE_FIELDS}
            for j, layer in enumerate(layers):
                rows.append({"subset": name, "answers": answers, "layer": layer, "n": int(pick.sum()),
                             **{k: means[k][j] for k in COVERAGE_FIELDS}})
    return rows


def _column_means(a: np.ndarray) -> list[float | None]:
    """Mean of each column over its defined (non-NaN) values; None for a column without any."""
    n = (~np.isnan(a)).sum(0)
    sums = np.nansum(a, 0)
    return [round(float(s / c), 6) if c else None for s, c in zip(sums, n)]


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    return buf.getvalue()


def write_coverage_csv(out_dir: Path, records: list[dict], rows: list[dict] | None = None) -> Path | None:
    """<run folder>/target_coverage.csv when the records carry coverage (`rows`: coverage_rows(records), if
    the caller has them); None (nothing written) otherwise."""
    rows = coverage_rows(records) if rows is None else rows
    if not rows:
        return None
    path = Path(out_dir) / CSV_NAME
    write_text_atomic(path, _csv_text(rows, COLUMNS))
    return path


def read_coverage_csv(path: Path) -> list[dict]:
    rows = []
    for r in csv.DictReader(Path(path).open()):
        rows.append({"subset": r["subset"], "answers": r["answers"], "layer": int(r["layer"]), "n": int(r["n"]),
                     **{k: (float(r[k]) if r[k] else None) for k in COVERAGE_FIELDS}})
    return rows


def collect_runs(results_dir: Path) -> list[dict]:
    """Every run folder under results_dir with a target_coverage.csv: its label, selection mode and rows."""
    runs = []
    for path in sorted(Path(results_dir).rglob(CSV_NAME)):
        if path.parent == Path(results_dir):
            continue
        run = {}
        if (path.parent / "run.json").is_file():
            run = json.loads((path.parent / "run.json").read_text())
        options = (run.get("model") or {}).get("options") or {}
        runs.append({"run": str(path.parent.relative_to(results_dir)), "selection": options.get("selection", "?"),
                     "rows": read_coverage_csv(path)})
    return runs


def write_coverage_summary(results_dir: Path) -> list[Path]:
    """results_dir/target_coverage.csv (every run's rows, run and selection first) and target_coverage.png
    (overall recall per layer, one line per run, by selection mode); [] when no run has coverage."""
    runs = collect_runs(results_dir)
    if not runs:
        return []
    rows = [{"run": r["run"], "selection": r["selection"], **row} for r in runs for row in r["rows"]]
    csv_path = Path(results_dir) / CSV_NAME
    write_text_atomic(csv_path, _csv_text(rows, ["run", "selection", *COLUMNS]))
    return [csv_path, plot_recall(runs, Path(results_dir) / "target_coverage.png")]


def plot_recall(runs: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flexeval.analysis.attention import save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in sorted(runs, key=lambda r: (r["selection"], r["run"])):
        pts = [(x["layer"], x["recall"]) for x in r["rows"]
               if x["subset"] == "overall" and x["answers"] == "all" and x["recall"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{r['selection']}: {r['run']}")
    ax.set_xlabel("selecting layer (its tokens are attended to by the next layer)")
    ax.set_ylabel("target recall (mean over items)")
    ax.set_ylim(0, 1.02)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("V*: fraction of the target boxes covered by the selected high-res tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out, dpi=120)
