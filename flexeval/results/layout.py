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

VARIANT_PREFIXES = ("protocol-", "split-", "max-new-tokens-", "limit-", "items-")


def variant_name(bench, protocol: str, split: str | None, items: str | None = None,
                 max_new_tokens: int | None = None) -> str:
    """'' for the default view (default protocol and split, all items), else the variant folder name.
    `items`: None for every item, else `limit-<n>` (the first n) or `items-<n>-<digest>` (an --ids /
    --offset selection), from `items_part`."""
    parts = []
    if protocol != bench.protocols[0]:
        parts.append(f"protocol-{protocol}")
    if split is not None and bench.splits and split != bench.splits[0]:
        parts.append(f"split-{split}")
    if max_new_tokens:  # the caller passes None for a benchmark that generates nothing
        parts.append(f"max-new-tokens-{max_new_tokens}")
    if items:
        parts.append(items)
    return "+".join(parts)


def items_part(selected_ids: list[str], n_loaded: int, first_n: bool) -> str | None:
    """The variant part of an item selection: None (all items), `limit-<n>` (the first n, from
    --limit alone) or `items-<n>-<digest of the ids>` (--ids, --offset)."""
    import hashlib

    if len(selected_ids) == n_loaded:
        return None
    if first_n:
        return f"limit-{len(selected_ids)}"
    digest = hashlib.sha256("\n".join(selected_ids).encode()).hexdigest()[:8]
    return f"items-{len(selected_ids)}-{digest}"


def results_dir(bench_dir: Path, variant: str) -> Path:
    return Path(bench_dir) / variant if variant else Path(bench_dir)


def is_variant_folder(name: str) -> bool:
    return all(part.startswith(VARIANT_PREFIXES) for part in name.split("+"))


def benchmark_folder(results_folder: Path) -> Path:
    """The `<out>/<model-tag>/<bench>` folder a results folder belongs to (itself or its parent)."""
    folder = Path(results_folder)
    return folder.parent if is_variant_folder(folder.name) else folder
