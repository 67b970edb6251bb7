"""summary.md's compute table: each model x benchmark's counted TFLOP per sample, seconds for the
benchmark and samples/s (run.json `cost`, flexeval/speed/run_cost.py), beside the paper's Table 5."""

from __future__ import annotations

# FlexAttention paper, Table 5 (one V100): TFLOPs per sample and seconds for the whole benchmark.
PAPER_TABLE5 = [
    ("paper: LLaVA-HD", "magnifierbench", 24.9, 154), ("paper: LLaVA-XAttn", "magnifierbench", 27.1, 178),
    ("paper: FlexAttention", "magnifierbench", 17.1, 112),
    ("paper: LLaVA-HD", "textvqa", 24.5, 3273), ("paper: LLaVA-XAttn", "textvqa", 26.7, 3741),
    ("paper: FlexAttention", "textvqa", 17.1, 2839),
]
PAPER_HARDWARE = "V100 (paper Table 5)"
DASH = "–"


def _num(x, fmt: str) -> str:
    return DASH if x is None else format(x, fmt)


def compute_rows(entries: list[dict]) -> list[list[str]]:
    """[model, benchmark, hardware, TFLOP/sample, seconds (model / wall), samples/s] per run with a cost."""
    rows = []
    for e in sorted(entries, key=lambda e: (e["tag"], e["bench"])):
        c = e.get("cost")
        if not isinstance(c, dict):
            continue
        hw = c.get("hardware") or DASH
        if c.get("dtype"):
            hw += f", {c['dtype']}"
        seconds = f"{_num(c.get('model_s'), '.1f')} / {_num(c.get('wall_s'), '.1f')}"
        if c.get("timed_items") is not None:
            seconds += f" ({c['timed_items']} items)"
        rows.append([e["tag"], e["bench"], hw, _num(c.get("tflop_per_sample"), ".4g"), seconds,
                     _num(c.get("samples_per_s"), ".3g")])
    return rows


def compute_markdown(entries: list[dict]) -> str:
    """The compute table (markdown), the paper's rows first."""
    head = ["Model", "Benchmark", "Hardware", "TFLOP/sample", "Seconds (model / wall)", "Samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 3) + "|"]
    for name, bench, tflop, seconds in PAPER_TABLE5:
        lines.append(f"| {name} | {bench} | {PAPER_HARDWARE} | {tflop} | {seconds} | {DASH} |")
    for row in compute_rows(entries):
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "TFLOP/sample: counted (flexeval/speed/flops.py) from each record's real token counts and "
              "selection, high-res K/V projected once per request (a lower bound for attention/random "
              "selection); the paper's are its own counts. Seconds: the model calls and the whole command of "
              "this invocation (a resumed run times only the items it ran). Figures from different hardware "
              "are not comparable as times."]
    return "\n".join(lines) + "\n"
