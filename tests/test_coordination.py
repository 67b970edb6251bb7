"""The control plane on an in-process c10d store (torch.distributed.HashStore, the same API as the
TCPStore torchrun runs): start agreement, the progress bound, errors, values computed once, shared
file digests. The real launches are in tests/test_distributed.py."""

from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace

import pytest
import torch.distributed as dist

from flexeval import coordination
from flexeval.coordination import Board
from flexeval.distributed import share_digests
from flexeval.errors import FlexEvalError
from flexeval.results import digests


def _boards(world=2, floor=60.0):
    store = dist.HashStore()
    return [Board(dist.PrefixStore("flexeval/r0", store), r, world, f"node{r}", floor, 5.0, "test store")
            for r in range(world)]


def _together(boards, call):
    """call(board) on every board at once (the ranks); the results, or the exception each raised."""
    out = [None] * len(boards)

    def one(i):
        try:
            out[i] = call(boards[i])
        except Exception as e:  # noqa: BLE001 - returned to the test
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(boards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_ranks_that_see_different_data_are_refused_at_the_start():
    boards = _boards()
    try:
        facts = [{"config": "c1", "items": "aaaa"}, {"config": "c1", "items": "bbbb"}]
        errors = _together(boards, lambda b: b.agree(facts[b.rank]))
        for e in errors:  # every rank refuses, naming the rank, its node and the fact
            assert isinstance(e, FlexEvalError) and "rank 1 on node1 sees a different 'items' than rank 0 on node0" \
                in str(e) and "'bbbb' vs 'aaaa'" in str(e)
    finally:
        for b in boards:
            b.close()


def test_the_bound_follows_the_longest_batch_above_the_floor_and_names_the_stuck_rank():
    me = _boards(floor=4.0)[0]
    me.close()
    running = {"state": "running", "batches": 3, "host": "node1", "pid": 4242, "first_batch_s": 9.0,
               "max_batch_s": 0.5}
    infos = [{"state": "done", "batches": 6, "first_batch_s": 3.0, "max_batch_s": 2.5}, running]
    assert me.bound(infos, running) == pytest.approx(coordination.FACTOR * 2.5)  # 12.5 s: later batches
    starting = {"state": "running", "batches": 0}
    assert me.bound(infos + [starting], starting) == pytest.approx(coordination.FACTOR * 9.0)  # first batches
    assert me.bound([running | {"first_batch_s": 0.1}], running) == 4.0  # short batches: the floor
    assert me.stale_peer(infos, now=100.0) is None  # first look
    assert me.stale_peer(infos, now=112.0) is None  # 12 s < 12.5 s
    moved = [infos[0], running | {"batches": 4}]
    assert me.stale_peer(moved, now=112.4) is None  # progress: the clock starts again
    assert me.stale_peer(moved, now=124.0) is None
    message = me.stale_peer(moved, now=125.0)
    assert message.startswith("rank 1 on node1 (pid 4242) finished no batch for 13 s (after 4 batches; "
                              "the bound is 12 s")
    done = [infos[0], running | {"batches": 4, "state": "done"}]
    assert me.stale_peer(done, now=500.0) is None  # a finished rank is never stuck


def test_a_failed_rank_stops_every_peer_with_its_error(monkeypatch):
    monkeypatch.setattr(coordination, "CHECK_EVERY_S", 0.05)
    boards = _boards()
    try:
        _together(boards, lambda b: b.agree({"config": "c"}))
        boards[1].fail(RuntimeError("CUDA error: an illegal memory access"))
        boards[1].fail(RuntimeError("a second, derived error"))  # only the first is published
        deadline = time.monotonic() + 10
        while boards[0].error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(FlexEvalError, match=r"rank 1 on node1 \(pid \d+\) stopped the run: RuntimeError: CUDA "
                                                r"error: an illegal memory access\. Every finished batch is kept"):
            boards[0].progress(items=2, batch_s=0.1)
    finally:
        for b in boards:
            b.close()


def test_a_rank_blocked_in_a_model_call_is_ended_by_its_own_watcher(monkeypatch):
    monkeypatch.setattr(coordination, "CHECK_EVERY_S", 0.05)
    monkeypatch.setattr(coordination, "GRACE_S", 0.2)
    exits = []
    monkeypatch.setattr(coordination.os, "_exit", exits.append)
    boards = _boards()
    try:
        _together(boards, lambda b: b.agree({"config": "c"}))
        boards[0].fail("rank 1 on node1 (pid 7) finished no batch for 61 s")
        deadline = time.monotonic() + 10
        while not exits and time.monotonic() < deadline:  # rank 1's main thread never looks (it is "hung")
            time.sleep(0.02)
        assert exits[:1] == [1] and "stopped the run: rank 1 on node1 (pid 7) finished no batch" in boards[1].error
    finally:
        for b in boards:
            b.close()


def test_finish_waits_for_every_rank_and_returns_their_records():
    boards = _boards()
    try:
        _together(boards, lambda b: b.agree({"config": "c"}))
        boards[1].progress(items=2, batch_s=0.25)
        boards[1].progress(items=4, batch_s=0.125)
        infos = _together(boards, lambda b: b.finish({"items": 2 + b.rank, "wall_s": 1.5}))
        assert infos[0] == infos[1]
        assert [(i["rank"], i["items"], i["state"]) for i in infos[0]] == [(0, 2, "done"), (1, 3, "done")]
        assert infos[0][1]["first_batch_s"] == 0.25 and infos[0][1]["max_batch_s"] == 0.125
        assert infos[0][1]["host"] == "node1" and infos[0][1]["batches"] == 2
    finally:
        for b in boards:
            b.close()


def test_a_value_is_computed_by_rank_0_alone_and_shared():
    boards = _boards(world=3)
    calls = []
    try:
        got = _together(boards, lambda b: b.share("answer", lambda: calls.append(b.rank) or {"x": [b.rank, 7]}))
        assert calls == [0] and got == [{"x": [0, 7]}] * 3
    finally:
        for b in boards:
            b.close()


def _cluster(board):
    return SimpleNamespace(board=board, rank=board.rank, host=board.host)


def test_file_digests_are_read_by_rank_0_and_taken_by_ranks_that_see_the_same_size_and_mtime(tmp_path, monkeypatch):
    same, touched, other = tmp_path / "weights.bin", tmp_path / "tok.model", tmp_path / "img.png"
    for p, data in ((same, b"w" * 5000), (touched, b"t" * 300), (other, b"i" * 200)):
        p.write_bytes(data)
    boards = _boards()
    try:
        # rank 0's table as another node would see it: `same` identical, `touched` copied later
        real = {str(p.resolve()): p for p in (same, touched, other)}
        planted = "f" * 64
        table = {k: [p.stat().st_size, p.stat().st_mtime_ns, planted] for k, p in real.items()}
        table[str(touched.resolve())][1] += 10**9
        digests.forget()
        boards[0].share("file digests", lambda: table)  # what rank 0 computed
        share_digests(_cluster(boards[1]), [same, touched], [[SimpleNamespace(image=str(other))]])
        assert digests.sha256_file(same) == planted  # taken from rank 0, not read here
        assert digests.sha256_file(other) == planted
        assert digests.sha256_file(touched) != planted  # another mtime: hashed here
        table[str(same.resolve())][0] += 1
        boards[0].share("file digests", lambda: table)  # the next run's table: another size on rank 0's node
        with pytest.raises(FlexEvalError, match=r"weights.bin has 5000 bytes on node1 \(rank 1\) but 5001 on rank 0"):
            share_digests(_cluster(boards[1]), [same], [])
    finally:
        digests.forget()
        for b in boards:
            b.close()


def test_the_digest_cache_on_disk_saves_reading_a_file_again(tmp_path, monkeypatch):
    monkeypatch.setenv(digests.CACHE_ENV, str(tmp_path / "cache"))
    digests.forget()
    big = tmp_path / "model.safetensors"
    big.write_bytes(os.urandom(digests.MIN_CACHED_BYTES + 1))
    first = digests.sha256_file(big)
    line = json.loads((tmp_path / "cache" / "digests.jsonl").read_text().splitlines()[-1])
    assert (line["p"], line["s"], line["d"]) == (str(big.resolve()), big.stat().st_size, first)
    digests.forget()  # a new process: only the disk cache remains

    def no_read(path, size):
        raise AssertionError("read again")

    monkeypatch.setattr(digests, "_sha256", no_read)
    assert digests.sha256_file(big) == first
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 1))  # touched: read again
    with pytest.raises(AssertionError, match="read again"):
        digests.sha256_file(big)
    monkeypatch.setenv(digests.CACHE_ENV, "off")
    assert digests.cache_path() is None
    digests.forget()


def test_a_rank_that_never_reaches_the_start_is_named_after_the_start_timeout():
    store = dist.HashStore()
    me = Board(dist.PrefixStore("flexeval/r0", store), 0, 3, "node0", 60.0, 0.5, "test store")
    other = Board(dist.PrefixStore("flexeval/r0", store), 2, 3, "node2", 60.0, 0.5, "test store")
    try:
        errors = _together([me, other], lambda b: b.agree({"config": "c"}))  # rank 1 never comes
        for e in errors:
            assert isinstance(e, FlexEvalError) and "waited 0.5 s for every rank to reach the start of the " \
                "benchmark (missing: ranks [1]" in str(e)
    finally:
        me.close()
        other.close()


def test_rank_0_refuses_to_merge_shards_it_cannot_see(tmp_path):
    from flexeval.distributed import RankStatus

    boards = _boards()
    try:
        _together(boards, lambda b: b.agree({"config": "c"}))
        statuses = []
        for b in boards:  # each "node" has its own --out: rank 1's shard is not in rank 0's folder
            shard = tmp_path / f"node{b.rank}" / "shards" / f"cfg.rank{b.rank}.jsonl"
            shard.parent.mkdir(parents=True)
            shard.write_bytes(b'{"key": "k"}\n' * (b.rank + 1))
            cluster = SimpleNamespace(board=b, rank=b.rank, host=b.host, device="cpu", is_main=b.rank == 0)
            statuses.append(RankStatus(cluster, {"items": 1, "estimated_cost": 1.0}, shard))
        results = _together(statuses, lambda s: s.finish(model_s=0.5))
        assert isinstance(results[1], list) and results[1][1]["shard_bytes"] == 26
        assert isinstance(results[0], FlexEvalError)
        assert "rank 1 on node1 wrote 26 bytes to" in str(results[0]) and "but rank 0 on node0 sees 0" in \
            str(results[0]) and "--out must be one folder every node sees" in str(results[0])
    finally:
        for b in boards:
            b.close()


def test_sixty_four_ranks_start_progress_and_finish_through_one_tcp_store():
    """64 ranks (threads here) on a real TCPStore: the start agreement, 3 batches each, and the end;
    every rank gets every record. One connection per 8 ranks ("node"): a connection takes ~0.15 s
    to open here, and the requests are the same."""
    from datetime import timedelta

    server = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=60))
    world = 64
    nodes = [dist.TCPStore("127.0.0.1", server.port, None, False, timeout=timedelta(seconds=60)) for _ in range(8)]
    boards = [Board(dist.PrefixStore("flexeval/r0", nodes[r // 8]), r, world, f"node{r // 8}", 60.0, 60.0,
                    "test store") for r in range(world)]

    def rank(b):
        b.agree({"config": "c", "items": "same"})
        for k in range(3):
            b.progress(items=2 * (k + 1), batch_s=0.01 * (b.rank + 1) + k)
        return b.finish({"items": 6, "wall_s": 1.0})

    try:
        results = _together(boards, rank)
        for got in results:
            assert [(i["rank"], i["batches"], i["state"]) for i in got] == [(r, 3, "done") for r in range(world)]
            assert got[63]["first_batch_s"] == 0.64 and got[63]["max_batch_s"] == 2.64 and got[63]["host"] == "node7"
    finally:
        for b in boards:
            b.close()
