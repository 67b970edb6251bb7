"""`flexeval compare RUN_A RUN_B`: a paired comparison of two runs on the same items.

RUN_A and RUN_B are benchmark results folders (`<out>/<tag>/<bench>/`, holding predictions.jsonl)
or model-tag folders above them (`<out>/<tag>/`), in which case every benchmark folder present in
both is compared and those present in only one are named.

Both runs are rescored from predictions.jsonl with their own protocol (as `flexeval rescore`
does), then joined by item id. Items present in only one run are counted and listed, never
silently dropped; an id whose subset or target differs between the runs is not the same item and
is an error. For each accuracy row (the benchmark's subsets, `overall`, and its extra rows) on the
shared items: accuracy of A and of B, the difference B - A in percentage points, its standard
error (of the per-item differences) and its paired bootstrap 95% interval (flexeval/results/intervals.py: the
same resampled items for both runs), and how many items went up (B scored higher) or down.
The flipped items are the shared items whose scores differ by more than float noise
(SCORE_TOLERANCE): a VQA score summed in another order (0.9 vs 0.8999999999999998) is the same score,
not a flip, and it is not counted as up or down either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flexeval.errors import FlexEvalError
from flexeval.results.intervals import Interval, paired_difference
from flexeval.results.store import PREDICTIONS

# Scores are in [0, 1] (VQA: averages of tenths and thirds); summation order moves them by ~1e-16.
SCORE_TOLERANCE = 1e-9


def score_change(a: float, b: float) -> int:
    """+1 if B scored higher than A beyond float noise, -1 if lower, 0 if the same score."""
    a, b = float(a), float(b)
    if math.isclose(a, b, rel_tol=0.0, abs_tol=SCORE_TOLERANCE) or (math.isnan(a) and math.isnan(b)):
        return 0
    return 1 if b > a or math.isnan(a) else -1


@dataclass
class RowComparison:
    subset: str
    n: int
    accuracy_a: float
    accuracy_b: float
    difference: Interval  # B - A, percentage points
    up: int  # items (of this row's items) where B scored higher than A
    down: int


@dataclass
class BenchComparison:
    benchmark: str
    dir_a: str
    dir_b: str
    protocol_a: str
    protocol_b: str
    n_shared: int
    only_a: list[str]
    only_b: list[str]
    rows: list[RowComparison]
    flipped: list[dict] = field(default_factory=list)  # {id, subset, score_a, score_b, prediction_a, prediction_b}


@dataclass
class Comparison:
    benches: list[BenchComparison]
    only_a: list[str]  # benchmark folders found only under RUN_A (tag folders compared)
    only_b: list[str]


def _bench_dirs(path: Path) -> dict[str, Path]:
    if (path / PREDICTIONS).is_file():
        return {path.name: path}
    found = {p.parent.name: p.parent for p in sorted(path.glob(f"*/{PREDICTIONS}")) if p.is_file()}
    if not found:
        raise FlexEvalError(f"{path}: no {PREDICTIONS} in it or in its subfolders; give a benchmark results "
                            f"folder (results/<tag>/<bench>) or a model-tag folder (results/<tag>)")
    return found


def compare_runs(run_a: Path, run_b: Path) -> Comparison:
    run_a, run_b = Path(run_a), Path(run_b)
    for p in (run_a, run_b):
        if not p.is_dir():
            raise FlexEvalError(f"{p} is not a folder; give two results folders (results/<tag>/<bench>)")
    dirs_a, dirs_b = _bench_dirs(run_a), _bench_dirs(run_b)
    if len(dirs_a) == 1 and len(dirs_b) == 1 and (run_a / PREDICTIONS).is_file() and (run_b / PREDICTIONS).is_file():
        pairs = [(next(iter(dirs_a.values())), next(iter(dirs_b.values())))]
        only_a, only_b = [], []
    else:
        shared = [name for name in dirs_a if name in dirs_b]
        if not shared:
            raise FlexEvalError(f"{run_a} and {run_b} hold no benchmark in common "
                                f"({', '.join(dirs_a)} vs {', '.join(dirs_b)})")
        pairs = [(dirs_a[name], dirs_b[name]) for name in shared]
        only_a = [n for n in dirs_a if n not in dirs_b]
        only_b = [n for n in dirs_b if n not in dirs_a]
    return Comparison([compare_bench_dirs(a, b) for a, b in pairs], only_a, only_b)


def compare_bench_dirs(dir_a: Path, dir_b: Path) -> BenchComparison:
    from flexeval.results.scoring import scored_dir

    bench_a, protocol_a, scored_a, _ = scored_dir(dir_a)
    bench_b, protocol_b, scored_b, _ = scored_dir(dir_b)
    if bench_a.name != bench_b.name:
        raise FlexEvalError(f"{dir_a} holds {bench_a.name} but {dir_b} holds {bench_b.name}; "
                            "compare two runs of the same benchmark")
    return compare_records(bench_a, scored_a, scored_b, protocol_a, protocol_b, str(dir_a), str(dir_b))


def compare_records(benchmark, scored_a: list[dict], scored_b: list[dict], protocol_a: str, protocol_b: str,
                    where_a: str = "A", where_b: str = "B") -> BenchComparison:
    """The comparison of two lists of scored records (benchmark.score's fields merged in)."""
    by_a, by_b = _by_id(scored_a, where_a), _by_id(scored_b, where_b)
    shared = [i for i in by_a if i in by_b]  # A's order
    clash = [i for i in shared if (by_a[i]["subset"], by_a[i].get("target")) != (by_b[i]["subset"], by_b[i].get("target"))]
    if clash:
        raise FlexEvalError(f"items {', '.join(clash[:10])} have another subset or target in {where_b} than in "
                            f"{where_a}: the runs are on different data (check run.json data.fingerprint)")
    a = [by_a[i] for i in shared]
    b = [by_b[i] for i in shared]
    rows_a = benchmark.row_scores(a, protocol_a)
    rows_b = benchmark.row_scores(b, protocol_b)
    rows = []
    for subset, strata_a in rows_a.items():
        strata_b = rows_b.get(subset)
        if strata_b is None:
            continue
        flat_a = [x for s in strata_a for x in s]
        flat_b = [x for s in strata_b for x in s]
        rows.append(RowComparison(
            subset=subset, n=len(flat_a), accuracy_a=_mean_of_strata(strata_a), accuracy_b=_mean_of_strata(strata_b),
            difference=paired_difference(strata_a, strata_b),
            up=sum(1 for x, y in zip(flat_a, flat_b) if score_change(x, y) > 0),
            down=sum(1 for x, y in zip(flat_a, flat_b) if score_change(x, y) < 0)))
    order = {name: k for k, name in enumerate([*benchmark.subsets, "overall"])}
    rows.sort(key=lambda r: order.get(r.subset, len(order)))  # stable: extra rows keep their order
    flipped = [{"id": i, "subset": ra["subset"], "score_a": float(ra["score"]), "score_b": float(rb["score"]),
                "prediction_a": ra.get("prediction"), "prediction_b": rb.get("prediction")}
               for i, ra, rb in zip(shared, a, b) if score_change(ra["score"], rb["score"])]
    return BenchComparison(benchmark=benchmark.name, dir_a=where_a, dir_b=where_b, protocol_a=protocol_a,
                           protocol_b=protocol_b, n_shared=len(shared),
                           only_a=[i for i in by_a if i not in by_b], only_b=[i for i in by_b if i not in by_a],
                           rows=rows, flipped=flipped)


def _by_id(records: list[dict], where: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in records:
        key = str(r["id"])
        if key in out:
            raise FlexEvalError(f"{where}: item id {key} occurs twice in {PREDICTIONS}; rerun that benchmark")
        out[key] = r
    return out


def _mean_of_strata(strata: list[list[float]]) -> float:
    if not strata or any(not s for s in strata):
        return math.nan
    return 100.0 * sum(sum(s) / len(s) for s in strata) / len(strata)


# ------------------------------------------------------------------ output

def _pct(x: float, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def format_comparison(c: Comparison, show: int = 20) -> str:
    from flexeval.results.accuracy import aligned

    out = []
    for bc in c.benches:
        out.append(f"{bc.benchmark}: A = {bc.dir_a} (protocol {bc.protocol_a}), B = {bc.dir_b} "
                   f"(protocol {bc.protocol_b}); {bc.n_shared} shared items")
        table = [["subset", "n", "A", "B", "B-A", "stderr", "95% interval", "up", "down"]]
        for r in bc.rows:
            d = r.difference
            table.append([r.subset, str(r.n), _pct(r.accuracy_a), _pct(r.accuracy_b), _pct(d.estimate, True),
                          _pct(d.stderr), f"[{_pct(d.low, True)}, {_pct(d.high, True)}]", str(r.up), str(r.down)])
        out.append(aligned(table))
        out.append(f"flipped items (score differs): {len(bc.flipped)}")
        for f in bc.flipped[:show]:
            out.append(f"  {f['id']} ({f['subset']}): {f['score_a']:g} -> {f['score_b']:g}  "
                       f"{str(f['prediction_a'])[:40]!r} -> {str(f['prediction_b'])[:40]!r}")
        if len(bc.flipped) > show:
            out.append(f"  ... {len(bc.flipped) - show} more (--show N, or --json for all)")
        for label, ids in (("only in A", bc.only_a), ("only in B", bc.only_b)):
            if ids:
                out.append(f"{label}: {len(ids)} items, not compared: {', '.join(ids[:show])}"
                           + (" ..." if len(ids) > show else ""))
        out.append("")
    for label, names in (("only under A", c.only_a), ("only under B", c.only_b)):
        if names:
            out.append(f"benchmarks {label}, not compared: {', '.join(names)}")
    return "\n".join(out).rstrip() + "\n"


def comparison_json(c: Comparison) -> dict:
    """The comparison as plain JSON values (NaN, an undefined error or interval, becomes null)."""
    from flexeval.results.jsonsafe import replace_non_finite

    return replace_non_finite(asdict(c))[0]
