"""The image-decoding workers' deaths as one clear error (issue 24): a DataLoader worker killed by the
kernel (its out-of-memory killer, most often) or by a user ended the run in torch's RuntimeError
traceback. The batches already stored are kept, so the fix is to run the same command again, with
fewer workers if memory was short."""

from __future__ import annotations

from typing import Iterable, Iterator

from flexeval.errors import FlexEvalError


def is_worker_death(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, RuntimeError) and "DataLoader worker" in text and (
        "killed" in text or "exited unexpectedly" in text or "is killed by signal" in text)


def worker_death_message(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (f"an image-decoding worker process died ({first}); most often the kernel's out-of-memory killer "
            "(`dmesg` names it). The batches done so far are kept: run the same command again to continue, with "
            "fewer --workers (or --workers 0, decoding in the main process) if memory is short")


def guarded(entries: Iterable) -> Iterator:
    """`entries` (a DataLoader) as they come; a dead worker becomes a FlexEvalError saying what to do."""
    try:
        yield from entries
    except RuntimeError as e:
        if not is_worker_death(e):
            raise
        raise FlexEvalError(worker_death_message(e)) from e
