"""A model's identity for resume: what its files hold, not where they are or how --model was spelled.

`demo/x`, `./demo/x`, `demo/x/`, the absolute path and a copy of the folder elsewhere are one
model; the same folder with other weights is another. Each checkpoint file (weights, tokenizer,
JSON configs, also in subfolders such as a vision tower kept inside the checkpoint) counts by its
relative path, size and sha256. A hub snapshot's files are links to blobs named by their git/LFS
object id (the sha256 of an LFS file's content): that name is used, nothing is read. A local 7B
checkpoint is read once per process (~10 s from the page cache right after loading it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from flexeval.results.store import file_sha256

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".model", ".json", ".jinja")  # .jinja: chat templates
_OBJECT_ID = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or a hub blob's object id when it is one (nothing read then)."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _OBJECT_ID.match(real.name):
        return real.name
    return file_sha256(real)


def checkpoint_content(folder: Path) -> list[list]:
    """[relative path, size, digest] of every checkpoint file under `folder`, sorted by path."""
    folder = Path(folder)
    rows = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES and not any(x.startswith(".") for x in rel.parts):
            rows.append([rel.as_posix(), p.stat().st_size, file_digest(p)])
    return rows


def local_model_name(spelling: str) -> str | None:
    """The folder name a local --model points at however it is spelled ('.', './x/', ...); None for a hub id."""
    p = Path(str(spelling)).expanduser()
    return p.resolve().name if p.is_dir() else None
