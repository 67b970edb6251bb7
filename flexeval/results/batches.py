"""Which of a shard's bytes are whole batches (issue 24): `<shard>.batches`, beside each shard, holds
the shard's length after every batch that was written and fsync'ed in full, one number a line.

Why: a batch is one write() of whole lines. A kill or a full disk in the middle of it leaves some of
its lines complete and the last one torn. Taking the complete lines as done made the rerun compute
the rest of that batch (and every batch after it) in other batch compositions, and a batched
forward's numerics depend on the batch (padding, kernels): option NLLs differed in the 7th digit.
Reading a shard only up to its last whole batch makes the rerun compute that batch again, whole, so
the bytes equal the uninterrupted run's. A shard without this file (written before it existed) is
read as before: every complete line counts.
"""

from __future__ import annotations

import os
from pathlib import Path


def log_path(shard: Path) -> Path:
    return Path(shard).with_suffix(".batches")


def whole_batches_end(shard: Path) -> int | None:
    """The shard's length after its last whole batch, or None when no batch log exists (old shards)."""
    try:
        data = log_path(shard).read_bytes()
    except FileNotFoundError:
        return None
    ends = [int(x) for x in data.split(b"\n")[:-1] if x.strip().isdigit()]  # a torn last number is ignored
    return ends[-1] if ends else None


def committed_bytes(shard: Path, data: bytes) -> bytes:
    """The part of a shard's bytes that readers take: up to its last whole batch (all of it without a log,
    or when the log is not this shard's: it ends past the data)."""
    end = whole_batches_end(shard)
    return data if end is None or end > len(data) else data[:end]


def note_batch(shard: Path, fd: int) -> None:
    """After a batch's write and fsync: the shard's new length, appended and fsync'ed."""
    size = os.fstat(fd).st_size
    with open(log_path(shard), "ab") as log:  # one short line: a torn one is ignored by whole_batches_end
        log.write(f"{size}\n".encode())
        log.flush()
        os.fsync(log.fileno())


def reset(shard: Path) -> None:
    """A new shard starts a new log (a stale one of a deleted shard would name bytes it does not have)."""
    try:
        os.unlink(log_path(shard))
    except FileNotFoundError:
        pass
