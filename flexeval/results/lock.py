"""The output-folder run lock: one run at a time per `<out>/<tag>/<bench>/`.

Two runs writing the same folder would interleave finalize() calls and report each other's partial
tables. The lock is a file, `.flexeval-run.lock`, holding the owner's pid, host and command, and an
flock on it: the kernel drops the flock when its process dies (also on SIGKILL), so a lock file whose
flock can be taken is stale and is taken over, with a line saying so.

torch.distributed: only the launching process / rank 0 (env RANK unset or 0) takes it, so the ranks
of one run never refuse each other; `hold_run_lock` is the one place that decides.

A filesystem without working flock (NFS without lock support, some FUSE / object-store mounts)
answers ENOLCK, EOPNOTSUPP or ENOSYS: that is said as such, with what to do (`lock_fd`, also used
for the prediction shards), never as "in use by another run". FLEXEVAL_NO_LOCK=1 runs without locks.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from flexeval.errors import FlexEvalError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, runs are not protected
    fcntl = None

LOCK_NAME = ".flexeval-run.lock"
NO_LOCK_ENV = "FLEXEVAL_NO_LOCK"
# flock's answers on a filesystem that has no working locks (EOPNOTSUPP is ENOTSUP on Linux)
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_held: dict[str, RunLock] = {}  # this process's locks by folder (a rerun in-process takes its own lock back)


class RunLock:
    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # an empty file: nobody holds it
            except OSError:
                pass
            os.close(self.fd)  # releases the flock
            self.fd = None
        _held.pop(str(self.path), None)


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def lock_fd(fd: int, path: Path, busy: str) -> None:
    """flock `fd` (exclusive, non-blocking). FlexEvalError `busy` when another process holds it; one
    saying the filesystem has no working locks, and what to do, when flock itself does not work."""
    if fcntl is None or os.environ.get(NO_LOCK_ENV) == "1":
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in UNSUPPORTED:
            raise FlexEvalError(
                f"the filesystem of {Path(path).parent} does not support file locks (flock on {path}: "
                f"{e.strerror or e}); flexeval locks --out so that two runs never write one results folder. "
                f"Put --out on a local disk or a filesystem with working locks (NFS: the lock service / "
                f"'lock' mount option; Lustre: mount -o flock), or, if no other run can write this folder, "
                f"set {NO_LOCK_ENV}=1") from e
        raise FlexEvalError(busy) from e


def hold_run_lock(folder: Path, log=None) -> RunLock:
    """Create `folder` and lock it for this run; a FlexEvalError if another live run holds it or the
    folder cannot be written."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return RunLock(path, None)  # rank 0 holds the lock for the whole run
    if str(path) in _held:
        _held[str(path)].release()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise FlexEvalError(f"cannot write the results folder {folder} ({e.strerror}); fix its permissions or "
                            f"choose another --out") from e
    try:
        who = _owner(path)
        lock_fd(fd, path, f"{folder} is in use by another run (lock {path}: pid {who.get('pid', '?')} on host "
                          f"{who.get('host', '?')}, started {who.get('started', '?')}); wait for it to finish, "
                          "or use another --out or --tag")
    except FlexEvalError:
        os.close(fd)
        raise
    stale = _owner(path)
    if stale.get("pid") and log is not None:
        log(f"taking over the stale lock {path} of pid {stale['pid']} on {stale.get('host', '?')} (that run "
            f"stopped without releasing it; its finished predictions are reused)")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500]}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        raise FlexEvalError(f"cannot write the lock {path} ({e.strerror}); free space in {folder} or choose "
                            f"another --out") from e
    for tmp in folder.glob(".*.tmp"):  # temp files of a write a killed run left half done (store.py names)
        try:
            tmp.unlink()
        except OSError:
            pass
    lock = RunLock(path, fd)
    _held[str(path)] = lock
    return lock
