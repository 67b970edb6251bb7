"""Real torchrun launches on the CPU (gloo, the c10d store): the one-process files from two torchrun
agents (two "nodes"), a node lost and the job rerun on one node at another rank count, and the
faults: a dead rank (torchrun's to handle), a frozen rank (SIGSTOP) and a hung rank (blocked in a
model call), both caught by flexeval's progress bound. Few launches on little data: each launch
starts torch in every rank (seconds each). The store-level logic: tests/test_coordination.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from flexeval.benchmarks import get_benchmark
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.model.tiny import make_tiny_model

BATCH = "2"
# the progress bound's floor in the fault tests: low enough for short tests, high enough that a rank
# starved of CPU on a busy 2-core machine (its first batch took 3 s at a load of 9) is not "stuck"
FLOOR = "10"
HANG_SCRIPT = Path(__file__).parent / "helpers" / "hang_rank.py"


def _run_here(model_dir, data, out) -> dict:
    """One plain process, in this one, on one thread like each torchrun rank (OMP_NUM_THREADS=1)."""
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


class Launch:
    """A torchrun agent whose output is read line by line while it runs."""

    def __init__(self, env, out, nproc, peer_timeout="60", node=None, script=None, extra=None):
        root, model_dir, data, _ = env
        where = ["--standalone"] if node is None else [
            "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{node[0]}", "--rdzv-id", node[1]]
        target = [str(script)] if script else ["-m", "flexeval"]
        cmd = [sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(nproc),
               "--monitor-interval", "0.2", *target, "run", "--bench", "vstar", "--model", str(model_dir),
               "--data-dir", str(data), "--out", str(out), "--batch-size", BATCH, "--workers", "0", "--quiet"]
        run_env = os.environ | {"HF_HUB_OFFLINE": "1", "FLEXEVAL_PEER_TIMEOUT_S": peer_timeout,
                                "OMP_NUM_THREADS": "1", **(extra or {})}
        self.proc = subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def workers(self) -> dict[int, int]:
        """RANK -> pid of this agent's worker processes (from /proc)."""
        found = {}
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                    continue
                environ = dict(x.split("=", 1) for x in Path(f"/proc/{d}/environ").read_text().split("\0") if "=" in x)
                found[int(environ["RANK"])] = int(d)
            except (OSError, ValueError, KeyError, IndexError):
                continue
        return found

    def finish(self, timeout=240) -> int:
        code = self.proc.wait(timeout=timeout)  # bounded: raises if the job hangs
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        for pid in self.workers().values():
            os.kill(pid, signal.SIGKILL)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.finish()


def _written(bench_dir: Path) -> set[int]:
    """Ranks whose shard holds at least one finished batch."""
    shards = bench_dir / "shards"
    return {int(f.name.rsplit(".rank", 1)[1].split(".")[0]) for f in shards.glob("*.rank*.jsonl")
            if b"\n" in f.read_bytes()} if shards.is_dir() else set()


def _wait(cond, launches, timeout=240, what="the ranks to write"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        for launch in launches:
            assert launch.proc.poll() is None, launch.log
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}" + "".join(f"\n{launch.log}" for launch in launches))


def _shard_keys(bench_dir: Path) -> list[str]:
    keys = []
    for shard in sorted((bench_dir / "shards").glob("*.jsonl")):
        for line in shard.read_bytes().split(b"\n"):
            try:
                keys.append(json.loads(line)["key"])
            except ValueError:
                pass  # empty or torn last line
    return keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(env, out, rdzv_id, peer_timeout="60"):
    """Two agents of one job, one worker each; the first hosts the c10d rendezvous store (it is
    listening before the second starts)."""
    port = _free_port()
    first = Launch(env, out, 1, peer_timeout, node=(port, rdzv_id))

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    _wait(listening, [first], timeout=120, what="the first agent's store")
    return [first, Launch(env, out, 1, peer_timeout, node=(port, rdzv_id))]


def test_two_torchrun_agents_give_the_one_process_files(env):
    root, _, _, one = env
    out = root / "nodes"
    nodes = _two_nodes(env, out, "flexeval-two-nodes")
    assert [n.finish() for n in nodes] == [0, 0], nodes[0].log + nodes[1].log
    bench_dir = out / "tiny" / "vstar"
    assert (bench_dir / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    run = json.loads((bench_dir / "run.json").read_text())
    assert [r["rank"] for r in run["distributed"]["ranks"]] == [0, 1]
    assert sum(r["items"] for r in run["distributed"]["ranks"]) == 12
    assert all(r["startup_s"] > 0 and r["batches"] >= 1 for r in run["distributed"]["ranks"])
    shown = sorted(p.name for p in bench_dir.iterdir() if not p.name.startswith("."))  # the run lock is hidden
    assert shown == ["accuracy.csv", "predictions.jsonl", "run.json", "shards", "target_coverage.csv"]  # no status files


def test_a_lost_node_ends_the_job_and_one_node_at_three_ranks_then_one_process_continue(env):
    root, model_dir, data, one = env
    out = root / "lost"
    bench_dir = out / "tiny" / "vstar"
    nodes = _two_nodes(env, out, "flexeval-lost-node", peer_timeout=FLOOR)
    workers = _wait(lambda: [n.workers() for n in nodes] if all(n.workers() for n in nodes) else None, nodes,
                    what="both workers")
    (lost_rank, lost_pid), = workers[1].items()  # the node that does not host the store
    _wait(lambda: lost_rank in _written(bench_dir), nodes)
    os.kill(lost_pid, signal.SIGSTOP)  # before it can finish its share (polled fast)
    nodes[1].kill()  # the node: its agent and its worker
    assert nodes[0].finish(timeout=120) != 0  # ends by itself: the lost rank's progress stopped
    assert re.search(rf"rank {lost_rank} on \S+ \(pid {lost_pid}\) finished no batch", nodes[0].log), nodes[0].log
    kept = _shard_keys(bench_dir)
    assert 2 <= len(kept) < 12 and len(set(kept)) == len(kept)  # stopped mid-run, whole batches kept
    assert not (bench_dir / "predictions.jsonl").exists()
    shutil.copytree(out, root / "lost1")

    again = Launch(env, out, 3)  # the job rerun on one node, at three ranks
    assert again.finish() == 0, again.log
    assert (bench_dir / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    assert (bench_dir / "accuracy.csv").read_bytes() == (one / "accuracy.csv").read_bytes()
    run = json.loads((bench_dir / "run.json").read_text())
    assert run["timing"]["reused"] == len(kept) and run["timing"]["ran"] == 12 - len(kept)
    assert [r["rank"] for r in run["distributed"]["ranks"]] == [0, 1, 2]
    assert sum(r["items"] for r in run["distributed"]["ranks"]) == 12 - len(kept)
    keys = _shard_keys(bench_dir)
    assert len(keys) == len(set(keys)) == 12  # nothing run twice, nothing lost

    copy = root / "lost1"  # the same stopped state continued by one plain process
    assert _run_here(model_dir, data, copy)["timing"]["reused"] == len(kept)
    assert (copy / "tiny" / "vstar" / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()


def test_a_dead_rank_is_torchruns_to_stop_and_its_finished_batches_are_kept(env):
    root, _, _, _ = env
    out = root / "dead"
    bench_dir = out / "tiny" / "vstar"
    job = Launch(env, out, 2, peer_timeout="120")  # flexeval's own bound is far away: torchrun must act
    pid = _wait(lambda: job.workers().get(1), [job], what="the workers")
    _wait(lambda: 1 in _written(bench_dir), [job])  # polled fast: rank 1 must not finish its share first
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert job.finish() != 0
    assert time.monotonic() - killed < 60, job.log  # torchrun's agent, not flexeval's 120 s bound
    assert "finished no batch" not in job.log and re.search(r"rank\s*:\s*1|local_rank: 1", job.log), job.log
    kept = _shard_keys(bench_dir)  # whole batches, each once (the rerun: the lost-node test)
    assert len(kept) >= 2 and len(kept) % 2 == 0 and len(set(kept)) == len(kept)


def _stopped_within_bound(job: Launch, since: float, rank: int) -> float:
    """Wait for flexeval's error naming `rank`; check it came within the bound it states (+ the
    watcher's period and exit time); return the bound."""
    pattern = rf"rank {rank} on \S+ \(pid \d+\) finished no batch for (\d+) s .*the bound is (\d+) s"
    found = _wait(lambda: re.search(pattern, job.log), [], timeout=120, what=f"the progress error:\n{job.log}")
    bound = float(found.group(2))
    assert float(found.group(1)) > bound - 1
    assert time.monotonic() - since < bound + 15, job.log
    return bound


def test_a_frozen_rank_is_named_and_the_live_ranks_stop_within_the_bound(env):
    root, _, _, _ = env
    out = root / "frozen"
    bench_dir = out / "tiny" / "vstar"
    job = Launch(env, out, 2, peer_timeout=FLOOR)
    pids = _wait(lambda: (lambda w: w if len(w) == 2 else None)(job.workers()), [job], what="the workers")
    _wait(lambda: 1 in _written(bench_dir), [job])  # polled fast: rank 1 must not finish its share first
    os.kill(pids[1], signal.SIGSTOP)
    bound = _stopped_within_bound(job, time.monotonic(), rank=1)
    assert bound >= float(FLOOR)
    _wait(lambda: not Path(f"/proc/{pids[0]}").exists() or "Z" in Path(f"/proc/{pids[0]}/stat").read_text()
          .rsplit(")", 1)[1].split()[0], [], timeout=30, what="rank 0 to exit")
    assert "Every finished batch is kept" in job.log
    os.kill(pids[1], signal.SIGKILL)  # what torchrun does 30 s after its SIGTERM, which a stopped process holds
    assert job.finish() != 0
    kept = _shard_keys(bench_dir)
    assert len(kept) >= 2 and len(set(kept)) == len(kept)


def test_a_rank_hung_in_a_model_call_ends_the_job_within_the_bound(env):
    root, _, _, _ = env
    out = root / "hung"
    bench_dir = out / "tiny" / "vstar"
    job = Launch(env, out, 2, peer_timeout=FLOOR, script=HANG_SCRIPT,
                 extra={"FLEXEVAL_TEST_HANG_RANK": "1", "FLEXEVAL_TEST_HANG_AFTER": "1"})
    _wait(lambda: "hangs in a model call" in job.log, [job], what="the hook")
    hung = time.monotonic()
    bound = _stopped_within_bound(job, hung, rank=1)
    assert job.finish(timeout=60) != 0  # the whole job ends: nobody kills anything by hand
    assert time.monotonic() - hung < bound + 25, job.log
    kept = _shard_keys(bench_dir)  # rank 1's batch before the hang is kept
    assert 1 in _written(bench_dir) and len(kept) >= 2 and len(set(kept)) == len(kept)
