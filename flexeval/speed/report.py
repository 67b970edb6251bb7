"""The output of `flexeval speed`: the printed table, speed.csv (the rows) and speed.json (everything)."""

from __future__ import annotations

import io
from pathlib import Path

COLUMNS = ("section", "what", "selection", "batch", "ms_per_sample", "samples_per_s", "gflop_per_sample",
           "tflops", "selected_ratio", "vs_reference", "vs_none", "vs_all", "note")



def speed_row(section, what, selection, batch, seconds, flops=None, ratio=None, note="") -> dict:
    """One row of speed.csv: `seconds` for `batch` samples, FLOPs per sample (None: not counted)."""
    ms = 1000 * seconds / batch
    return {"section": section, "what": what, "selection": selection, "batch": batch, "ms_per_sample": ms,
            "samples_per_s": 1000 / ms, "gflop_per_sample": flops / 1e9 if flops else None,
            "tflops": flops / (ms / 1000) / 1e12 if flops else None, "selected_ratio": ratio,
            "vs_reference": None, "vs_none": None, "vs_all": None, "note": note}

def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(res: dict) -> str:
    i, c = res["info"], res["ceilings"]
    lines = [f"flexeval speed: {i['model']} on {i['device']}, {i['dtype']}, median of {i['repeat']} after warm-up; "
             f"prompt {i['prompt_tokens']} tokens, options {i['option_tokens']} tokens",
             f"measured ceilings: matmul {c['matmul_tflops']:.3g} TFLOP/s ({c['matmul_n']}^3), "
             f"copy {c['copy_gb_per_s']:.3g} GB/s"]
    for ch in res["checks"]:
        lines.append(f"check fast vs reference ({ch['selection']}): prefill logits {ch['prefill_logits_max_rel_diff']:.2e}, "
                     f"option NLL {ch['option_nll_max_rel_diff']:.2e} (tolerance {ch['tolerance']:g}), same greedy "
                     f"tokens {ch['same_greedy_tokens']}: {'PASS' if ch['passed'] else 'FAIL'}")
    from flexeval.results.accuracy import aligned

    lines.append(aligned([list(COLUMNS)] + [[_fmt(r[k]) for k in COLUMNS] for r in res["rows"]]))
    return "\n".join(lines)


def write_results(res: dict, out: Path) -> tuple[Path, Path]:
    import csv

    from flexeval.results.jsonsafe import replace_non_finite
    from flexeval.results.store import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(replace_non_finite(res["rows"])[0])  # a NaN figure is an empty cell
    write_text_atomic(out / "speed.csv", buf.getvalue())
    write_json_atomic(out / "speed.json", res)  # strict JSON: non-finite figures as null
    return out / "speed.csv", out / "speed.json"
