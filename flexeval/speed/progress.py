"""What `flexeval speed` is doing, as it does it: the plan up front, then a line per step and per row
(a CPU run printed nothing for minutes before and was stopped as hung)."""

from __future__ import annotations

import sys
import time


def planned_rows(n_selections: int, best_batch_known: bool, stage_batches: int, e2e: bool) -> int:
    """Rows a run prints: generate and choice for every selection at b1 and the best batch (at most),
    the reference of each kind, 2 JPEG rows, 3 stage rows per stage batch, 2 end-to-end rows."""
    labels = 2 if not best_batch_known else 1
    return 2 * n_selections * labels + 2 + 2 + 3 * stage_batches + (2 if e2e else 0)


class Progress:
    def __init__(self, total_rows: int, stream=None):
        self.total, self.done = total_rows, 0
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {text}", file=self.stream, flush=True)

    def plan(self, text: str) -> None:
        self.say(f"plan: {text}; at most {self.total} rows, a line each as it is measured")

    def row(self, r: dict) -> None:
        self.done += 1
        ms = r.get("ms_per_sample")
        figure = f"{ms:.4g} ms/sample" if ms is not None else "-"
        self.say(f"row {self.done}/{self.total}: {r['section']} {r['what']}, {r['selection']}, batch {r['batch']}: "
                 f"{figure}")
