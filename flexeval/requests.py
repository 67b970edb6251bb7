"""The two request kinds: what a benchmark asks of a model, and all a model needs to answer it.

Neutral ground between benchmarks/ (which builds requests) and model/ (which answers them): both
import this module and never each other. Like lm-evaluation-harness's `Instance`, a request is
the whole question; the runner pairs it with the decoded image and hands both to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Generate:
    """Greedy generation for `question` until EOS or `max_new_tokens`."""

    question: str  # the user turn as the benchmark words it (answer-format suffix included), no template
    max_new_tokens: int = 32
    image_mode: str = "pad"  # "pad" (release: pad to square) | "crop" (CLIP processor: resize + centre crop)
    system: str | None = None  # a protocol's own system text (official V*); None: the model's default


@dataclass(frozen=True)
class Choice:
    """Mean-NLL score of each option as the reply to `question`; prediction = argmin."""

    question: str
    options: tuple[str, ...]
    append_eos: bool = False  # official V*: the option is followed by </s>, counted in the mean
    image_mode: str = "pad"
    system: str | None = None


Request = Union[Generate, Choice]
