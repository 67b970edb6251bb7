"""The output of `flexeval bench`: the printed table, bench.csv (the rows) and bench.json (everything)."""

from __future__ import annotations

import io
import math
from pathlib import Path

COLUMNS = ("section", "what", "selection", "batch", "ms_per_sample", "samples_per_s", "gflop_per_sample",
           "tflops", "selected_ratio", "vs_reference", "vs_none", "vs_all", "note")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(res: dict) -> str:
    i, c = res["info"], res["ceilings"]
    lines = [f"flexeval bench: {i['model']} on {i['device']}, {i['dtype']}, median of {i['repeat']} after warm-up; "
             f"prompt {i['prompt_tokens']} tokens, options {i['option_tokens']} tokens",
             f"measured ceilings: matmul {c['matmul_tflops']:.3g} TFLOP/s ({c['matmul_n']}^3), "
             f"copy {c['copy_gb_per_s']:.3g} GB/s"]
    for ch in res["checks"]:
        lines.append(f"check fast vs reference ({ch['selection']}): prefill logits {ch['prefill_logits_max_rel_diff']:.2e}, "
                     f"option NLL {ch['option_nll_max_rel_diff']:.2e} (tolerance {ch['tolerance']:g}), same greedy "
                     f"tokens {ch['same_greedy_tokens']}: {'PASS' if ch['passed'] else 'FAIL'}")
    table = [list(COLUMNS)] + [[_fmt(r[k]) for k in COLUMNS] for r in res["rows"]]
    widths = [max(len(row[j]) for row in table) for j in range(len(COLUMNS))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_results(res: dict, out: Path) -> tuple[Path, Path]:
    import csv

    from flexeval.store import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(_finite(res["rows"]))
    write_text_atomic(out / "bench.csv", buf.getvalue())
    write_json_atomic(out / "bench.json", _finite(res))
    return out / "bench.csv", out / "bench.json"
