"""Where a run's results go on disk, so that no run overwrites another one's numbers.

    <out>/<model-tag>/<bench>/                the benchmark's default protocol and split, every item
        shards/                               the resume log of EVERY run of this model and benchmark
        predictions.jsonl accuracy.csv run.json
    <out>/<model-tag>/<bench>/<variant>/      any other protocol, split, generation length or a --limit
        predictions.jsonl accuracy.csv run.json

A variant folder is named by what differs from the default, in this order, joined by "+":
`protocol-<name>`, `split-<name>`, `max-new-tokens-<n>`, `limit-<n>`; e.g. `protocol-official`,
`split-test+limit-100`. Different protocols and splits are different numbers, so each has its own
files; a `--limit N` smaller than the benchmark is a quick look, so it never replaces (shrinks) a
full result. All variants share `shards/` (the config fingerprint and item keys keep them apart),
so a limited run's predictions are reused by the full run that follows, and the reverse.
"""

from __future__ import annotations

from pathlib import Path

VARIANT_PREFIXES = ("protocol-", "split-", "max-new-tokens-", "limit-")


def variant_name(bench, protocol: str, split: str | None, limit: int | None, n_items: int,
                 max_new_tokens: int | None = None) -> str:
    """'' for the default view (default protocol and split, all items), else the variant folder name."""
    parts = []
    if protocol != bench.protocols[0]:
        parts.append(f"protocol-{protocol}")
    if split is not None and bench.splits and split != bench.splits[0]:
        parts.append(f"split-{split}")
    if max_new_tokens:  # the caller passes None for a benchmark that generates nothing
        parts.append(f"max-new-tokens-{max_new_tokens}")
    if limit is not None and limit < n_items:
        parts.append(f"limit-{limit}")
    return "+".join(parts)


def results_dir(bench_dir: Path, variant: str) -> Path:
    return Path(bench_dir) / variant if variant else Path(bench_dir)


def is_variant_folder(name: str) -> bool:
    return all(part.startswith(VARIANT_PREFIXES) for part in name.split("+"))


def benchmark_folder(results_folder: Path) -> Path:
    """The `<out>/<model-tag>/<bench>` folder a results folder belongs to (itself or its parent)."""
    folder = Path(results_folder)
    return folder.parent if is_variant_folder(folder.name) else folder
