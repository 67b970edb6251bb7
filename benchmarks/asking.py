"""Requests for the file-based and plugin benchmarks, built in ONE place.

A request carries the benchmark's question (and options, limits); today the execution core still
takes the LLaVA v1 conversation text as `prompt` as well, so it is added here and only here. When
requests stop carrying the template (the model applies its own), the `prompt=` arguments go and
nothing else changes. Plugins should build their requests with these two functions.
"""

from __future__ import annotations

from flexeval.requests import Choice, Generate

from .conversation import llava_v1_prompt


def ask(question: str, max_new_tokens: int = 32) -> Generate:
    """Greedy generation of an answer to `question` (the whole user turn, answer-format text included)."""
    return Generate(prompt=llava_v1_prompt(question), question=question, max_new_tokens=max_new_tokens)


def choose(question: str, options: tuple[str, ...] | list[str]) -> Choice:
    """The mean-NLL score of each option as the answer to `question` (prediction: the lowest)."""
    return Choice(prompt=llava_v1_prompt(question), question=question, options=tuple(options))
