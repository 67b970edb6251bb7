"""Uncertainty of an accuracy: standard error and a seeded bootstrap interval over items.

An accuracy row of accuracy.csv is a mean of per-item scores (0/1, or TextVQA's soft 0..1), or,
for a row like RSVQA's `average`, the unweighted mean of several subsets' means ("strata").
Both come to this module as `ItemScores`: a list of strata, each a list of per-item scores;
a plain row is one stratum.

- Standard error: of one stratum, sqrt(sample variance (ddof=1) / n), as lm-evaluation-harness
  computes `mean_stderr`; of a mean of K strata, sqrt(sum of the strata's squared errors) / K
  (the strata hold different items, so they are independent). NaN when a stratum has < 2 items.
- 95% interval: percentile bootstrap over items. Each of BOOTSTRAP_RESAMPLES replicates draws n
  items with replacement within each stratum (so a stratified row keeps its subset sizes),
  recomputes the row's statistic, and the interval is the 2.5% and 97.5% quantiles of the
  replicates (numpy's default linear interpolation). The generator is seeded (BOOTSTRAP_SEED),
  so rescoring the same predictions gives the same interval, byte for byte.
- Paired (two runs, the same items in the same order): the statistic is mean(B) - mean(A) per
  stratum; the same resampled items are used for both runs, which is what makes it paired.

All values are in percent, like the accuracy column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
_CHUNK_CELLS = 4_000_000  # resample indices drawn at most this many at a time (memory bound)

# Recorded in run.json, so a cited interval says how it was made.
METHOD = {"stderr": "sample standard deviation (ddof=1) / sqrt(n); a mean of K strata: sqrt(sum of squares) / K",
          "interval": "percentile bootstrap over items, resampled within each stratum",
          "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": CI_LEVEL}

ItemScores = list[list[float]]  # strata of per-item scores; the row's value = mean of strata means


@dataclass(frozen=True)
class Interval:
    estimate: float  # percent
    stderr: float  # percent; NaN when undefined
    low: float  # percent; NaN when undefined
    high: float


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan, math.nan)


def _strata(scores: ItemScores) -> list[np.ndarray]:
    return [np.asarray(s, dtype=np.float64) for s in scores]


def _stderr(strata: list[np.ndarray]) -> float:
    if not strata or any(len(s) < 2 for s in strata):
        return math.nan
    variances = [float(np.var(s, ddof=1)) / len(s) for s in strata]
    return 100.0 * math.sqrt(sum(variances)) / len(strata)


def _bootstrap_means(stratum: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """`resamples` bootstrap means of one stratum (drawn in chunks to bound memory)."""
    n = len(stratum)
    out = np.empty(resamples, dtype=np.float64)
    per_chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, resamples, per_chunk):
        k = min(per_chunk, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        out[start:start + k] = stratum[idx].mean(axis=1)
    return out


def _percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return 100.0 * float(low), 100.0 * float(high)


def accuracy_interval(scores: ItemScores, seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES,
                      level: float = CI_LEVEL) -> Interval:
    """Estimate, standard error and percentile-bootstrap interval of a (stratified) mean, in percent."""
    strata = _strata(scores)
    if not strata or any(len(s) == 0 for s in strata):
        return NAN_INTERVAL
    estimate = 100.0 * float(np.mean([s.mean() for s in strata]))
    rng = np.random.default_rng(seed)
    replicates = np.mean([_bootstrap_means(s, rng, resamples) for s in strata], axis=0)
    low, high = _percentiles(replicates, level)
    return Interval(estimate, _stderr(strata), low, high)


def paired_difference(scores_a: ItemScores, scores_b: ItemScores, seed: int = BOOTSTRAP_SEED,
                      resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL) -> Interval:
    """B - A on the same items (item k of a stratum is the same item in both), in percentage points.

    The standard error is that of the per-item differences; the bootstrap resamples items once and
    applies the draw to both runs.
    """
    if len(scores_a) != len(scores_b) or any(len(a) != len(b) for a, b in zip(scores_a, scores_b)):
        raise ValueError("paired_difference needs the same strata sizes in both runs")
    diffs = [b - a for a, b in zip(_strata(scores_a), _strata(scores_b))]
    return accuracy_interval(diffs, seed=seed, resamples=resamples, level=level)


def add_intervals(rows: list[dict], row_scores: dict[str, ItemScores]) -> list[dict]:
    """Each accuracy row with `stderr`, `ci95_low`, `ci95_high` added (NaN where a row has no item scores)."""
    out = []
    for row in rows:
        scores = row_scores.get(row["subset"])
        iv = accuracy_interval(scores) if scores is not None else NAN_INTERVAL
        out.append({**row, "stderr": _round(iv.stderr), "ci95_low": _round(iv.low), "ci95_high": _round(iv.high)})
    return out


def _round(x: float) -> float:
    return x if math.isnan(x) else round(x, 4)
