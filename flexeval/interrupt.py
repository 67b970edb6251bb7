"""What a stopped run says: Ctrl-C, a full disk or an unwritable file end in ONE line telling what was
kept and how to continue, not a traceback.

The runner notes the benchmark in progress (`note_progress`); the CLI turns KeyboardInterrupt and
write errors into `stop_message`. Nothing is lost by stopping anywhere: predictions are appended
and fsync'ed per batch and the final files are written atomically (store.py).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

# Errors that mean "the output folder cannot take more", not a bug.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@dataclass
class Progress:
    bench: str
    bench_dir: Path
    store: object  # PredictionStore: counts what its shards hold when asked
    keys: list


_current: Progress | None = None


def note_progress(bench: str, bench_dir: Path, store, keys: list) -> None:
    global _current
    _current = Progress(bench, Path(bench_dir), store, list(keys))


def _kept() -> str:
    if _current is None:
        return "no predictions had been made yet"
    try:
        done = _current.store.completed()
        n = sum(1 for k in _current.keys if k in done)
    except Exception:  # reading the shards must not replace the message with a traceback
        return f"the predictions made so far are kept in {_current.bench_dir}"
    return f"{n} of {len(_current.keys)} {_current.bench} predictions are kept in {_current.bench_dir}"


def is_write_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS


def stop_message(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted: {_kept()}; run the same command again to continue (finished items are reused)"
    name = f" {e.filename}" if getattr(e, "filename", None) else ""
    return (f"cannot write{name} ({e.strerror or e}): {_kept()}; free space or fix permissions (or choose "
            f"another --out) and run the same command again to continue")
