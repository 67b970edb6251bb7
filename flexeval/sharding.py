"""Splitting a benchmark's pending items across ranks by estimated cost, not by count.

Every rank computes the same split from the same inputs (no communication): the pending items
are cut into the batches a single process would run (consecutive runs of `batch_size` items,
aligned to the item's position in the benchmark), each batch gets an estimated cost, and the
batches go to ranks by greedy longest-processing-time (largest first, to the least loaded rank).
Whole batches, aligned the way one process forms them, are the unit so that every rank feeds the
model exactly the batches a one-process run feeds it: same shapes, same padding, hence the same
floating-point numbers, and a run stopped and resumed at another world size still forms them.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass

from flexeval.benchmarks.base import ImageRef, ImageSource
from flexeval.requests import Choice, Generate

# Relative costs, in units of one prefill token. Rough, and only their ratios matter: they rank
# items of one benchmark against each other. A decode step of one item costs about as much as a
# few prefill tokens on a GPU (memory-bound); an image costs its fixed visual tokens in the
# model plus its decoding in a data worker, which grows with the encoded size.
CHARS_PER_TOKEN = 4  # LLaMA tokenizer on English prompts; avoids tokenizing every item twice
IMAGE_TOKENS = 576  # the 336 px view's visual tokens; the high-res keys are a fixed extra per image
DECODE_STEP = 8.0
IMAGE_BYTES_PER_UNIT = 4096


def image_nbytes(image: ImageSource | None) -> int:
    """Encoded size of an image without decoding it (0 when absent or unreadable)."""
    if image is None:
        return 0
    if isinstance(image, ImageRef):
        return image.nbytes
    if isinstance(image, bytes):
        return len(image)
    try:
        return os.stat(image).st_size
    except OSError:
        return 0  # the data worker reports it as a skipped row


def item_cost(request: Generate | Choice, image: ImageSource | None) -> float:
    """Estimated work of one item: prompt (+ image) prefill, options or new tokens, image decode."""
    # the question's text; the model's chat template adds about the same few tokens to every item
    prompt_tokens = len(request.question) / CHARS_PER_TOKEN + (IMAGE_TOKENS if image is not None else 0)
    cost = prompt_tokens + image_nbytes(image) / IMAGE_BYTES_PER_UNIT
    if isinstance(request, Choice):  # every option is a continuation of the prompt, scored token by token
        cost += sum(len(option) / CHARS_PER_TOKEN + 1 for option in request.options)
    else:  # greedy replies usually stop early, but a batch runs as long as its longest reply may
        cost += DECODE_STEP * request.max_new_tokens
    return cost


def batch_units(pending: list[int], batch_size: int) -> list[list[int]]:
    """Pending item positions grouped by the batch (position // batch_size) a one-process run puts
    them in, in order. After a resume at the same batch size every group is whole (the store writes
    whole batches), so the groups are exactly the batches one process would form."""
    units: dict[int, list[int]] = {}
    for i in pending:
        units.setdefault(i // batch_size, []).append(i)
    return [units[k] for k in sorted(units)]


def assign_by_cost(costs: list[float], world_size: int) -> list[list[int]]:
    """Unit indices per rank, greedy longest-processing-time: largest cost first (ties: lower index),
    each to the rank with the least load so far (ties: lower rank). Deterministic. Each rank's list
    is sorted, so a rank runs its units in benchmark order."""
    heap = [(0.0, r) for r in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for u in sorted(range(len(costs)), key=lambda u: (-costs[u], u)):
        load, r = heapq.heappop(heap)
        shares[r].append(u)
        heapq.heappush(heap, (load + costs[u], r))
    return [sorted(s) for s in shares]


@dataclass(frozen=True)
class Share:
    """One rank's part of a benchmark's pending items."""

    items: list[int]  # positions into the benchmark's item list, in order
    estimated_cost: float
    costs_by_rank: list[float]  # every rank's estimated cost (the same on every rank)


def rank_share(pending: list[int], costs: list[float], batch_size: int, world_size: int, rank: int) -> Share:
    """This rank's items: `costs[i]` is item i's estimate (indexed like the benchmark's items)."""
    units = batch_units(pending, batch_size)
    unit_costs = [sum(costs[i] for i in unit) for unit in units]
    shares = assign_by_cost(unit_costs, world_size)
    by_rank = [round(sum(unit_costs[u] for u in s), 3) for s in shares]
    return Share([i for u in shares[rank] for i in units[u]], by_rank[rank], by_rank)
