"""What a run records about where it ran (run.json): software versions, GPU, source commit, data.

Nothing here raises for a missing optional piece: an absent package, no CUDA or no git checkout
is recorded as null, since run.json must still be written.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from flexeval.results.digests import cached_digest, sha256_file

PACKAGES = ["torch", "transformers", "datasets", "pandas", "typer", "tqdm", "pillow", "numpy",
            "safetensors", "sentencepiece"]

# Source folders whose state decides the results (the repo root holds flexeval/, benchmarks/, model/).
SOURCE_PATHS = ["flexeval", "benchmarks", "model", "pyproject.toml"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_info() -> dict:
    info = {"cuda_available": None, "cuda_version": None, "devices": []}
    if importlib.util.find_spec("torch") is None:
        return info
    import torch

    info["cuda_available"] = bool(torch.cuda.is_available())
    info["cuda_version"] = torch.version.cuda
    if info["cuda_available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict | None:
    """Commit of the flexeval source tree and whether its source files differ from it.

    Only when the package is a checkout's own working tree (an editable install): an installed
    copy that merely sits inside some other repository (a venv inside a checkout) gets null.
    """
    import flexeval

    root = Path(flexeval.__file__).resolve().parent.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return None
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--", *SOURCE_PATHS)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment_info() -> dict:
    """Python, platform, package versions, CUDA and devices, source commit, host and time."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        **_torch_info(),
        "git": git_info(),
        "hostname": socket.gethostname(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# -- data fingerprint ------------------------------------------------------------------------------

# Content-hashed: the files that define the questions and answers. Images (and anything else) count
# by relative path and size only, which keeps 60k-file folders fast (one stat each) while still
# catching a missing, added or re-encoded image. Content-hashed files above HEAD_TAIL_LIMIT (parquet
# shards with embedded images) hash their size plus first and last MiB: the parquet footer, which
# holds the schema and row-group statistics, is in the last MiB.
CONTENT_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow"}
HEAD_TAIL_LIMIT = 64 << 20
HEAD_TAIL = 1 << 20


def _walk(root: Path) -> list[tuple[str, os.DirEntry]]:
    """(relative posix path, entry) for every file below root, hidden files and folders skipped
    (a hub snapshot keeps its download bookkeeping in .cache/, which must not count)."""
    out = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=True):
                    stack.append((Path(entry.path), rel + "/"))
                elif entry.is_file(follow_symlinks=True):
                    out.append((rel, entry))
    return sorted(out, key=lambda t: t[0])


def _head_tail(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(HEAD_TAIL))
        f.seek(size - HEAD_TAIL)
        h.update(f.read(HEAD_TAIL))
    return h.hexdigest()


def _content_digest(path: str, size: int) -> str:
    """The file's sha256 (first+last MiB above HEAD_TAIL_LIMIT), read once per (path, size, mtime):
    the digest cache of flexeval/results/digests.py, shared with the item keys' image digests."""
    if size <= HEAD_TAIL_LIMIT:
        return sha256_file(path)
    return cached_digest(path, "sha256-head-tail-1MiB", _head_tail)


def data_fingerprint(paths: list[Path]) -> dict:
    """A digest of the benchmark data a run read: {"sha256", "files", "bytes", "content_hashed", "roots"}.

    `paths` are folders (walked) or single files. Each file contributes its path relative to its
    root, its size and, for metadata files (CONTENT_SUFFIXES), a content hash; see the notes above.
    Modification times are left out on purpose: a copy of the same data gives the same digest.
    """
    total = hashlib.sha256()
    n_files = n_bytes = n_hashed = 0
    roots = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = _walk(p)
        elif p.is_file():
            files = [(p.name, p)]
        else:
            total.update(f"missing\0{p.name}\n".encode())
            roots.append({"path": str(p), "missing": True})
            continue
        root_hash = hashlib.sha256()
        root_bytes = 0
        for rel, entry in files:
            size = entry.stat().st_size
            suffix = os.path.splitext(rel)[1].lower()
            digest = _content_digest(os.fspath(entry), size) if suffix in CONTENT_SUFFIXES else ""
            n_hashed += bool(digest)
            root_hash.update(f"{rel}\0{size}\0{digest}\n".encode())
            root_bytes += size
        root_digest = root_hash.hexdigest()
        total.update(f"{p.name}\0{root_digest}\n".encode())
        roots.append({"path": str(p), "files": len(files), "bytes": root_bytes, "sha256": root_digest[:16]})
        n_files += len(files)
        n_bytes += root_bytes
    return {"sha256": total.hexdigest()[:16], "files": n_files, "bytes": n_bytes,
            "content_hashed": n_hashed, "roots": roots,
            "method": "sha256 over relative path + size of every file, plus content of "
                      "json/jsonl/parquet/csv/txt/arrow files (first+last MiB above 64 MiB)"}


# ----------------------------------------------------------------
# The `flexeval run` command line that reproduces one benchmark's run, for run.json and for
# messages that tell the user to run it again (paths made absolute, so it works from any folder).

# RunConfig field -> option, for the options that change what is computed or where it goes.
_OPTIONS = [("limit", "--limit"), ("batch_size", "--batch-size"), ("dtype", "--dtype"), ("device", "--device"),
            ("selection", "--selection"), ("threshold", "--threshold"), ("first_layer", "--first-layer"),
            ("zoom", "--zoom"), ("tag", "--tag"), ("seed", "--seed"),
            ("max_new_tokens", "--max-new-tokens")]
_DEFAULTS = {"batch_size": "auto", "dtype": "auto", "device": "auto", "seed": 0}


def run_command(cfg, bench: str, data_dir: Path, protocol: str, split: str | None = None) -> str:
    """`flexeval run --bench <bench> ...` with this run's options (a hub id stays as spelled);
    `split`: the benchmark's resolved split (None for one without splits)."""
    model = str(cfg.model)
    if Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    args = ["flexeval", "run", "--bench", bench, "--model", model, "--data-dir", str(Path(data_dir).resolve()),
            "--out", str(Path(cfg.out).resolve()), "--protocol", protocol]
    if split:
        args += ["--split", split]
    for field, option in _OPTIONS:
        value = getattr(cfg, field)
        if value is not None and value != _DEFAULTS.get(field):
            args += [option, str(value)]
    return shlex.join(args)
