"""Real torchrun launches on the CPU (gloo): same files as one process, resume across world sizes,
a rank killed mid-run, `flexeval grounding` on the same core. Few launches on little data: each
launch starts torch in every rank."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flexeval.benchmarks import get_benchmark
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.model.tiny import make_tiny_model

BATCH = "2"


def _run_here(model_dir, data, out) -> dict:
    """One plain process, in this one, on one thread like each torchrun rank (OMP_NUM_THREADS=1); a
    second thread only spins on this shared CPU (4x the CPU time here, same bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_benchmarks(RunConfig(bench="vstar", model=str(model_dir), data_dir=data, out=out, workers=0,
                                        quiet=True, batch_size=BATCH))[0]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model_dir = make_tiny_model(root / "tiny", seed=0)
    data = get_benchmark("vstar").make_sample(root / "vstar", n=6, seed=2)  # 12 items: 6 batches of 2
    one = root / "one"
    _run_here(model_dir, data, one)
    return root, model_dir, data, one / "tiny" / "vstar"


def _args(env, out):
    root, model_dir, data, _ = env
    return ["-m", "flexeval", "run", "--bench", "vstar", "--model", str(model_dir), "--data-dir", str(data),
            "--out", str(out), "--batch-size", BATCH, "--workers", "0", "--quiet"]


def _launch(env, out, nproc, args=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *(args or _args(env, out))]
    run_env = os.environ | {"HF_HUB_OFFLINE": "1", "FLEXEVAL_PEER_TIMEOUT_S": "20", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _shard_keys(bench_dir: Path) -> list[str]:
    keys = []
    for shard in sorted((bench_dir / "shards").glob("*.jsonl")):
        for line in shard.read_bytes().split(b"\n"):
            try:
                keys.append(json.loads(line)["key"])
            except ValueError:
                pass  # empty or torn last line
    return keys


def _wait_for_records(proc, bench_dir: Path, ranks: list[int], freeze=False, timeout=300) -> dict[int, int]:
    """Wait until each of `ranks` has appended a batch to its shard; return the ranks' pids (status files).
    freeze: SIGSTOP each rank as soon as it has written, so none finishes its share before the kill."""
    frozen = set()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stdout.read()
        pids, written = {}, set()
        for f in (bench_dir / "ranks").glob("*.json") if (bench_dir / "ranks").is_dir() else []:
            try:
                pids[json.loads(f.read_text())["rank"]] = json.loads(f.read_text())["pid"]
            except ValueError:
                continue  # being replaced
        for f in (bench_dir / "shards").glob("*.rank*.jsonl") if (bench_dir / "shards").is_dir() else []:
            if b"\n" in f.read_bytes():
                written.add(int(f.name.rsplit(".rank", 1)[1].split(".")[0]))
        for r in written & set(ranks) & set(pids) if freeze else ():
            if r not in frozen:
                os.kill(pids[r], signal.SIGSTOP)
                frozen.add(r)
        if all(r in pids and r in written for r in ranks):
            return pids
        time.sleep(0.02)
    raise AssertionError("the ranks wrote no predictions in time")


def _finish(proc, timeout=300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_killed_at_two_ranks_continued_at_three_and_at_one_gives_the_one_process_files(env):
    root, _, _, one = env
    out = root / "resume"
    bench_dir = out / "tiny" / "vstar"
    proc = _launch(env, out, 2)
    pids = _wait_for_records(proc, bench_dir, ranks=[0, 1], freeze=True)
    for pid in pids.values():  # SIGKILL every rank, then the launcher
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    _finish(proc)
    kept = _shard_keys(bench_dir)
    assert 2 <= len(kept) < 12 and len(set(kept)) == len(kept)  # stopped mid-run, whole batches kept
    assert not (bench_dir / "predictions.jsonl").exists()
    shutil.copytree(out, root / "resume1")

    code, log = _finish(_launch(env, out, 3))  # continue at three ranks
    assert code == 0, log
    assert (bench_dir / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    assert (bench_dir / "accuracy.csv").read_bytes() == (one / "accuracy.csv").read_bytes()
    run = json.loads((bench_dir / "run.json").read_text())
    assert run["timing"]["reused"] == len(kept) and run["timing"]["ran"] == 12 - len(kept)
    ranks = run["distributed"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2]
    assert sum(r["items"] for r in ranks) == 12 - len(kept)
    assert 0 <= run["distributed"]["finish_spread_s"] <= max(r["wall_s"] for r in ranks)
    keys = _shard_keys(bench_dir)
    assert len(keys) == len(set(keys)) == 12  # nothing run twice, nothing lost
    assert f"{run['config_fingerprint']}.rank2.jsonl" in {p.name for p in (bench_dir / "shards").iterdir()}

    # the same stopped state continued by one plain process
    root1 = root / "resume1"
    again = _run_here(env[1], env[2], root1)
    assert again["timing"]["reused"] == len(kept)
    assert (root1 / "tiny" / "vstar" / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()


def test_a_rank_killed_mid_run_fails_the_run_naming_it_and_its_work_is_reused(env):
    root, _, _, one = env
    out = root / "fault"
    bench_dir = out / "tiny" / "vstar"
    proc = _launch(env, out, 2)
    pids = _wait_for_records(proc, bench_dir, ranks=[1])
    os.kill(pids[1], signal.SIGKILL)
    code, log = _finish(proc)  # bounded: communicate() raises if the launcher hangs
    assert code != 0
    assert "rank: 1" in log or "rank 1" in log, log  # torchrun's or our own report names the rank
    kept = _shard_keys(bench_dir)
    assert len(kept) >= 2 and len(set(kept)) == len(kept)
    again = _run_here(env[1], env[2], out)
    assert again["timing"]["reused"] == len(kept)
    assert (bench_dir / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()


def test_grounding_at_two_ranks_gives_the_one_process_records(env):
    """`flexeval grounding` is a work of the execution core: two ranks share its batches and rank 0
    merges, to the bytes of one process."""
    from flexeval.analysis.grounding_run import GroundingConfig, run_grounding

    root, model_dir, _, _ = env
    data = get_benchmark("gqa").make_sample(root / "gqa", n=4)  # 4 questions: 2 batches of 2
    opts = {"layers": "7,9", "map_size": 6, "batch_size": BATCH, "workers": 0, "quiet": True}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1)
    try:
        one = run_grounding(GroundingConfig(model=str(model_dir), data_dir=data, out=root / "g1", **opts))
    finally:
        torch.set_num_threads(threads)
    args = ["-m", "flexeval", "grounding", "--model", str(model_dir), "--data-dir", str(data), "--out",
            str(root / "g2"), "--layers", "7,9", "--map-size", "6", "--batch-size", BATCH, "--workers", "0", "--quiet"]
    code, log = _finish(_launch(env, root / "g2", 2, args))
    assert code == 0, log
    folders = [root / g / "tiny" / "gqa" / "grounding" for g in ("g1", "g2")]
    assert (folders[1] / "predictions.jsonl").read_bytes() == (folders[0] / "predictions.jsonl").read_bytes()
    run = json.loads((folders[1] / "run.json").read_text())
    assert [(r["rank"], r["items"]) for r in run["distributed"]["ranks"]] == [(0, 2), (1, 2)]
    two = json.loads((root / "g2" / "tiny" / "grounding.json").read_text())
    assert two["layers"] == one["layers"] and all(r["n"] == 4 for r in two["layers"])
