"""Non-finite model outputs: an item whose option NLLs or logits hold NaN/inf is never scored as correct.

Why: with NaN NLLs argmin returns option 0, which on V* is always the right one, so broken weights
(or fp16 overflow on a GPU) scored 100%. Such an item keeps `prediction: null` and a `non_finite`
reason in predictions.jsonl, scores 0, and is counted per subset in run.json. A few can be bad luck
in one item; more than `limit` in a run means the model or the dtype is broken: the run stops with
an error naming the dtype and the fix (what was done is kept).
"""

from __future__ import annotations

import math
from collections import Counter

from flexeval.errors import FlexEvalError

DEFAULT_LIMIT = 3


def choice_problem(option_nll: list[float]) -> str | None:
    bad = [k for k, x in enumerate(option_nll) if not math.isfinite(x)]
    return f"option NLL not finite for option(s) {bad}" if bad else None


def score_record(bench, record: dict, protocol: str) -> dict:
    """bench.score, but a non-finite item scores 0 whatever its prediction field says."""
    scored = bench.score(record, protocol)
    return {**scored, "score": 0.0} if record.get("non_finite") else scored


def per_subset(records, field: str) -> dict[str, int]:
    """Items per subset with `field` set (e.g. non_finite, skipped), for run.json and the log."""
    return dict(sorted(Counter(r["subset"] for r in records if r.get(field)).items()))


def _enough(limit: int) -> int:
    """A --max-non-finite that lets the rerun finish (every item may be non-finite)."""
    return max(1000, 10 * limit)


class NonFiniteGuard:
    """Counts non-finite items as batches are stored; raises once more than `limit` are seen."""

    def __init__(self, dtype, limit: int = DEFAULT_LIMIT, where: str = ""):
        self.dtype, self.limit, self.where, self.seen = str(dtype).replace("torch.", ""), limit, where, []

    def add(self, records) -> None:
        self.seen += [r for r in records if r.get("non_finite")]
        if len(self.seen) > self.limit:
            example = self.seen[0]
            fix = {"float16": "float16 overflows on this model: rerun with --dtype bfloat16 (or float32)",
                   "bfloat16": "rerun with --dtype float32"}.get(
                self.dtype, "even float32 overflows, so no --dtype helps: the weights are broken (finite, as the load "
                "checks, but out of range for this model: a damaged or wrongly converted checkpoint, re-download it); "
                f"to finish anyway with these items counted wrong, rerun with --max-non-finite {_enough(self.limit)}")
            raise FlexEvalError(
                f"{self.where}: {len(self.seen)} items gave NaN/inf model outputs under dtype {self.dtype} (more than "
                f"--max-non-finite {self.limit}), e.g. {example['id']}: {example['non_finite']}; {fix}. The items "
                f"done so far are kept (non-finite ones marked and counted wrong)."
            )
