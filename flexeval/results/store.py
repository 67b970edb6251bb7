"""The prediction store: crash-safe, multi-process resume for one benchmark's predictions.

On disk, under a benchmark's results folder `<out>/<model-tag>/<bench>/`:

    shards/<config_fp>.rank<r>.jsonl   append-only, one per (config fingerprint, rank); the resume log
    shards/<config_fp>.rank<r>.batches the shard's length after each whole batch (flexeval/results/batches.py)
    predictions.jsonl                  written once by `finalize` (or `write_predictions`), atomically

Why shards: several torch.distributed ranks write at the same time, and a process can die at any
instant. Each rank appends only to its own file, so no two writers ever share one; every batch is
written with one write() of whole lines and fsync'ed, so after a crash a shard holds complete lines
plus at most one torn line at its end. Readers ignore that torn tail; the owning rank cuts it off
before it appends again. The config fingerprint in the shard name keeps a changed configuration
from reusing stale predictions, while leaving the old shards where they are (nothing is deleted).

Records are JSON objects with a "key" field (the sample's identity; the runner decides what it is).
A key written twice (a crash between the write and the runner noting it) is kept once: first wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from flexeval.errors import FlexEvalError
from flexeval.results import batches
from flexeval.results.digests import sha256_file
from flexeval.results.jsonsafe import strict_object
from flexeval.results.lock import lock_fd

SHARDS_DIR = "shards"
PREDICTIONS = "predictions.jsonl"


def fingerprint(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace), first 16 hex chars.

    Paths and other non-JSON values are hashed by str(); tuples hash like lists.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read once per path, size and mtime (also across runs: the digest
    cache of flexeval/results/digests.py); OSError when it cannot be read."""
    return sha256_file(path)


def record_line(record: dict) -> bytes:
    """The one serialisation of a record, used by shards and predictions.jsonl alike.

    Insertion order is kept (no sort_keys), so the bytes depend only on the record as given;
    json.dumps escapes newlines inside strings, so a record is always exactly one line.
    Strict JSON: a non-finite number is written as null and named in the record's `non_finite_values`.
    """
    return (json.dumps(strict_object(record), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _fsync_dir(path: Path) -> None:
    # A rename or a new file is durable only once its directory entry is; not possible everywhere.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; results should get the same mode as any file the user writes.
_FILE_MODE = 0o666 & ~_umask()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename over `path`: old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Pretty JSON (indent 2, key order kept); Paths and other odd values become strings; strict JSON
    (non-finite numbers as null, named under a top-level `non_finite_values`)."""
    text = json.dumps(strict_object(obj), indent=2, ensure_ascii=False, default=str, allow_nan=False)
    write_text_atomic(path, text + "\n")


def _parse_lines(data: bytes, where: Path) -> tuple[list[dict], int]:
    """Records from a JSONL byte string, and the byte length of the good prefix.

    Split on b"\\n" only (str.splitlines would also split on U+2028 inside ensure_ascii=False text).
    A trailing run of unparsable lines, or a last line with no newline, is a torn tail: ignored,
    and excluded from the good prefix. An unparsable line followed by good ones is corruption that
    no crash of ours produces: an error naming the file and line.
    """
    records: list[dict] = []
    good_end = 0
    pos = 0
    bad: tuple[int, str] | None = None  # (line number, reason) of the first bad line not yet excused
    line_no = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:  # no newline: a write that did not finish
            break
        line_no += 1
        raw = data[pos:nl]
        pos = nl + 1
        try:
            rec = json.loads(raw.decode("utf-8"))
            ok = isinstance(rec, dict) and "key" in rec
            reason = "" if ok else "not a JSON object with a 'key' field"
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            ok, reason = False, f"invalid JSON ({e})"
        if not ok:
            if bad is None:
                bad = (line_no, reason)
            continue
        if bad is not None:
            raise FlexEvalError(
                f"{where}: line {bad[0]} is {bad[1]} but later lines are fine, so this is not a torn "
                f"write; delete that line (or the whole file to recompute its predictions)"
            )
        records.append(rec)
        good_end = pos
    return records, good_end


def read_records(path: Path) -> list[dict]:
    """Every complete record of a JSONL file, in file order; a torn last line is ignored."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise FlexEvalError(f"missing file {path}") from e
    return _parse_lines(data, Path(path))[0]


def is_provisional(record: dict) -> bool:
    """A skipped row (image over --max-image-pixels, undecodable, prompt too long) is stored so that
    the run's files are complete, but it is no cached result: its cause may be fixed (a higher limit,
    a repaired file), so a rerun computes it again and a computed record replaces it."""
    return bool(record.get("skipped"))


_SHARD_RE = re.compile(r"^(?P<fp>[^.]+)\.rank(?P<rank>\d+)\.jsonl$")


class PredictionStore:
    """One rank's view of a benchmark folder's predictions for one config fingerprint.

    Every rank builds one; each appends to its own shard. After all ranks are done (a barrier),
    rank 0 alone calls `finalize`. The config fingerprint should not include the rank, world size
    or batch size: then a run resumed on another number of GPUs still finds its predictions.
    """

    def __init__(self, bench_dir: Path, config_fingerprint: str, rank: int = 0, world_size: int = 1):
        if not re.fullmatch(r"[0-9A-Za-z_-]+", config_fingerprint or ""):
            raise ValueError(f"config fingerprint must be [0-9A-Za-z_-]+, got {config_fingerprint!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.bench_dir = Path(bench_dir)
        self.config_fingerprint = config_fingerprint
        self.rank = rank
        self.world_size = world_size
        self.shard_dir = self.bench_dir / SHARDS_DIR
        self.shard_path = self.shard_dir / f"{config_fingerprint}.rank{rank}.jsonl"
        self._fd: int | None = None  # opened lazily: building a store to read never modifies files

    # -- reading -------------------------------------------------------------------------------

    def shard_paths(self) -> list[Path]:
        """This config's shards, all ranks (also ranks of an earlier run with more processes)."""
        if not self.shard_dir.is_dir():
            return []
        found = []
        for p in self.shard_dir.iterdir():
            m = _SHARD_RE.match(p.name)
            if m and m["fp"] == self.config_fingerprint:
                found.append((int(m["rank"]), p))
        return [p for _, p in sorted(found)]

    def completed(self) -> dict[str, dict]:
        """key -> record for every record of this config in any rank's shard; first occurrence wins,
        except that a computed record wins over a skipped one (`is_provisional`).

        Safe while other ranks are appending: their in-flight last line is simply not seen yet.
        """
        done: dict[str, dict] = {}
        for path in self.shard_paths():  # whole batches only: a torn batch is computed again, whole
            for rec in _parse_lines(batches.committed_bytes(path, path.read_bytes()), path)[0]:
                key = str(rec["key"])
                if key not in done or (is_provisional(done[key]) and not is_provisional(rec)):
                    done[key] = rec
        return done

    # -- writing -------------------------------------------------------------------------------

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        created = not self.shard_path.exists()
        fd = os.open(self.shard_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            lock_fd(fd, self.shard_path, f"{self.shard_path} is being written by another process (same output "
                                         "folder, config and rank); wait for it to finish or use another --out/--tag")
            # Cut a torn tail from an earlier crash so the next record starts on a fresh line; with a
            # batch log, the whole torn batch (flexeval/results/batches.py): the rerun computes it whole.
            if created:
                batches.reset(self.shard_path)
            data = self.shard_path.read_bytes()
            _, good_end = _parse_lines(batches.committed_bytes(self.shard_path, data), self.shard_path)
            if good_end < len(data):
                os.ftruncate(fd, good_end)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        if created:
            _fsync_dir(self.shard_dir)
        self._fd = fd
        return fd

    def append(self, records: list[dict]) -> None:
        """Append one batch to this rank's shard: one write() of whole lines, flush, fsync."""
        if not records:
            return
        for r in records:
            if not isinstance(r, dict) or "key" not in r:
                raise ValueError(f"a prediction record must be a dict with a 'key' field, got {r!r:.200}")
        data = b"".join(record_line(r) for r in records)
        fd = self._open()
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, huge buffers): finish the batch
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        batches.note_batch(self.shard_path, fd)  # this batch is whole

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- the final file --------------------------------------------------------------------------

    def finalize(self, ordered_keys: list[str], dest_dir: Path | None = None) -> list[dict]:
        """Merge this config's shards into predictions.jsonl, in `ordered_keys` order, atomically.

        Records whose key is not in `ordered_keys` are left out of the file (they stay in the
        shards). Missing keys raise a FlexEvalError listing them; nothing is written then.
        `dest_dir` (default: the benchmark folder) is where predictions.jsonl goes: a variant of
        the run (another protocol, split or a --limit) has its own folder and shares the shards.
        """
        records = self.collect(ordered_keys)
        self.write_predictions(records, dest_dir)
        return records

    def collect(self, ordered_keys: list[str]) -> list[dict]:
        """This config's records from all shards, in `ordered_keys` order; missing keys raise."""
        self.close()
        keys = [str(k) for k in ordered_keys]
        if len(set(keys)) != len(keys):
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"ordered_keys repeats keys: {dupes[:10]}")
        done = self.completed()
        missing = [k for k in keys if k not in done]
        if missing:
            shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
            raise FlexEvalError(
                f"{self.bench_dir}: {len(missing)} of {len(keys)} predictions are missing from the shards "
                f"of config {self.config_fingerprint} in {self.shard_dir}: {shown}. "
                f"Run the same command again to compute them (finished ones are reused)."
            )
        return [done[k] for k in keys]

    def write_predictions(self, records: list[dict], dest_dir: Path | None = None) -> None:
        """predictions.jsonl, atomically: the run's final record store (in `dest_dir`, default the
        benchmark folder: a variant of the run has its own folder and shares the shards)."""
        dest = self.bench_dir if dest_dir is None else Path(dest_dir)
        write_bytes_atomic(dest / PREDICTIONS, b"".join(record_line(r) for r in records))
