"""Benchmark names (and aliases) -> adapter instances."""

from __future__ import annotations

from flexeval.errors import FlexEvalError

from .base import Benchmark


def _load_all() -> dict[str, Benchmark]:
    from .vstar import VStar

    found: list[Benchmark] = [VStar()]
    # Optional modules are registered as they land; each defines one Benchmark subclass.
    for module, cls in (
        ("magnifierbench", "MagnifierBench"),
        ("textvqa", "TextVQA"),
        ("rsvqa", "RSVQAHRBEN"),
        ("gqa", "GQA"),  # analysis only (flexeval grounding): not in ORDER, so not in --bench all / the report
    ):
        try:
            mod = __import__(f"{__package__}.{module}", fromlist=[cls])
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(module):
                continue
            raise
        found.append(getattr(mod, cls)())
    return {b.name: b for b in found}


BENCHMARKS: dict[str, Benchmark] = _load_all()
ORDER = ["vstar", "magnifierbench", "textvqa", "rsvqa_hrben"]


def list_benchmarks() -> list[Benchmark]:
    return [BENCHMARKS[n] for n in ORDER if n in BENCHMARKS]


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower().replace("-", "_")
    for b in BENCHMARKS.values():
        if key == b.name or key in b.aliases:
            return b
    known = ", ".join(b.name for b in list_benchmarks())
    raise FlexEvalError(f"unknown benchmark '{name}'; choose one of: {known} (or 'all')")
