"""How the question text reaches the prompt: verbatim (the release scripts) or as lmms-eval edits it.

`--question-style release` (default): the release's question, verbatim.
`--question-style lmms-eval`: the edits lmms-eval's task files make to the question before the
prompt is built. Of our benchmarks only TextVQA has one: its `textvqa_doc_to_text` writes
`doc["question"].capitalize()`, and Python's str.capitalize also lower-cases every other letter
("What does the Nokia sign say?" -> "What does the nokia sign say?"), so names and OCR-like words
in the question change case. lmms-eval's V* task leaves the question as is (its letter prompt is
our `--protocol letter`); MagnifierBench and RSVQA-HRBEN have no lmms-eval task, so the style
changes nothing there (the runner says so).

Only the request (the prompt) sees the styled question; predictions.jsonl keeps the verbatim one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from flexeval.errors import FlexEvalError

from .base import Sample

QUESTION_STYLES = ("release", "lmms-eval")

_LMMS_EVAL_EDITS: dict[str, Callable[[str], str]] = {"textvqa": str.capitalize}


def check_question_style(style: str | None) -> str:
    style = style or QUESTION_STYLES[0]
    if style not in QUESTION_STYLES:
        raise FlexEvalError(f"--question-style {style!r}: choose one of {', '.join(QUESTION_STYLES)}")
    return style


def changes_questions(bench_name: str, style: str) -> bool:
    return check_question_style(style) == "lmms-eval" and bench_name in _LMMS_EVAL_EDITS


def styled_sample(bench_name: str, sample: Sample, style: str) -> Sample:
    """The sample whose question the prompt should use under `style`."""
    if not changes_questions(bench_name, style):
        return sample
    return replace(sample, question=_LMMS_EVAL_EDITS[bench_name](sample.question))
