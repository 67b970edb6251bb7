"""Images embedded in parquet releases, referenced instead of held: scan once, read on demand.

`scan_image_column` streams a file's image column a few rows at a time, hashing each image and
keeping only an `ImageRef` (file, row, digest, size); `read_image_ref` reads one cell back in the
process that decodes it. Parquet reads whole row groups (`datasets` writes ~100 images a group),
so the last group read is kept per process: a rank reads its items in file order and so touches
each group once per data worker, with one group's image column in memory at a time.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from flexeval.errors import FlexEvalError

from .base import ImageRef, decode_image_bytes

_SCAN_ROWS = 64  # rows hashed at a time while loading


def scan_image_column(path: Path, column: str, item: int | None = None) -> list[tuple[ImageRef | None, int]]:
    """Per row: (a reference to its image, or None when the cell holds none; the list length of a
    list column, 1 or 0 for a plain one). `item` picks the element of a list column."""
    import pyarrow.parquet as pq

    out: list[tuple[ImageRef | None, int]] = []
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_SCAN_ROWS, columns=[column])
        for batch in batches:
            for value in batch.column(0).to_pylist():
                row = len(out)
                where = f"{path} row {row}"
                cell = value
                if item is not None:
                    cell = value[item] if value and len(value) > item else None
                if cell is None:
                    out.append((None, len(value or []) if item is not None else 0))
                    continue
                try:
                    data = decode_image_bytes(cell)
                except (ValueError, TypeError) as e:
                    raise FlexEvalError(f"{where}: field '{column}' holds no embedded image ({e}); "
                                        "re-download the data") from e
                ref = ImageRef(str(path), row, column, item, hashlib.sha256(data).hexdigest(), len(data))
                out.append((ref, len(value) if item is not None else 1))
    except FlexEvalError:
        raise
    except Exception as e:  # pyarrow raises several types for damaged files
        raise FlexEvalError(f"cannot read parquet file {path} ({e}); re-download it") from e
    return out


def read_image_ref(ref: ImageRef) -> bytes:
    """The encoded bytes of one referenced image; a damaged or changed file is a FlexEvalError."""
    try:
        starts, table = _row_group_of(ref.path, ref.column, ref.row)
        cell = table.column(0)[ref.row - starts].as_py()
        if ref.item is not None:
            cell = cell[ref.item]
        data = decode_image_bytes(cell)
    except FlexEvalError:
        raise
    except Exception as e:
        raise FlexEvalError(f"cannot read the image of {ref.path} row {ref.row} ({e}); re-download it") from e
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise FlexEvalError(f"{ref.path} changed while the run was going (row {ref.row}: image differs from "
                            "the one loaded); rerun once the data is final")
    return data


@lru_cache(maxsize=1)
def _row_groups(path: str) -> tuple[list[int], object]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    starts, n = [], 0
    for g in range(f.num_row_groups):
        starts.append(n)
        n += f.metadata.row_group(g).num_rows
    return starts, f


@lru_cache(maxsize=1)
def _read_group(path: str, column: str, group: int):
    return _row_groups(path)[1].read_row_group(group, columns=[column])


def _row_group_of(path: str, column: str, row: int):
    import bisect

    starts, _ = _row_groups(path)
    group = bisect.bisect_right(starts, row) - 1
    return starts[group], _read_group(path, column, group)
