"""Standard errors and bootstrap intervals (flexeval/results/intervals.py): values worked out by hand."""

from __future__ import annotations

import math

import pytest

from flexeval.benchmarks import get_benchmark
from flexeval.results.intervals import accuracy_interval, add_intervals, paired_difference
from flexeval.results.scoring import score_records


def test_standard_error_of_one_subset_by_hand():
    # [1, 1, 0]: mean 2/3, sample variance ((1/3)^2 * 2 + (2/3)^2) / 2 = 1/3, stderr sqrt(1/3 / 3) = 1/3
    iv = accuracy_interval([[1, 1, 0]])
    assert iv.estimate == pytest.approx(200 / 3)
    assert iv.stderr == pytest.approx(100 / 3)


def test_standard_error_of_a_mean_of_two_subsets_by_hand():
    # strata [1, 0] (stderr 0.5) and [1, 1, 0] (stderr 1/3): mean of means (0.5 + 2/3) / 2,
    # stderr sqrt(0.5^2 + (1/3)^2) / 2 = 0.300463
    iv = accuracy_interval([[1, 0], [1, 1, 0]])
    assert iv.estimate == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert iv.stderr == pytest.approx(100 * math.sqrt(0.25 + 1 / 9) / 2)


def test_undefined_cases_are_nan_not_zero():
    one = accuracy_interval([[1.0]])
    assert one.estimate == 100.0 and math.isnan(one.stderr)  # a variance needs two items
    assert math.isnan(accuracy_interval([[]]).estimate)
    assert math.isnan(accuracy_interval([[1, 0], []]).low)


def test_constant_scores_give_a_point_interval():
    iv = accuracy_interval([[0.6] * 30])
    assert (iv.low, iv.high, iv.stderr) == (pytest.approx(60.0), pytest.approx(60.0), pytest.approx(0.0))


def test_bootstrap_interval_is_seeded_and_close_to_the_normal_one():
    scores = [[1.0] * 200 + [0.0] * 200]
    a, b = accuracy_interval(scores), accuracy_interval(scores)
    assert a == b  # same seed, same interval
    assert accuracy_interval(scores, seed=1) != a
    # p = 0.5, n = 400: stderr sqrt(0.25 * 400 / 399 / 400) = 2.503 points; normal interval 50 +- 4.9
    assert a.stderr == pytest.approx(100 * math.sqrt(0.25 * 400 / 399 / 400))
    assert a.low == pytest.approx(50 - 1.96 * 2.5, abs=0.6) and a.high == pytest.approx(50 + 1.96 * 2.5, abs=0.6)


def test_bootstrap_of_a_stratified_mean_keeps_the_strata_apart():
    # [1]*10 and [0]*10: every replicate draws 10 items from each stratum, so the mean of means is
    # exactly 50 in every replicate; pooling the 20 items would scatter it.
    iv = accuracy_interval([[1.0] * 10, [0.0] * 10])
    assert (iv.low, iv.high) == (pytest.approx(50.0), pytest.approx(50.0))


def test_paired_difference_by_hand():
    # per-item differences B - A = [0, -1, 1, 1]: mean 0.25, sample variance 2.75 / 3, stderr sqrt(0.9167 / 4)
    d = paired_difference([[1, 1, 0, 0]], [[1, 0, 1, 1]])
    assert d.estimate == pytest.approx(25.0)
    assert d.stderr == pytest.approx(100 * math.sqrt(2.75 / 3 / 4))


def test_paired_interval_sees_only_the_flipped_items():
    # 100 items, B = A except one item wrong -> right. A replicate's difference is k points, k = how often
    # that item is drawn, k ~ Bin(100, 0.01): P(k = 0) = 36.6% -> low 0; P(k <= 2) = 92.1% < 97.5%
    # < P(k <= 3) = 98.2% -> high 3. Unpaired, the interval would be about +-14 points wide.
    a = [1.0] * 50 + [0.0] * 50
    b = list(a)
    b[60] = 1.0
    d = paired_difference([a], [b])
    assert d.estimate == pytest.approx(1.0)
    assert d.low == pytest.approx(0.0) and d.high == pytest.approx(3.0)


def test_paired_difference_needs_the_same_items():
    with pytest.raises(ValueError):
        paired_difference([[1, 0]], [[1, 0, 1]])


def test_add_intervals_leaves_rows_without_scores_nan():
    rows = [{"subset": "x", "n": 2, "correct": 1, "accuracy": 50.0}, {"subset": "y", "n": 0}]
    out = add_intervals(rows, {"x": [[1, 0]]})
    assert out[0]["stderr"] == 50.0 and (out[0]["ci95_low"], out[0]["ci95_high"]) == (0.0, 100.0)
    assert math.isnan(out[1]["stderr"]) and math.isnan(out[1]["ci95_low"])
    assert out[0]["accuracy"] == 50.0  # existing fields untouched


def test_rsvqa_average_row_is_a_mean_of_two_strata():
    bench = get_benchmark("rsvqa_hrben")
    recs = [{"key": str(i), "id": str(i), "subset": sub, "target": "yes", "prediction": pred}
            for i, (sub, pred) in enumerate([("presence", "yes"), ("presence", "no"),
                                             ("comparison", "yes"), ("comparison", "yes"), ("comparison", "no")])]
    _, rows = score_records(bench, recs, "paper")
    by = {r["subset"]: r for r in rows}
    # presence [1, 0]: stderr 0.5; comparison [1, 1, 0]: stderr 1/3; average: sqrt(0.25 + 1/9) / 2
    assert by["average"]["accuracy"] == pytest.approx(100 * (0.5 + 2 / 3) / 2, abs=1e-4)
    assert by["average"]["stderr"] == pytest.approx(100 * math.sqrt(0.25 + 1 / 9) / 2, abs=1e-4)
    # overall pools the 5 items [1, 0, 1, 1, 0]: sqrt(0.3 / 5)
    assert by["overall"]["stderr"] == pytest.approx(100 * math.sqrt(0.3 / 5), abs=1e-4)


def test_magnifierbench_extra_rows_have_their_own_item_scores():
    bench = get_benchmark("magnifierbench")
    q = "What is it? A. red, B. blue, C. green, D. white"

    def rec(i, reply, target):
        return {"key": str(i), "id": str(i), "subset": "test", "question": q, "target": target,
                "prediction": reply, "meta": {"n_images": 1}}

    # replies: "A" (strict A, right), "B." (strict B, wrong: target A), "I think C" (release C, strict none:
    # disagree, right), "D" (strict D, right)
    recs = [rec(0, "A", "A"), rec(1, "B.", "A"), rec(2, "I think C", "C"), rec(3, "D", "D")]
    _, rows = score_records(bench, recs, "paper")
    by = {r["subset"]: r for r in rows}
    # strict scores [1, 0, 0, 1]: stderr sqrt((4 * 0.25 / 3) / 4) = 0.288675
    assert by["overall_strict"]["correct"] == 2
    assert by["overall_strict"]["stderr"] == pytest.approx(100 * math.sqrt(1 / 3 / 4), abs=1e-4)
    # disagreements [0, 0, 1, 0]: mean 0.25, variance (3 * 0.0625 + 0.5625) / 3 = 0.25, stderr sqrt(0.25 / 4)
    assert by["parse_disagreements"]["correct"] == 1
    assert by["parse_disagreements"]["stderr"] == pytest.approx(25.0, abs=1e-4)
    # release-parser scores [1, 0, 1, 1]
    assert by["overall"]["stderr"] == pytest.approx(25.0, abs=1e-4)
