"""The control plane of a multi-process run: keys in torch.distributed's c10d store, nothing on --out.

The store is the one the launcher's rendezvous already runs (torchrun's agent store, or rank 0's
TCPStore under `accelerate launch` / a SLURM script); `flexeval.distributed.Cluster` connects to
it. Keys, under `flexeval/r<restart>/` (a torchrun restart starts afresh):

    failed                      how many ranks stopped with an error (a counter)
    error/<rank>                that rank's error, with its host and pid
    once/<n>                    the n-th value rank 0 computed for everyone (file digests)
    b<k>/facts/<rank>           what rank sees at the start of its k-th benchmark (data, config, ...)
    b<k>/arrived                how many ranks reached that start (a counter)
    b<k>/progress/<rank>        batches and items done, longest batch, state: running | done

Liveness is by progress, not by a heartbeat: a watcher thread in every rank reads every peer's
progress every CHECK_EVERY_S (one request) and names a rank that finished no batch for longer than
the bound: max(floor, FACTOR x the longest batch any rank has measured; first batches, which warm
up, count only for a rank still in its first), the floor being
--peer-timeout / FLEXEVAL_PEER_TIMEOUT_S (default 60 s). The rank that sees it publishes the error;
every rank's watcher sees the `failed` counter; a main thread stops at its next batch with that
error, and one blocked inside a model call (a hung rank) is ended by its own watcher GRACE_S later.
A dead rank is torchrun's to handle (its agent stops the job within seconds); a frozen (SIGSTOP)
process can only be ended by SIGKILL, which torchrun sends 30 s after its SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from flexeval.errors import FlexEvalError

FACTOR = 5.0  # a batch may take this many times the longest batch measured before its rank is "stuck"
CHECK_EVERY_S = 1.0  # the watcher's period: world_size requests a second on the store, whatever the size
GRACE_S = 10.0  # after an error, how long a main thread may stay in a model call before the process exits
POLL_S = 0.25  # waits (start, share, finish) look this often


class Board:
    """This rank's view of the store: its progress, the peers', errors, and the agreed starts."""

    def __init__(self, store, rank: int, world_size: int, host: str, floor_s: float, start_timeout_s: float,
                 where: str):
        self.store, self.rank, self.world_size, self.host = store, rank, world_size, host
        self.floor_s, self.start_timeout_s, self.where = floor_s, start_timeout_s, where
        self.error: str | None = None  # why this rank must stop (set by the watcher)
        self.stopped = threading.Event()  # the main thread took the error (raised it)
        self.seq, self.shared = -1, 0
        self.published = False  # this rank's error is in the store
        self._watching: int | None = None
        self._mine: dict = {}
        self._seen: dict[int, tuple[str, float]] = {}
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._watch_loop, name="flexeval-watch", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- errors

    def fail(self, error: BaseException | str) -> None:
        """This rank stops with `error`: publish it so every peer stops too (best effort)."""
        if self.published:
            return
        self.published = True
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        try:
            self.store.set(f"error/{self.rank}", json.dumps({"host": self.host, "pid": os.getpid(),
                                                             "error": text[:2000]}))
            self.store.add("failed", 1)
        except Exception:  # noqa: BLE001 - the store is gone: the launcher stops the peers
            pass

    def first_error(self) -> str | None:
        """The error a rank published, as a sentence naming it; None if none did."""
        if int(self.store.add("failed", 0)) == 0:
            return None
        for r in range(self.world_size):
            if self.store.check([f"error/{r}"]):
                e = json.loads(self.store.get(f"error/{r}"))
                return f"rank {r} on {e['host']} (pid {e['pid']}) stopped the run: {e['error']}"
        return None

    def check(self) -> None:
        """Between batches: raise the error that stops this rank, if there is one."""
        if self.error is not None:
            self.stopped.set()
            raise FlexEvalError(self.error)

    # ---------------------------------------------------------------- a benchmark's start and end

    def agree(self, facts: dict) -> None:
        """Wait for every rank at the start of this benchmark; raise if one sees other facts."""
        self.seq += 1
        b = f"b{self.seq}"
        self._mine = {"state": "running", "batches": 0, "items": 0, "first_batch_s": 0.0, "max_batch_s": 0.0,
                      "host": self.host, "pid": os.getpid()}
        self.store.set(f"{b}/progress/{self.rank}", json.dumps(self._mine))
        self.store.set(f"{b}/facts/{self.rank}", json.dumps({"host": self.host, "facts": facts}))
        self.store.add(f"{b}/arrived", 1)
        self.wait(lambda: int(self.store.add(f"{b}/arrived", 0)) >= self.world_size, self.start_timeout_s,
                  lambda: "every rank to reach the start of the benchmark (missing: ranks "
                          f"{[r for r in range(self.world_size) if not self.store.check([f'{b}/facts/{r}'])]}; "
                          "FLEXEVAL_START_TIMEOUT_S)")
        seen = [json.loads(v) for v in self.store.multi_get([f"{b}/facts/{r}" for r in range(self.world_size)])]
        for r, other in enumerate(seen):
            for key, value in other["facts"].items():
                if value != seen[0]["facts"].get(key):
                    raise FlexEvalError(
                        f"rank {r} on {other['host']} sees a different '{key}' than rank 0 on {seen[0]['host']} "
                        f"({value!r} vs {seen[0]['facts'].get(key)!r}): every rank must read the same data "
                        "and write to the same --out folder (a filesystem shared by all nodes)")
        self._seen = {}
        self._watching = self.seq

    def progress(self, items: int, batch_s: float) -> None:
        """This rank finished a batch (`items` done so far; the batch took `batch_s`)."""
        first = self._mine["batches"] == 0  # the first batch also warms up (kernels, caches): kept apart
        self._mine.update(batches=self._mine["batches"] + 1, items=items)
        if first:
            self._mine["first_batch_s"] = round(batch_s, 3)
        else:
            self._mine["max_batch_s"] = round(max(self._mine["max_batch_s"], batch_s), 3)
        self.store.set(f"b{self.seq}/progress/{self.rank}", json.dumps(self._mine))
        self.check()

    def finish(self, stats: dict) -> list[dict]:
        """Mark this rank done and wait (bounded by the peers' progress) for all; every rank's record."""
        self._mine.update(state="done", **stats)
        self.store.set(f"b{self.seq}/progress/{self.rank}", json.dumps(self._mine))
        keys = [f"b{self.seq}/progress/{r}" for r in range(self.world_size)]
        infos: list = []

        def all_done() -> bool:
            infos[:] = [json.loads(v) for v in self.store.multi_get(keys)]
            return all(i["state"] == "done" for i in infos)

        self.wait(all_done, None, lambda: "every rank to finish")
        self._watching = None
        return [{"rank": r, **i} for r, i in enumerate(infos)]

    def share(self, name: str, compute):
        """`compute()` on rank 0, its (JSON) value on every rank."""
        self.shared += 1
        key = f"once/{self.shared}"
        if self.rank == 0:
            value = compute()
            self.store.set(key, json.dumps({"name": name, "value": value}))
            return value
        self.wait(lambda: self.store.check([key]), self.start_timeout_s, lambda: f"rank 0 to compute {name}")
        got = json.loads(self.store.get(key))
        if got["name"] != name:
            raise FlexEvalError(f"rank 0 shared '{got['name']}' where rank {self.rank} expected '{name}': "
                                "the ranks run different flexeval versions or commands")
        return got["value"]

    def wait(self, ready, timeout_s: float | None, what) -> None:
        """Poll `ready()` until true; raise the run's error, or after `timeout_s` (None: liveness only)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while not ready():
            self.check()
            if end is not None and time.monotonic() > end:
                raise FlexEvalError(f"rank {self.rank} waited {timeout_s:g} s for {what()}; a rank is stuck "
                                    "before its first batch (loading the model?) or did not start")
            time.sleep(POLL_S)

    # ---------------------------------------------------------------- the watcher thread

    def bound(self, infos: list[dict], peer: dict) -> float:
        """How long `peer` may go without finishing a batch: FACTOR x the longest first batch any rank
        measured while it has none, else the longest later batch (the first where there is none yet);
        never under the floor."""
        firsts = max(i.get("first_batch_s") or 0.0 for i in infos)
        later = max(i.get("max_batch_s") or 0.0 for i in infos)
        longest = firsts if peer.get("batches", 0) == 0 or not later else later
        return max(self.floor_s, FACTOR * longest)

    def stale_peer(self, infos: list[dict], now: float) -> str | None:
        """A sentence naming the first running peer whose progress has not moved within the bound."""
        for r, info in enumerate(infos):
            bound = self.bound(infos, info)
            mark = json.dumps([info["state"], info["batches"]])
            if self._seen.get(r, ("", 0.0))[0] != mark:
                self._seen[r] = (mark, now)
                continue
            silent = now - self._seen[r][1]
            if r != self.rank and info["state"] == "running" and silent > bound:
                return (f"rank {r} on {info.get('host')} (pid {info.get('pid')}) finished no batch for "
                        f"{silent:.0f} s (after {info['batches']} batches; the bound is {bound:.0f} s: "
                        f"max(--peer-timeout/FLEXEVAL_PEER_TIMEOUT_S = {self.floor_s:g} s, {FACTOR:g} x the "
                        "longest batch of any rank)): it is hung in a model call, frozen, or its node is lost")
        return None

    def _look(self) -> str | None:
        error = self.first_error()
        if error is not None or self._watching is None:
            return error
        seq = self._watching
        infos = [json.loads(v) for v in
                 self.store.multi_get([f"b{seq}/progress/{r}" for r in range(self.world_size)])]
        if seq != self._watching:
            return None
        stale = self.stale_peer(infos, time.monotonic())
        if stale is not None:
            self.fail(stale)  # the peers read "rank <me> on <host> (pid) stopped the run: <stale>"
        return stale

    def _watch_loop(self) -> None:
        while not self._quit.wait(CHECK_EVERY_S):
            try:
                error = self._look()
            except Exception as e:  # noqa: BLE001 - the store itself went away
                error = (f"the coordination store ({self.where}) stopped answering ({type(e).__name__}: {e}): "
                         "the launcher's agent or rank 0 is gone, or its node is lost")
            if error is None:
                continue
            self.error = (f"{error}. Every finished batch is kept in the shards; run the same command again "
                          "(any number of processes) to continue.")
            if not self.stopped.wait(GRACE_S) and not self._quit.is_set():
                print(f"[rank {self.rank}] stopping: {self.error}", file=sys.stderr, flush=True)
                os._exit(1)  # the main thread is blocked (in a model call): nothing of a finished batch is lost
            return

    def close(self) -> None:
        self._quit.set()
        self.stopped.set()
