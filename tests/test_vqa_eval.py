"""EvalAI answer normaliser and soft VQA accuracy: values worked out by hand from the reference."""

import pytest

from flexeval.benchmarks.vqa_eval import CONTRACTIONS, normalize_answer, vqa_accuracy


@pytest.mark.parametrize("raw, expected", [
    # the spec's worked examples
    ("The Nokia.", "nokia"),
    ("Two", "2"),
    ("it's 3.", "it 's 3"),
    ("1,000", "1000"),
    ("coca-cola", "coca cola"),
    ("U.S.A", "usa"),
])
def test_spec_worked_examples(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("what?!", "what"),               # '?' dropped first, then '!' (no space beside it) -> space
    ("left - right", "left right"),   # '-' beside a space is deleted, the double space collapses
    ("(555) 123", "555 123"),         # ')' has a space beside it: deleted; '(' has none: space
    ("x=y", "x y"),                   # '=' with no space beside it -> space
    ("3.5", "3.5"),                   # a period followed by a digit stays
    ("v2.", "v2"),                    # a trailing period goes
    ("new\nyork\tcity", "new york city"),
    ("  Padded  ", "padded"),
])
def test_punctuation(raw, expected):
    assert normalize_answer(raw) == expected


def test_period_strip_count_quirk():
    # sub("", text, re.UNICODE) passes 32 as `count`: of 40 periods, 8 survive.
    assert normalize_answer("." * 40) == "." * 8
    assert normalize_answer("a.b.c") == "abc"


@pytest.mark.parametrize("raw, expected", [
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("Whats that", "what's that"),
    ("somebody'd", "somebodyd"),  # the reference table's own typo, kept
    ("Im", "im"),                 # capitalised keys never match after lower-casing
])
def test_contractions(raw, expected):
    assert normalize_answer(raw) == expected


def test_contraction_table_is_complete():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert CONTRACTIONS["twas"] == "'twas"


@pytest.mark.parametrize("raw, expected", [
    ("a cat and the dog", "cat and dog"),
    ("An apple", "apple"),
    ("the", ""),
    ("theatre", "theatre"),       # whole words only
    ("none", "0"),                # "none" is in the reference's number map
    ("ten", "10"),
    ("eleven", "eleven"),
    ("one two three", "1 2 3"),
])
def test_articles_and_numbers(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_score_leave_one_out(k, expected):
    # k matching annotators of 10. Leave-one-out: k=1 -> 9 subsets hold the match (1/3 each), one
    # does not: 9/3/10 = 0.3; k=2 -> (8*2/3 + 2*1/3)/10 = 0.6; k=3 -> (7*1 + 3*2/3)/10 = 0.9.
    answers = ["nokia"] * k + ["samsung"] * (10 - k)
    assert vqa_accuracy("nokia", answers) == pytest.approx(expected, abs=1e-12)


def test_both_sides_normalised():
    answers = ["Nokia", "nokia.", "the nokia"] + ["samsung"] * 7
    assert vqa_accuracy("  The NOKIA. ", answers) == pytest.approx(0.9)
    assert vqa_accuracy("two", ["2"] * 10) == 1.0


def test_no_prediction_scores_zero():
    assert vqa_accuracy(None, ["a"] * 10) == 0.0
    assert vqa_accuracy("", ["nokia"] * 10) == 0.0
