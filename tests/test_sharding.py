"""Cost-balanced shard assignment and the peer watch of distributed runs (no processes launched)."""

from __future__ import annotations

import itertools

import pytest

from flexeval.benchmarks.base import ImageRef
from flexeval.errors import FlexEvalError
from flexeval.requests import Choice, Generate
from flexeval.sharding import assign_by_cost, batch_units, item_cost, rank_share


def _loads(costs, shares):
    return [sum(costs[u] for u in s) for s in shares]


def _best_makespan(costs, ranks):
    best = float("inf")
    for labels in itertools.product(range(ranks), repeat=len(costs)):
        loads = [0.0] * ranks
        for c, r in zip(costs, labels):
            loads[r] += c
        best = min(best, max(loads))
    return best


def test_skewed_items_get_equal_cost_not_equal_count():
    # two long generations among many short choices: an even count split puts both on one rank
    costs = [900.0, 880.0] + [100.0] * 18
    shares = assign_by_cost(costs, 2)
    assert sorted(u for s in shares for u in s) == list(range(20))  # each unit exactly once
    assert all(s == sorted(s) for s in shares)
    loads = _loads(costs, shares)
    assert max(loads) - min(loads) <= 100.0  # within one short item (the best is 1800 vs 1780)
    assert {0, 1} & set(shares[0]) and {0, 1} & set(shares[1])  # the two long ones are split
    by_count = [list(range(10)), list(range(10, 20))]  # what a count split would do
    by_count_loads = _loads(costs, by_count)
    assert max(by_count_loads) - min(by_count_loads) == 1580.0  # 2580 vs 1000
    assert assign_by_cost(costs, 2) == shares  # deterministic


@pytest.mark.parametrize("ranks", [2, 3])
def test_greedy_is_within_the_lpt_bound_of_the_optimum(ranks):
    costs = [37.0, 5.0, 91.0, 12.0, 12.0, 64.0, 3.0, 50.0, 28.0]
    loads = _loads(costs, assign_by_cost(costs, ranks))
    best = _best_makespan(costs, ranks)  # brute force over every assignment
    assert best <= max(loads) <= (4 / 3 - 1 / (3 * ranks)) * best
    assert sum(loads) == sum(costs)


def test_units_are_the_batches_one_process_forms_even_after_a_resume():
    # items 0..10 at batch size 4 -> batches [0-3] [4-7] [8-10]; batch [4-7] was done by an earlier run
    pending = [0, 1, 2, 3, 8, 9, 10]
    assert batch_units(pending, 4) == [[0, 1, 2, 3], [8, 9, 10]]
    costs = [1.0] * 11
    a, b = (rank_share(pending, costs, 4, 2, r) for r in (0, 1))
    assert sorted(a.items + b.items) == pending and not set(a.items) & set(b.items)
    assert {tuple(a.items), tuple(b.items)} == {(0, 1, 2, 3), (8, 9, 10)}
    assert a.costs_by_rank == b.costs_by_rank and sorted(a.costs_by_rank) == [3.0, 4.0]
    # more ranks than batches: the extra rank gets nothing, the others whole batches
    shares = [rank_share(pending, costs, 4, 3, r).items for r in range(3)]
    assert sorted(map(len, shares)) == [0, 3, 4]


def test_item_cost_counts_prompt_options_new_tokens_and_image_size():
    prompt = "x" * 400  # 100 tokens at 4 characters a token
    ref = ImageRef("f.parquet", 0, "image", None, "0" * 64, 40960)
    short = item_cost(Choice(question=prompt, options=("ab", "cd")), ref)
    assert short == pytest.approx(100 + 576 + 40960 / 4096 + 2 * (2 / 4 + 1))
    long_options = item_cost(Choice(question=prompt, options=("ab", "cd", "a longer option text")), ref)
    assert long_options - short == pytest.approx(20 / 4 + 1)
    gen = item_cost(Generate(question=prompt, max_new_tokens=10), None)  # no image: no visual tokens
    assert gen == pytest.approx(100 + 8 * 10)
    assert item_cost(Generate(question=prompt, max_new_tokens=512), None) > gen


# the peer watch (liveness by progress): tests/test_coordination.py


# ---------------------------------------------------------------- the launcher's environment

def test_launch_environment_of_torchrun_accelerate_and_mistakes():
    from flexeval.distributed import LaunchEnv

    assert LaunchEnv.from_environ({}) == LaunchEnv(0, 1, 0, 1)  # no launcher: one process
    torchrun = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert LaunchEnv.from_environ(torchrun) == LaunchEnv(5, 16, 1, 4)
    no_local_world = {k: v for k, v in torchrun.items() if k != "LOCAL_WORLD_SIZE"} | {"WORLD_SIZE": "8"}
    assert LaunchEnv.from_environ(no_local_world).local_world_size == 8  # one node: all ranks local
    with pytest.raises(FlexEvalError, match="RANK is not"):
        LaunchEnv.from_environ({k: v for k, v in torchrun.items() if k != "RANK"})
    with pytest.raises(FlexEvalError, match="MASTER_ADDR is not set"):
        LaunchEnv.from_environ({k: v for k, v in torchrun.items() if k != "MASTER_ADDR"})
    with pytest.raises(FlexEvalError, match="RANK=16 is outside WORLD_SIZE=16"):
        LaunchEnv.from_environ(torchrun | {"RANK": "16"})
    with pytest.raises(FlexEvalError, match="LOCAL_RANK='x' is not an integer"):
        LaunchEnv.from_environ(torchrun | {"LOCAL_RANK": "x"})
