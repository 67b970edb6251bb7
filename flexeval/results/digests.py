"""File digests, read once: memoised per process and cached on disk by (real path, size, mtime_ns).

A 7B checkpoint is 14 GB and RSVQA-HRBEN's TIFFs several GB more; hashing them on every start (and,
before, on every rank) dominated start-up. A file whose real path, size and modification time (ns)
are unchanged is taken to hold the same bytes, so its digest comes from

    $FLEXEVAL_CACHE/digests.jsonl        (FLEXEVAL_CACHE=off: no disk cache)
    else $XDG_CACHE_HOME/flexeval/digests.jsonl, else ~/.cache/flexeval/digests.jsonl

one JSON line per file: {"p": real path, "s": size, "m": mtime_ns, "k": kind, "d": digest}. Lines
are appended (O_APPEND); a torn line is skipped. Files under MIN_CACHED_BYTES are not written there
(hashing them costs about what the stat costs). A cache that cannot be written is silently unused:
it only saves time. Several processes may share one file (one node's ranks, or a home on NFS).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_ENV = "FLEXEVAL_CACHE"
CACHE_FILE = "digests.jsonl"
MIN_CACHED_BYTES = 64 << 10

_memo: dict[tuple, str] = {}  # (real path, size, mtime_ns, kind) -> digest, this process
_disk: dict[tuple, str] | None = None  # the disk cache, read once


def cache_path() -> Path | None:
    """Where the digest cache lives (None: FLEXEVAL_CACHE=off)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("off", "0", "none", ""):
        return None
    if value:
        return Path(value).expanduser() / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flexeval" / CACHE_FILE


def _load_disk() -> dict[tuple, str]:
    global _disk
    if _disk is None:
        _disk = {}
        path = cache_path()
        try:
            data = path.read_bytes() if path is not None else b""
        except OSError:
            data = b""
        for line in data.split(b"\n"):
            try:
                e = json.loads(line)
                _disk[(e["p"], e["s"], e["m"], e["k"])] = e["d"]
            except (ValueError, KeyError, TypeError):
                continue  # empty, torn or foreign line
    return _disk


def _save_disk(key: tuple, digest: str) -> None:
    path = cache_path()
    if path is None:
        return
    line = json.dumps({"p": key[0], "s": key[1], "m": key[2], "k": key[3], "d": digest}) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        return  # read-only home, full disk: the cache only saves time
    _load_disk()[key] = digest


def file_key(path: str | os.PathLike, kind: str = "sha256") -> tuple:
    """(real path, size, mtime_ns, kind): what identifies a file's bytes here. OSError if absent."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return (real, st.st_size, st.st_mtime_ns, kind)


def cached_digest(path: str | os.PathLike, kind: str, compute) -> str:
    """`compute(real_path, size)` once per (file, size, mtime, kind): from memory, the disk, or computed."""
    key = file_key(path, kind)
    digest = _memo.get(key)
    if digest is None:
        digest = _load_disk().get(key) if key[1] >= MIN_CACHED_BYTES else None
        if digest is None:
            digest = compute(key[0], key[1])
            if key[1] >= MIN_CACHED_BYTES:
                _save_disk(key, digest)
        _memo[key] = digest
    return digest


def _sha256(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read at most once per (real path, size, mtime); OSError if unreadable."""
    return cached_digest(path, "sha256", _sha256)


def remember(key: tuple, digest: str) -> None:
    """Take a digest another process computed for a file with this exact `file_key` (see distributed)."""
    _memo[key] = digest


def forget() -> None:
    """Drop what this process remembers (tests; the disk cache is read again on next use)."""
    global _disk
    _memo.clear()
    _disk = None
