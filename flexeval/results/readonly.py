"""A results folder the user cannot write (read-only mount, another user's run, a full disk) for the
commands that only rewrite tables, `report` and `rescore`: one line with a fix that works (issue 24;
`run` has its own, flexeval/interrupt.py), instead of an OSError traceback."""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flexeval.errors import FlexEvalError


def copy_suggestion(folder: Path, command: str) -> str:
    copy = Path("/tmp") / f"{Path(folder).resolve().name}-copy"
    return (f"`cp -r {shlex.quote(str(folder))} {shlex.quote(str(copy))}`, then `flexeval {command} "
            f"{shlex.quote(str(copy))}`")


@contextmanager
def tables_written_in(folder: Path, command: str) -> Iterator[None]:
    """Writes of `flexeval <command> <folder>`: an OSError becomes a FlexEvalError naming the file and the fix."""
    try:
        yield
    except OSError as e:
        where = e.filename or folder
        raise FlexEvalError(f"cannot write {where} ({e.strerror or e}): fix the folder's permissions, or copy it "
                            f"where you can write and run there: {copy_suggestion(folder, command)}") from e
