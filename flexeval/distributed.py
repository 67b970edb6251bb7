"""Several processes, one evaluation: torch.distributed under torchrun / accelerate launch / SLURM.

The launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; torchrun and
`accelerate launch` set them all) says who we are; no environment, one process, nothing changes.

Per benchmark:
1. every rank loads the benchmark and reads the prediction store, then `Cluster.agree` (a gloo
   all-gather) checks that all ranks see the same items, config and finished work; it is also
   the barrier before anyone writes, so every rank's pending list is the same;
2. `flexeval.sharding` gives each rank a cost-balanced share (same answer on every rank);
3. each rank runs its share into its own store shard (`shards/<config>.rank<r>.jsonl`), and keeps
   a status file `ranks/<config>.rank<r>.json` fresh from a heartbeat thread;
4. the rank marks itself done (with its items, estimated cost and wall time) and waits for every
   peer's "done"; rank 0 alone then merges the shards and writes predictions.jsonl, accuracy.csv
   and run.json (with the per-rank figures).

No collective runs while ranks work, so nothing can hang in NCCL: ranks watch each other's status
files instead. A rank that raises writes "failed" and its error; a rank that dies stops its
heartbeat. Either way the others stop within FLEXEVAL_PEER_TIMEOUT_S (default 120 s) with an
error naming the rank, and everything already written stays in the shards for the rerun. Status
files, like the shards, need `--out` on a filesystem every node sees (for one node: any disk).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from flexeval.errors import FlexEvalError
from flexeval.results.store import fingerprint, write_json_atomic
from flexeval.sharding import Share, item_cost, rank_share

PEER_TIMEOUT_ENV = "FLEXEVAL_PEER_TIMEOUT_S"  # a silent peer is declared lost after this long
START_TIMEOUT_ENV = "FLEXEVAL_START_TIMEOUT_S"  # all ranks must reach a benchmark's start within this
CHECK_EVERY_S = 2.0  # how often a working rank looks at its peers (between batches) and beats


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise FlexEvalError(f"environment variable {name}={raw!r} must be a number of seconds") from e
    if value <= 0:
        raise FlexEvalError(f"environment variable {name}={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class LaunchEnv:
    """Who this process is, as the launcher says (torchrun, accelerate launch, a SLURM script)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environ(cls, env=None) -> LaunchEnv:
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        values = {}
        for name, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "0"),
                              ("LOCAL_WORLD_SIZE", None)):
            raw = env.get(name, default)
            if raw is None and name == "LOCAL_WORLD_SIZE":
                raw = env["WORLD_SIZE"]  # accelerate on one node sets no LOCAL_WORLD_SIZE
            if raw is None:
                raise FlexEvalError(f"WORLD_SIZE is set but {name} is not; launch with torchrun or "
                                    "`accelerate launch`, which set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT")
            try:
                values[name] = int(raw)
            except ValueError as e:
                raise FlexEvalError(f"environment variable {name}={raw!r} is not an integer") from e
        launch = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
        if not 0 <= launch.rank < launch.world_size:
            raise FlexEvalError(f"RANK={launch.rank} is outside WORLD_SIZE={launch.world_size}")
        if launch.world_size > 1:
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in env:
                    raise FlexEvalError(f"WORLD_SIZE={launch.world_size} but {name} is not set; the launcher "
                                        "(torchrun, accelerate launch) sets it, or export it in the job script")
        return launch


def rank_device(requested: str, launch: LaunchEnv) -> str:
    """The device of this rank: `cuda:LOCAL_RANK` when CUDA is used, else the CPU."""
    import torch

    if launch.world_size == 1:
        return requested
    if requested not in ("auto", "cuda", "cpu"):
        raise FlexEvalError(f"--device {requested} names one device, but {launch.world_size} processes run; "
                            "use --device auto or cuda (each rank takes cuda:LOCAL_RANK) or cpu")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise FlexEvalError("--device cuda but CUDA is not available on this node")
    if launch.local_rank >= torch.cuda.device_count():
        raise FlexEvalError(f"local rank {launch.local_rank} has no GPU: this node sees "
                            f"{torch.cuda.device_count()}; start at most that many processes per node")
    torch.cuda.set_device(launch.local_rank)
    return f"cuda:{launch.local_rank}"


class Cluster:
    """This process's place in the run: the process group and the per-benchmark coordination."""

    def __init__(self, launch: LaunchEnv, device: str):
        self.launch, self.device = launch, device
        self.rank, self.world_size = launch.rank, launch.world_size
        self.is_main = self.rank == 0
        self.host = socket.gethostname()
        self.peer_timeout = _env_seconds(PEER_TIMEOUT_ENV, 120.0)
        self.start_timeout = _env_seconds(START_TIMEOUT_ENV, 600.0)
        self._group = None
        self.current: RankStatus | None = None  # the benchmark being worked on, for failure reports
        if self.world_size > 1:
            import torch.distributed as dist

            # The model never exchanges tensors between ranks; NCCL is there for tools that expect a
            # CUDA default group. Coordination goes over gloo, whose calls take a timeout.
            backend = "nccl" if device.startswith("cuda") else "gloo"
            timeout = timedelta(seconds=self.start_timeout)
            if not dist.is_initialized():
                dist.init_process_group(backend=backend, timeout=timeout)
            self._group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
            self.backend = backend
        else:
            self.backend = None

    @classmethod
    def from_environ(cls, requested_device: str) -> Cluster:
        launch = LaunchEnv.from_environ()
        return cls(launch, rank_device(requested_device, launch))

    def default_workers(self, workers: int | None) -> int | None:
        """Image-decoding workers per rank: the node's cores shared by the ranks on it."""
        if workers is not None or self.world_size == 1:
            return workers
        return max(0, min(8, (os.cpu_count() or 1) // self.launch.local_world_size - 1))

    def agree(self, what: dict) -> str:
        """All-gather `what` (JSON-able facts every rank must share); returns rank 0's run nonce.

        A rank that sees different facts (other data, another results folder, other finished work)
        is an error naming it; a rank that never arrives is one after FLEXEVAL_START_TIMEOUT_S.
        """
        nonce = uuid.uuid4().hex
        if self.world_size == 1:
            return nonce
        import torch.distributed as dist

        mine = {"nonce": nonce, "host": self.host, "facts": what}
        gathered: list = [None] * self.world_size
        try:
            # gloo's monitored barrier names, on rank 0, the ranks that did not arrive in time
            dist.monitored_barrier(group=self._group, timeout=timedelta(seconds=self.start_timeout),
                                   wait_all_ranks=True)
            dist.all_gather_object(gathered, mine, group=self._group)
        except RuntimeError as e:
            raise FlexEvalError(f"rank {self.rank}: not every rank reached the start of the benchmark within "
                                f"{self.start_timeout:g} s ({START_TIMEOUT_ENV}) or a rank stopped: {e}") from e
        for r, other in enumerate(gathered):
            for key, value in other["facts"].items():
                if value != gathered[0]["facts"].get(key):
                    raise FlexEvalError(
                        f"rank {r} on {other['host']} sees a different '{key}' than rank 0 on {gathered[0]['host']} "
                        f"({value!r} vs {gathered[0]['facts'].get(key)!r}): every rank must read the same data "
                        "and write to the same --out folder (a filesystem shared by all nodes)")
        return gathered[0]["nonce"]

    def begin(self, bench_dir: Path, config_fp: str, nonce: str, stats: dict) -> RankStatus:
        self.current = RankStatus(Path(bench_dir) / "ranks", config_fp, self, nonce, stats)
        return self.current

    def report_failure(self, error: BaseException) -> None:
        if self.current is not None and self.current.state == "running":
            self.current.fail(error)

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class RankStatus:
    """This rank's status file for one benchmark, kept fresh by a heartbeat thread, and the view of
    its peers' files. Each rank writes only its own file (atomically); everyone reads all."""

    def __init__(self, folder: Path, config_fp: str, cluster: Cluster, nonce: str, stats: dict):
        self.folder, self.config_fp, self.cluster, self.nonce = folder, config_fp, cluster, nonce
        self.state = "running"
        self.info = {"rank": cluster.rank, "host": cluster.host, "pid": os.getpid(), "device": cluster.device,
                     "nonce": nonce, "state": "running", "beat": 0, **stats,
                     "started_unix": round(time.time(), 3)}
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: dict[int, tuple[object, float]] = {}  # rank -> (last beat seen, when, our clock)
        self._last_check = 0.0
        if cluster.world_size == 1:
            self._thread = None
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread = threading.Thread(target=self._beat, name="flexeval-heartbeat", daemon=True)
        self._thread.start()

    def path(self, rank: int) -> Path:
        return self.folder / f"{self.config_fp}.rank{rank}.json"

    def _write(self) -> None:
        with self._lock:
            write_json_atomic(self.path(self.cluster.rank), self.info)

    def _beat(self) -> None:
        interval = min(CHECK_EVERY_S, self.cluster.peer_timeout / 5)
        while not self._stop.wait(interval):
            with self._lock:
                if self.state != "running":
                    return
                self.info["beat"] += 1
                write_json_atomic(self.path(self.cluster.rank), self.info)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def progress(self, done_items: int) -> None:
        self.info["done_items"] = done_items

    def _final(self, **fields) -> None:
        self.stop()
        self.info.update(fields)
        self.state = self.info["state"]
        if self.cluster.world_size > 1:
            self._write()

    def fail(self, error: BaseException) -> None:
        self._final(state="failed", error=f"{type(error).__name__}: {error}"[:2000],
                    wall_s=round(time.monotonic() - self._t0, 3))

    # -- watching the peers ----------------------------------------------------------------------

    def _peer(self, rank: int) -> dict | None:
        try:
            info = json.loads(self.path(rank).read_text())
        except (OSError, ValueError):
            return None  # not written yet (or an old run's file being replaced)
        return info if info.get("nonce") == self.nonce else None

    def check_peers(self) -> list[dict] | None:
        """Raise if a peer failed or fell silent; return every rank's status once all are done."""
        now = time.monotonic()
        infos = []
        for r in range(self.cluster.world_size):
            if r == self.cluster.rank:
                infos.append(self.info)
                continue
            info = self._peer(r)
            if info is not None and info["state"] == "failed":
                raise FlexEvalError(f"rank {r} on {info['host']} (pid {info['pid']}) failed: {info.get('error')}. "
                                    "Finished predictions of every rank are kept; run the same command again "
                                    "to continue.")
            beat = None if info is None else (info["state"], info["beat"])
            last = self._seen.get(r)
            if last is None or last[0] != beat:
                self._seen[r] = (beat, now)
            elif beat is None or beat[0] == "running":
                silent = now - last[1]
                if silent > self.cluster.peer_timeout:
                    where = "never wrote its status" if info is None else \
                        f"on {info['host']} (pid {info['pid']}) sent no heartbeat"
                    raise FlexEvalError(
                        f"rank {r} {where} for {silent:.0f} s ({PEER_TIMEOUT_ENV}={self.cluster.peer_timeout:g}): "
                        f"it was killed, ran out of memory or lost its node. Finished predictions are kept in "
                        f"{self.folder.parent / 'shards'}; run the same command again to continue.")
            infos.append(info)
        if all(i is not None and i["state"] == "done" for i in infos):
            return infos
        return None

    def maybe_check(self) -> None:
        """Between batches: look at the peers at most every CHECK_EVERY_S (so a lost peer stops us)."""
        if self.cluster.world_size > 1 and time.monotonic() - self._last_check >= CHECK_EVERY_S:
            self._last_check = time.monotonic()
            self.check_peers()

    def finish(self, **stats) -> list[dict]:
        """Mark this rank done and wait for all; every rank's status, ordered by rank."""
        self._final(state="done", wall_s=round(time.monotonic() - self._t0, 3),
                    finished_unix=round(time.time(), 3), **stats)
        if self.cluster.world_size == 1:
            return [self.info]
        while True:
            infos = self.check_peers()
            if infos is not None:
                return infos
            time.sleep(0.2)


def rank_summary(infos: list[dict]) -> dict:
    """run.json's "distributed" block: per rank items, estimated cost, wall time; the finish spread."""
    keep = ("rank", "host", "device", "items", "estimated_cost", "wall_s", "model_s", "finished_unix")
    ranks = [{k: i.get(k) for k in keep} for i in infos]
    finished = [i["finished_unix"] for i in infos]
    costs = [i["estimated_cost"] for i in infos]
    mean_cost = sum(costs) / len(costs) if costs else 0
    return {"world_size": len(infos), "ranks": ranks,
            "finish_spread_s": round(max(finished) - min(finished), 3),
            "cost_imbalance": round(max(costs) / mean_cost, 4) if mean_cost else None}


class RankProgress:
    """This rank's progress: a tqdm bar at position = rank (several ranks share one terminal), or,
    with --quiet or no terminal, a log line per rank every LOG_EVERY_S. Each update also beats the
    rank's status and looks at the peers, so a lost peer stops this rank within seconds."""

    LOG_EVERY_S = 30.0

    def __init__(self, bench: str, total: int, status: RankStatus, quiet: bool):
        from tqdm import tqdm

        self.bench, self.total, self.status, self.quiet = bench, total, status, quiet
        cluster = status.cluster
        self.rank, self.multi = cluster.rank, cluster.world_size > 1
        desc = f"{bench} [rank {cluster.rank}]" if self.multi else bench
        show = not quiet and (not self.multi or sys.stderr.isatty())
        self.bar = tqdm(total=total, desc=desc, unit="sample", disable=not show, dynamic_ncols=True,
                        position=cluster.rank if self.multi else None)
        self.lines = self.multi and not show and not quiet
        self.done, self._last_log = 0, time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        self.status.progress(self.done)
        if self.lines and time.monotonic() - self._last_log >= self.LOG_EVERY_S:
            self._last_log = time.monotonic()
            print(f"[{self.bench}] rank {self.rank}: {self.done}/{self.total}", file=sys.stderr, flush=True)
        self.status.maybe_check()

    def close(self) -> None:
        self.bar.close()


def take_share(cluster: Cluster, bench_dir: Path, config_fp: str, keys: list[str], pending: list[int],
               samples: list, requests: list, batch_size: int) -> tuple[Share, RankStatus]:
    """Check that all ranks agree on the work, then this rank's cost-balanced share and status file."""
    nonce = cluster.agree({"config": config_fp, "items": fingerprint(keys), "pending": fingerprint(pending),
                           "batch_size": batch_size})
    costs = [0.0] * len(keys)
    for i in pending:
        costs[i] = item_cost(requests[i], samples[i].image)
    share = rank_share(pending, costs, batch_size, cluster.world_size, cluster.rank)
    status = cluster.begin(bench_dir, config_fp, nonce,
                           {"items": len(share.items), "estimated_cost": share.estimated_cost, "done_items": 0})
    if cluster.world_size > 1:
        print(f"[rank {cluster.rank} on {cluster.host}, {cluster.device}] {len(share.items)} of {len(pending)} "
              f"pending items, estimated cost {share.estimated_cost:g} (ranks: {share.costs_by_rank})",
              file=sys.stderr, flush=True)
    return share, status
