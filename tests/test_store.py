"""The prediction store: append/resume, torn writes, concurrent ranks, determinism; meta helpers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from flexeval.errors import FlexEvalError
from flexeval.results.runinfo import data_fingerprint, environment_info
from flexeval.results.store import PredictionStore, fingerprint, read_records, write_json_atomic


def rec(i: int, **extra) -> dict:
    return {"key": f"k{i:03d}", "id": f"item/{i}", "prediction": f"answer é {i}", "score": i % 2, **extra}


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_append_completed_finalize(tmp_path):
    s = PredictionStore(tmp_path, "cfgA")
    assert s.completed() == {}
    s.append([rec(0), rec(1)])
    s.append([rec(2)])
    assert sorted(s.completed()) == ["k000", "k001", "k002"]
    out = s.finalize(["k002", "k000", "k001"])
    assert [r["key"] for r in out] == ["k002", "k000", "k001"]
    assert lines_of(tmp_path / "predictions.jsonl") == [rec(2), rec(0), rec(1)]
    # the file is UTF-8, not \u-escaped, one record per line
    assert "answer é 2" in (tmp_path / "predictions.jsonl").read_text(encoding="utf-8")
    assert (tmp_path / "shards" / "cfgA.rank0.jsonl").is_file()


def test_finalize_reports_missing_keys_and_writes_nothing(tmp_path):
    s = PredictionStore(tmp_path, "cfgA")
    s.append([rec(0)])
    with pytest.raises(FlexEvalError) as e:
        s.finalize(["k000", "k001", "k002"])
    assert "k001" in str(e.value) and "k002" in str(e.value) and "2 of 3" in str(e.value)
    assert not (tmp_path / "predictions.jsonl").exists()


def test_torn_last_line_recovered(tmp_path):
    s = PredictionStore(tmp_path, "cfgA")
    s.append([rec(0), rec(1)])
    s.close()
    shard = tmp_path / "shards" / "cfgA.rank0.jsonl"
    full = shard.read_bytes()
    with open(shard, "ab") as f:  # a crash halfway through writing rec(2)
        f.write(json.dumps(rec(2)).encode()[:17])
    assert sorted(PredictionStore(tmp_path, "cfgA").completed()) == ["k000", "k001"]

    s2 = PredictionStore(tmp_path, "cfgA")
    s2.append([rec(2), rec(3)])
    # the torn tail was cut: the file is the old complete lines plus the new ones, nothing glued
    assert shard.read_bytes().startswith(full)
    assert [r["key"] for r in lines_of(shard)] == ["k000", "k001", "k002", "k003"]
    out = s2.finalize([f"k{i:03d}" for i in range(4)])
    assert out == [rec(0), rec(1), rec(2), rec(3)]


def test_torn_tail_of_several_bad_lines_and_nul_bytes(tmp_path):
    # a power loss can leave NUL-filled blocks, even with a newline among them
    s = PredictionStore(tmp_path, "cfgA")
    s.append([rec(0)])
    s.close()
    shard = tmp_path / "shards" / "cfgA.rank0.jsonl"
    with open(shard, "ab") as f:
        f.write(b"\0\0\0\n\0\0")
    s2 = PredictionStore(tmp_path, "cfgA")
    assert list(s2.completed()) == ["k000"]
    s2.append([rec(1)])
    assert [r["key"] for r in lines_of(shard)] == ["k000", "k001"]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    shard = tmp_path / "shards" / "cfgA.rank0.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text(json.dumps(rec(0)) + "\n{oops\n" + json.dumps(rec(1)) + "\n")
    with pytest.raises(FlexEvalError, match="line 2"):
        PredictionStore(tmp_path, "cfgA").completed()


def test_duplicate_key_kept_once_first_wins(tmp_path):
    s = PredictionStore(tmp_path, "cfgA")
    s.append([rec(0), rec(1)])
    s.append([rec(1, note="second copy")])  # crash after write, before the runner noted it
    done = s.completed()
    assert len(done) == 2 and "note" not in done["k001"]
    out = s.finalize(["k000", "k001"])
    assert len(lines_of(tmp_path / "predictions.jsonl")) == 2 and "note" not in out[1]


def test_changed_config_never_reuses_old_predictions(tmp_path):
    a = PredictionStore(tmp_path, "cfgA")
    a.append([rec(0), rec(1)])
    a.close()
    b = PredictionStore(tmp_path, "cfgB")
    assert b.completed() == {}
    b.append([rec(0, prediction="new")])
    assert b.completed()["k000"]["prediction"] == "new"
    # the other config's shard is left alone
    assert len(lines_of(tmp_path / "shards" / "cfgA.rank0.jsonl")) == 2
    assert len(PredictionStore(tmp_path, "cfgA").completed()) == 2


def test_finalize_byte_identical_whatever_batching_and_ranks(tmp_path):
    records = [rec(i, option_nll=[0.1 * i, 1.0 / 3.0]) for i in range(10)]
    keys = [r["key"] for r in records]

    one = tmp_path / "one"
    s = PredictionStore(one, "cfg")
    s.append(records)
    s.finalize(keys)

    many = tmp_path / "many"
    shuffled = records[7:] + records[:7]
    for b in range(0, 10, 3):
        PredictionStore(many, "cfg").append(shuffled[b:b + 3])
    PredictionStore(many, "cfg").finalize(keys)

    ranks = tmp_path / "ranks"
    for r in range(3):
        st = PredictionStore(ranks, "cfg", rank=r, world_size=3)
        for i in range(r, 10, 3):
            st.append([records[i]])
        st.close()
    PredictionStore(ranks, "cfg", rank=0, world_size=3).finalize(keys)

    data = (one / "predictions.jsonl").read_bytes()
    assert data == (many / "predictions.jsonl").read_bytes() == (ranks / "predictions.jsonl").read_bytes()
    assert data == b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in records)


def _rank_worker(bench_dir, rank, world, n, barrier):
    store = PredictionStore(bench_dir, "cfg", rank=rank, world_size=world)
    mine = list(range(rank, n, world))
    barrier.wait()
    for start in range(0, len(mine), 2):
        batch = mine[start:start + 2]
        store.append([rec(i, rank=rank) for i in batch])
        # reading the other rank's shard mid-write must never fail
        done = store.completed()
        assert all(f"k{i:03d}" in done for i in mine[: start + len(batch)])
        time.sleep(0.001)
    store.close()


def test_two_ranks_writing_at_once(tmp_path):
    ctx = mp.get_context("fork")
    n, world = 40, 2
    barrier = ctx.Barrier(world)
    procs = [ctx.Process(target=_rank_worker, args=(tmp_path, r, world, n, barrier)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    keys = [f"k{i:03d}" for i in range(n)]
    out = PredictionStore(tmp_path, "cfg").finalize(keys)
    assert [r["key"] for r in out] == keys
    assert [r["rank"] for r in out] == [i % 2 for i in range(n)]
    written = lines_of(tmp_path / "predictions.jsonl")
    assert [r["key"] for r in written] == keys  # each key exactly once, in order


def test_resume_with_fewer_ranks_sees_all_shards(tmp_path):
    for r in range(4):
        PredictionStore(tmp_path, "cfg", rank=r, world_size=4).append([rec(r)])
    assert sorted(PredictionStore(tmp_path, "cfg", rank=1, world_size=2).completed()) == [
        "k000", "k001", "k002", "k003"]


def test_second_writer_of_same_shard_is_refused(tmp_path):
    a = PredictionStore(tmp_path, "cfg")
    a.append([rec(0)])
    with pytest.raises(FlexEvalError, match="another process"):
        PredictionStore(tmp_path, "cfg").append([rec(1)])
    a.close()


def test_fingerprint_canonical():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint({})) == 16 and int(fingerprint({}), 16) >= 0


def test_write_json_atomic_leaves_no_temp(tmp_path):
    write_json_atomic(tmp_path / "run.json", {"b": 1, "a": tmp_path})
    write_json_atomic(tmp_path / "run.json", {"b": 2})
    assert json.loads((tmp_path / "run.json").read_text()) == {"b": 2}
    assert os.listdir(tmp_path) == ["run.json"]


def test_read_records_ignores_torn_tail(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(rec(0)) + "\n" + '{"key": "k0')
    assert read_records(p) == [rec(0)]


def test_environment_info_fields():
    info = environment_info()
    assert info["python"].count(".") == 2
    assert set(info["packages"]) >= {"torch", "transformers", "numpy", "pillow", "sentencepiece"}
    assert info["packages"]["numpy"] is not None
    assert isinstance(info["cuda_available"], bool)
    json.dumps(info)


def test_git_info_is_the_checkouts_commit():
    """The tests run from the checkout (editable install): the commit is the one git itself reports."""
    import subprocess

    import flexeval

    root = Path(flexeval.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    info = environment_info()["git"]
    assert info is not None and info["commit"] == head.stdout.strip()
    assert isinstance(info["dirty"], bool)


def test_data_fingerprint(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.json").write_text('{"q": 1}')
    (d / "sub" / "a.jpg").write_bytes(b"\xff" * 100)
    (d / ".cache").mkdir()
    (d / ".cache" / "x.json").write_text("ignored")
    fp1 = data_fingerprint([d])
    assert fp1["files"] == 2 and fp1["bytes"] == 108 and fp1["content_hashed"] == 1

    copy = tmp_path / "copy" / "data"
    (copy / "sub").mkdir(parents=True)
    (copy / "sub" / "a.json").write_text('{"q": 1}')
    (copy / "sub" / "a.jpg").write_bytes(b"\xff" * 100)
    assert data_fingerprint([copy])["sha256"] == fp1["sha256"]  # location and mtime do not count

    (copy / "sub" / "a.json").write_text('{"q": 2}')  # same size, other content
    assert data_fingerprint([copy])["sha256"] != fp1["sha256"]
    (d / "sub" / "a.jpg").write_bytes(b"\xff" * 101)
    assert data_fingerprint([d])["sha256"] != fp1["sha256"]
    assert data_fingerprint([tmp_path / "nope"])["roots"][0]["missing"] is True


def _append_forever(bench_dir):
    store = PredictionStore(bench_dir, "cfg")
    i = 0
    while True:  # big batches so a kill often lands inside a write
        store.append([rec(j, pad="x" * 5000) for j in range(i, i + 50)])
        i += 50


def test_killed_writer_then_resume(tmp_path):
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_append_forever, args=(tmp_path,))
    p.start()
    shard = PredictionStore(tmp_path, "cfg").shard_path
    # kill once a few batches are on disk (the writer never stops by itself), wherever it is then
    while not (shard.exists() and shard.stat().st_size > 3 * 50 * 5000):
        assert p.is_alive()
    os.kill(p.pid, 9)
    p.join()
    store = PredictionStore(tmp_path, "cfg")
    done = store.completed()
    n = len(done)
    assert n > 0 and list(done) == [f"k{i:03d}" for i in range(n)]  # a clean prefix, in order
    store.append([rec(j, pad="x" * 5000) for j in range(n, n + 3)])
    keys = [f"k{i:03d}" for i in range(n + 3)]
    assert [r["key"] for r in store.finalize(keys)] == keys
