"""Requests for the file-based and plugin benchmarks, built in ONE place.

A request carries the benchmark's question (and options, limits), never a chat template: the model
applies its own (FlexLlava LLaVA-1.5's v1 conversation, a transformers model its chat template).
Plugins should build their requests with these two functions.
"""

from __future__ import annotations

from flexeval.requests import Choice, Generate

from .wording import SHORT_ANSWER_SUFFIX


def ask(question: str, max_new_tokens: int = 32) -> Generate:
    """Greedy generation of an answer to `question` (the whole user turn, answer-format text included)."""
    return Generate(question=question, max_new_tokens=max_new_tokens)


def ask_short(question: str, max_new_tokens: int) -> Generate:
    """`ask` with the short-answer instruction (SHORT_ANSWER_SUFFIX) after the question."""
    return ask(question + SHORT_ANSWER_SUFFIX, max_new_tokens)


class ShortAnswer:
    """A benchmark (mixin, before Benchmark) whose request is its question verbatim with the short-answer
    instruction, answered greedily in at most `max_new_tokens` tokens."""

    max_new_tokens: int

    def request(self, sample, protocol: str) -> Generate:
        self.check_protocol(protocol)
        return ask_short(sample.question, self.max_new_tokens)


def choose(question: str, options: tuple[str, ...] | list[str]) -> Choice:
    """The mean-NLL score of each option as the answer to `question` (prediction: the lowest)."""
    return Choice(question=question, options=tuple(options))
