"""Capped-size JPEG thumbnails of item images, named by the image's content: written once, reused by
every run and every rerun of the report (the resumable part of the slow work)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from flexeval.benchmarks.base import ImageRef, image_digest, open_image
from flexeval.errors import FlexEvalError

MAX_SIDE = 480  # px: a 62,000-item run's thumbnails stay ~1-2 GB at most, one page loads one


def write_file(path: Path, data: bytes) -> None:
    """Temp file + rename (no fsync: the report is rebuilt by rerunning the command)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def thumbnail(source, thumbs_dir: Path, where: str) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """-> (file name under thumbs_dir, original (w, h), None) or (None, None, why not)."""
    if source is None:
        return None, None, "the item has no image"
    try:
        digest = image_digest(source)
    except FlexEvalError as e:
        return None, None, str(e)
    key = hashlib.sha256(f"{digest}|{MAX_SIDE}".encode()).hexdigest()[:20]
    sizes = thumbs_dir / "sizes"
    size_file = sizes / f"{key}.txt"
    name = f"{key}.jpg"
    if (thumbs_dir / name).is_file() and size_file.is_file():
        w, h = (int(v) for v in size_file.read_text().split("x"))
        return name, (w, h), None
    from flexeval.model.image import to_rgb8  # here: importing the model package costs seconds

    try:
        img = open_image(source, where=where)
    except FlexEvalError as e:
        return None, None, str(e)
    orig = img.size
    img = to_rgb8(img)  # the model's own rule for 16-bit, float and transparent images
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    write_file(thumbs_dir / name, buf.getvalue())
    write_file(size_file, f"{orig[0]}x{orig[1]}".encode())
    return name, orig, None


def source_file(source) -> str | None:
    """A local image file the sample page can link to (full resolution), or None."""
    return str(Path(source).resolve()) if isinstance(source, str) and not isinstance(source, ImageRef) else None
