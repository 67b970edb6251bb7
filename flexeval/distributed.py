"""Several processes, one evaluation: torch.distributed under torchrun / accelerate launch / SLURM.

The launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; torchrun and
`accelerate launch` set them all) says who we are; no environment, one process, nothing changes.

The control plane is the c10d store the launcher's rendezvous runs (flexeval/coordination.py); a
gloo process group is started on it, and no tensor crosses between ranks, so no NCCL is needed.
The shared `--out` holds shards and results only. Per benchmark:
1. every rank loads the benchmark and reads the prediction store, then `Board.agree` checks through
   the store that all ranks see the same items, config and finished work; it is also the barrier
   before anyone writes, so every rank's pending list is the same;
2. `flexeval.sharding` gives each rank a cost-balanced share (same answer on every rank);
3. each rank runs its share into its own store shard (`shards/<config>.rank<r>.jsonl`) and publishes
   a progress counter per batch; a watcher thread per rank stops the run when a peer finishes no
   batch within the bound (coordination.py) or a peer failed; every finished batch stays in the shards;
4. the rank marks itself done (items, estimated cost, wall time) and waits, bounded the same way,
   for every peer; rank 0 alone then merges the shards and writes predictions.jsonl, accuracy.csv
   and run.json (with the per-rank figures).

Expensive identity work happens once: rank 0 hashes the checkpoint and the image files (with the
on-disk digest cache, flexeval/results/digests.py) and hands the digests to the others through the
store; they check each file's size and mtime and take rank 0's digest (`share_digests`).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from flexeval.coordination import Board
from flexeval.errors import FlexEvalError
from flexeval.results.digests import file_key, remember, sha256_file
from flexeval.results.store import PredictionStore, fingerprint
from flexeval.sharding import Share, item_cost, rank_share

PEER_TIMEOUT_ENV = "FLEXEVAL_PEER_TIMEOUT_S"  # the floor of the progress bound (coordination.py)
PEER_TIMEOUT_DEFAULT = 60.0
START_TIMEOUT_ENV = "FLEXEVAL_START_TIMEOUT_S"  # all ranks must reach a benchmark's start within this


def process_start_unix() -> float:
    """When this process started (Linux: /proc, to 10 ms; elsewhere: when this module was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


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
    """This process's place in the run: the store, the process group and the per-benchmark coordination."""

    def __init__(self, launch: LaunchEnv, device: str, peer_timeout: float | None = None):
        self.launch, self.device = launch, device
        self.rank, self.world_size = launch.rank, launch.world_size
        self.is_main = self.rank == 0
        self.host = socket.gethostname()
        if peer_timeout is not None and peer_timeout <= 0:
            raise FlexEvalError(f"--peer-timeout {peer_timeout:g} must be a positive number of seconds")
        self.peer_timeout = peer_timeout or _env_seconds(PEER_TIMEOUT_ENV, PEER_TIMEOUT_DEFAULT)
        self.start_timeout = _env_seconds(START_TIMEOUT_ENV, 600.0)
        self.board: Board | None = None
        self.backend = None
        if self.world_size > 1:
            self.board = Board(self._connect(), self.rank, self.world_size, self.host, self.peer_timeout,
                               self.start_timeout, f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")

    def _connect(self):
        """The launcher's rendezvous store (torchrun's agent store, or rank 0's TCPStore) and a gloo
        group on it; flexeval's keys live under their own prefix."""
        import torch.distributed as dist

        timeout = timedelta(seconds=self.start_timeout)
        try:
            store, _, _ = next(dist.rendezvous("env://", self.rank, self.world_size, timeout=timeout))
            store.set_timeout(timeout)
            if not dist.is_initialized():
                dist.init_process_group("gloo", store=dist.PrefixStore("default_pg", store), rank=self.rank,
                                        world_size=self.world_size, timeout=timeout)
        except (RuntimeError, ValueError) as e:
            raise FlexEvalError(f"rank {self.rank} cannot join the run at {os.environ['MASTER_ADDR']}:"
                                f"{os.environ['MASTER_PORT']} within {self.start_timeout:g} s "
                                f"({START_TIMEOUT_ENV}): {e}") from e
        self.backend = "gloo"
        return dist.PrefixStore(f"flexeval/r{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)

    @classmethod
    def from_environ(cls, requested_device: str, peer_timeout: float | None = None) -> Cluster:
        launch = LaunchEnv.from_environ()
        return cls(launch, rank_device(requested_device, launch), peer_timeout)

    def default_workers(self, workers: int | None) -> int | None:
        """Image-decoding workers per rank: the node's cores shared by the ranks on it."""
        if workers is not None or self.world_size == 1:
            return workers
        return max(0, min(8, (os.cpu_count() or 1) // self.launch.local_world_size - 1))

    def report_failure(self, error: BaseException) -> None:
        """This rank stops with `error`: the peers stop too (unless the error came from them)."""
        if self.board is not None and self.board.error is None:
            self.board.fail(error)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class RankStatus:
    """One rank's part in one benchmark: its progress into the store, the wait for the others."""

    def __init__(self, cluster: Cluster, stats: dict, shard: Path):
        self.cluster, self.board, self.shard = cluster, cluster.board, Path(shard)
        self.info = {"host": cluster.host, "device": cluster.device, **stats,
                     "startup_s": round(time.time() - process_start_unix(), 3)}
        self._t0 = self._last = time.monotonic()

    def progress(self, done_items: int) -> None:
        now = time.monotonic()
        if self.board is not None:
            self.board.progress(done_items, now - self._last)
        self._last = now

    def finish(self, **stats) -> list[dict]:
        """Mark this rank done and wait for all; every rank's record, ordered by rank. Rank 0 checks
        that it sees every rank's shard as written (`--out` shared by all nodes)."""
        self.info.update(wall_s=round(time.monotonic() - self._t0, 3), finished_unix=round(time.time(), 3),
                         shard_bytes=_size(self.shard), **stats)
        if self.board is None:
            return [{"rank": 0, **self.info}]
        infos = self.board.finish(self.info)
        if self.cluster.is_main:
            for info in infos:
                shard = self.shard.with_name(self.shard.name.replace(f".rank{self.cluster.rank}.", f".rank{info['rank']}."))
                if _size(shard) < info["shard_bytes"]:
                    raise FlexEvalError(
                        f"rank {info['rank']} on {info['host']} wrote {info['shard_bytes']} bytes to {shard}, but rank 0 "
                        f"on {self.cluster.host} sees {_size(shard)}: --out must be one folder every node sees (a "
                        "shared filesystem); the finished predictions are in that node's copy")
        return infos


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def share_digests(cluster: Cluster, paths: list, sample_lists=()) -> None:
    """Rank 0 reads `paths` (checkpoint files) and the image files of `sample_lists` once, through the
    digest cache (flexeval/results/digests.py), before anyone computes item keys; every other rank
    takes its digests for the files it sees with the same size and mtime (a copy made at another time
    is hashed where it is needed; a size that differs is an error naming the file)."""
    if cluster.board is None:
        return
    images = [s.image for samples in sample_lists for s in samples if isinstance(s.image, (str, os.PathLike))]
    files = sorted({os.path.realpath(p) for p in [*paths, *images]})

    def entry(p: str) -> list | None:
        try:
            return [*file_key(p)[1:3], sha256_file(p)]
        except OSError:
            return None  # a missing image: the benchmark reports it

    def digests() -> dict:  # hashlib releases the GIL: checkpoint shards and images hash in parallel
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            return {p: e for p, e in zip(files, pool.map(entry, files)) if e is not None}

    table = cluster.board.share("file digests", digests)
    for p in files:
        if p not in table:
            continue
        try:
            key = file_key(p)
        except OSError:
            continue
        size, mtime_ns, digest = table[p]
        if key[1] != size:
            raise FlexEvalError(f"{p} has {key[1]} bytes on {cluster.host} (rank {cluster.rank}) but {size} on rank "
                                "0's node: every node must read the same checkpoint and data (copy them again)")
        if key[2] == mtime_ns:
            remember(key, digest)


def rank_summary(infos: list[dict]) -> dict:
    """run.json's "distributed" block: per rank items, estimated cost, wall time; the finish spread."""
    keep = ("rank", "host", "device", "items", "estimated_cost", "startup_s", "wall_s", "model_s", "batches",
            "first_batch_s", "max_batch_s", "finished_unix")
    ranks = [{k: i.get(k) for k in keep} for i in infos]
    finished = [i["finished_unix"] for i in infos]
    costs = [i["estimated_cost"] for i in infos]
    mean_cost = sum(costs) / len(costs) if costs else 0
    return {"world_size": len(infos), "ranks": ranks,
            "finish_spread_s": round(max(finished) - min(finished), 3),
            "cost_imbalance": round(max(costs) / mean_cost, 4) if mean_cost else None}


class RankProgress:
    """This rank's progress: a tqdm bar at position = rank (several ranks share one terminal), or,
    with --quiet or no terminal, a log line per rank every LOG_EVERY_S. Each update also publishes the
    rank's progress (the peers' liveness test) and raises the run's error if a peer stopped it."""

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
        if self.lines and time.monotonic() - self._last_log >= self.LOG_EVERY_S:
            self._last_log = time.monotonic()
            print(f"[{self.bench}] rank {self.rank}: {self.done}/{self.total}", file=sys.stderr, flush=True)
        self.status.progress(self.done)

    def close(self) -> None:
        self.bar.close()


def take_share(cluster: Cluster, bench_dir: Path, config_fp: str, keys: list[str], pending: list[int],
               samples: list, requests: list, batch_size: int) -> tuple[Share, RankStatus]:
    """Check that all ranks agree on the work (and on --out), then this rank's cost-balanced share."""
    if cluster.board is not None:
        cluster.board.agree({"config": config_fp, "items": fingerprint(keys), "pending": fingerprint(pending),
                             "batch_size": batch_size})
    costs = [0.0] * len(keys)
    for i in pending:
        costs[i] = item_cost(requests[i], samples[i].image)
    share = rank_share(pending, costs, batch_size, cluster.world_size, cluster.rank)
    shard = PredictionStore(bench_dir, config_fp, cluster.rank, cluster.world_size).shard_path  # nothing opened
    status = RankStatus(cluster, {"items": len(share.items), "estimated_cost": share.estimated_cost}, shard)
    if cluster.world_size > 1:
        print(f"[rank {cluster.rank} on {cluster.host}, {cluster.device}] {len(share.items)} of {len(pending)} "
              f"pending items, estimated cost {share.estimated_cost:g} (ranks: {share.costs_by_rank})",
              file=sys.stderr, flush=True)
    return share, status
