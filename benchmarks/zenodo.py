"""Downloading release files from a Zenodo record (stdlib urllib), with a clear offline error."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from flexeval.errors import FlexEvalError
from flexeval.hub import offline

API = "https://zenodo.org/api/records/{record}"
TIMEOUT_S = 60


def record_files(record: str) -> list[dict]:
    """The record's file list: [{"key", "size", "checksum", "links": {"self"}}, ...]."""
    with urllib.request.urlopen(API.format(record=record), timeout=TIMEOUT_S) as resp:
        return json.load(resp).get("files", [])


def download(record: str, wanted: Callable[[str], bool], out_dir: Path, hint: str) -> list[Path]:
    """Download the files of `record` whose name `wanted` accepts into `out_dir`.

    Each file goes to a temporary name first and is renamed once complete and checked against the
    record's md5, so an interrupted download never looks like a finished one. Files already there
    with the right size are kept.
    """
    out_dir = Path(out_dir)
    if offline():
        raise FlexEvalError(f"offline (HF_HUB_OFFLINE=1): cannot reach Zenodo record {record}; {hint}")
    try:
        files = [f for f in record_files(record) if wanted(f["key"])]
    except Exception as e:  # network errors come in many types
        raise FlexEvalError(f"could not list Zenodo record {record} ({type(e).__name__}: {e}); {hint}") from e
    if not files:
        raise FlexEvalError(f"Zenodo record {record} lists none of the expected files; {hint}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        dest = out_dir / f["key"]
        if not (dest.is_file() and dest.stat().st_size == f.get("size")):
            try:
                _fetch_one(f["links"]["self"], dest, f.get("checksum", ""))
            except FlexEvalError:
                raise
            except Exception as e:
                raise FlexEvalError(f"could not download {f['key']} from Zenodo record {record} "
                                    f"({type(e).__name__}: {e}); {hint}") from e
        paths.append(dest)
    return paths


def _fetch_one(url: str, dest: Path, checksum: str) -> None:
    tmp = dest.with_name(dest.name + ".part")
    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(tmp, "wb") as out:
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            out.write(chunk)
            md5.update(chunk)
    expected = checksum.split(":", 1)[1] if checksum.startswith("md5:") else None
    if expected and md5.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise FlexEvalError(f"{dest.name}: md5 {md5.hexdigest()} != {expected} listed by Zenodo; download again")
    tmp.replace(dest)


def extract_matching(archive: Path, pattern: str, out_dir: Path) -> int:
    """Extract the members of a .tar/.zip whose path matches `pattern` (a regex on the member path)."""
    regex = re.compile(pattern)
    count = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if regex.search(name):
                    zf.extract(name, out_dir)
                    count += 1
        return count
    with tarfile.open(archive) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and regex.search(m.name)]
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(out_dir, members=members, **kwargs)  # the data filter refuses unsafe paths
        count = len(members)
    return count
