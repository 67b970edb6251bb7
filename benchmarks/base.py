"""What every benchmark adapter shares: samples, scoring rows, images.

A benchmark never touches the model: it turns release files into `Sample`s, a sample into a
`Generate` or `Choice` request (flexeval/requests.py), and a prediction record (a line of predictions.jsonl) into a
score. The runner is the only place that knows both a benchmark and a model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from flexeval.errors import FlexEvalError
from flexeval.requests import Request
from flexeval.results.store import file_sha256


@dataclass(frozen=True)
class ImageRef:
    """An image embedded in a release file (a parquet cell), read by the process that needs it.

    Loading a parquet release keeps these, not the encoded bytes, so N ranks (and their data
    workers) do not each hold the whole benchmark's images. `sha256` and `nbytes` are taken
    from the bytes while loading, so a sample's fingerprint is the one the bytes would give.
    """

    path: str  # the parquet file
    row: int  # row in that file
    column: str  # the image column ("image", or a list column such as MagnifierBench's "images")
    item: int | None  # index inside a list column; None for a plain image column
    sha256: str  # of the encoded image bytes
    nbytes: int  # size of the encoded image (the data side of an item's cost estimate)

    def read(self) -> bytes:
        from .parquet_images import read_image_ref

        return read_image_ref(self)


# An image as a benchmark hands it over: a path on disk, the encoded file's bytes (base64
# releases), or a reference into a parquet file. Decoding happens later, in the runner's data workers.
ImageSource = Union[str, bytes, ImageRef]


@dataclass(frozen=True)
class Sample:
    """One evaluation item, as the release defines it."""

    id: str  # the release's own identifier (V*: "<subset>/<stem>", TextVQA question_id, ...)
    subset: str  # the row of accuracy.csv it counts in
    question: str  # the release's question text, verbatim
    image: ImageSource | None  # None: the item has no usable image (counted, scored wrong)
    target: Any  # JSON-serialisable: answer string, list of answers, or a letter
    options: tuple[str, ...] = ()  # choice questions: the options in release order
    meta: dict = field(default_factory=dict)  # JSON-serialisable extras kept in the record

    def fingerprint(self) -> str:
        """Content hash of the item (text fields and image bytes), for safe resume."""
        h = hashlib.sha256()
        payload = [self.id, self.subset, self.question, self.target, list(self.options), self.meta]
        h.update(json.dumps(payload, sort_keys=True, default=str).encode())
        h.update(image_digest(self.image).encode())
        return h.hexdigest()[:16]



def image_digest(image: ImageSource | None) -> str:
    """sha256 of the image file's bytes (memoised per path, size and mtime)."""
    if image is None:
        return "none"
    if isinstance(image, ImageRef):
        return image.sha256
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    try:
        return file_sha256(image)
    except OSError as e:
        raise FlexEvalError(f"image file {image} cannot be read ({e}); restore it or re-fetch the data") from e


def decode_image_bytes(value: Any) -> bytes:
    """Encoded image bytes from what releases store: bytes, {"bytes": ...}, base64 text, PIL image."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes") is not None:
        return bytes(value["bytes"])
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        return base64.b64decode(text)
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


# A decompression bomb guard chosen on purpose (PIL's own is 89 Mpx warn / 179 Mpx refuse): real V*
# images reach 5759x1440 = 8.3 Mpx; 40 Mpx is ~5x that, ~120 MB as decoded RGB per image in flight.
# Configurable per run (`--max-image-pixels`); an image over it is a counted, reported skipped row.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = None  # PIL's global guard off: `max_pixels` below is the one limit


def image_header_problem(image: ImageSource, where: str = "", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """Reads only the header: None, or why the image cannot be used (unreadable, too many pixels)."""
    name = where or (image if isinstance(image, str) else "<embedded image bytes>")
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
            w, h = img.size
    except Exception as e:  # PIL raises many types
        return f"cannot decode image {name}: {e}; replace the file or re-fetch the data"
    if max_pixels and w * h > max_pixels:  # a large file is not a broken one: replacing it is no fix
        return (f"image {name} is {w}x{h} = {w * h / 1e6:.1f} Mpx, over the limit of {max_pixels / 1e6:g} Mpx "
                f"(a guard against decompression bombs); if the file is genuine, raise --max-image-pixels")
    return None


def open_image(image: ImageSource, where: str = "", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image source in its own mode (16-bit, float, alpha kept: the model side turns it
    into 8-bit RGB, `model.image.to_rgb8`); a multi-page file gives its first page (frame 0).
    A broken or over-limit file is a FlexEvalError naming it."""
    if isinstance(image, ImageRef):  # lazily referenced parquet cell: read it here, in the data worker
        where = where or f"{image.path} row {image.row}"
        image = image.read()
    problem = image_header_problem(image, where, max_pixels)
    if problem:
        raise FlexEvalError(problem)
    name = where or (image if isinstance(image, str) else "<embedded image bytes>")
    try:
        img = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
        img.load()
    except Exception as e:  # PIL raises many types
        raise FlexEvalError(f"cannot decode image {name}: {e}; replace the file or re-fetch the data") from e
    return img


def note_missing(seen: dict, missing: list[str], key: Any, image: Path) -> None:
    """Look each image (by key) up on disk once; list those not there in `missing`, in first-use order."""
    if key not in seen:
        seen[key] = image.is_file()
        if not seen[key]:
            missing.append(str(image))


def read_utf8(path: Path) -> str:
    """A release text file's text; a non-UTF-8 file is an error naming the file, the byte and the fix."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FlexEvalError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); the "
                            f"release files are UTF-8: re-download it, or save it again as UTF-8") from e


def read_json(path: Path) -> Any:
    """Parse a release JSON file; errors name the file."""
    try:
        return json.loads(read_utf8(path))  # a non-UTF-8 file (an editor's Latin-1 save) was a traceback
    except FileNotFoundError as e:
        raise FlexEvalError(f"missing file {path}") from e
    except json.JSONDecodeError as e:
        raise FlexEvalError(f"{path} is not valid JSON ({e}); re-download it") from e


def json_lines(text: str, path: Path, fix: str) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) of each non-blank line of a JSONL file's text; a line that is
    not JSON is an error naming the file, the line and `fix`."""
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FlexEvalError(f"{path}: line {k} is not valid JSON ({e}); {fix}") from e
        yield k, row


def read_parquet_text(path: Path, image_column: str, skip: tuple[str, ...] = ()) -> list[dict]:
    """A release parquet file's rows without the image column (and `skip`): the images stay in the
    file, referenced (benchmarks/parquet_images.py); errors name the file and the missing field."""
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
        rows = pq.read_table(path, columns=[c for c in names if c != image_column and c not in skip]).to_pylist()
    except Exception as e:  # pyarrow raises several types for damaged files
        raise FlexEvalError(f"cannot read parquet file {path} ({e}); re-download it") from e
    if image_column not in names:
        raise FlexEvalError(f"{path}: missing field '{image_column}'; the file is not in the release format")
    return rows


def require_field(obj: dict, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise FlexEvalError(f"{where}: missing field '{key}'; the file is not in the release format")
    return obj[key]


def accuracy_rows(benchmark: str, scored: list[dict], subsets: list[str] | None = None) -> list[dict]:
    """accuracy.csv rows: one per subset (in `subsets` order, then any others) and `overall`.

    `scored` holds dicts with at least `subset` and `score` (0..1; TextVQA's soft score).
    `correct` is the sum of scores, accuracy is percent.
    """
    by_subset: dict[str, list[float]] = {}
    for r in scored:
        by_subset.setdefault(r["subset"], []).append(float(r["score"]))
    order = list(subsets or []) + sorted(s for s in by_subset if s not in (subsets or []))
    rows = [_row(benchmark, s, by_subset.get(s, [])) for s in order]
    rows.append(_row(benchmark, "overall", [x for s in order for x in by_subset.get(s, [])]))
    return rows


def subset_item_scores(scored: list[dict], subsets: list[str] | None = None) -> dict[str, list[list[float]]]:
    """The per-item scores behind each `accuracy_rows` row, as one stratum each (flexeval/results/intervals.py
    turns them into standard errors and bootstrap intervals); rows are keyed by subset name."""
    by_subset: dict[str, list[float]] = {s: [] for s in subsets or []}
    for r in scored:
        by_subset.setdefault(r["subset"], []).append(float(r["score"]))
    out = {s: [v] for s, v in by_subset.items()}
    out["overall"] = [[float(r["score"]) for r in scored]]
    return out


def _row(benchmark: str, subset: str, scores: list[float]) -> dict:
    n = len(scores)
    correct = round(sum(scores), 6)
    return {
        "benchmark": benchmark,
        "subset": subset,
        "n": n,
        "correct": correct,
        "accuracy": round(100.0 * correct / n, 4) if n else float("nan"),
    }


class Benchmark:
    """Base class of the adapters; subclasses set the class attributes and the methods."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ("paper",)  # the first is the default
    subsets: tuple[str, ...] = ()  # accuracy.csv row order
    expected_counts: dict[str, int] = {}  # published item counts per subset (and/or "overall")
    splits: tuple[str, ...] = ()  # benchmarks with several test splits: the first is the default

    def load(self, data_dir: Path, **options: Any) -> list[Sample]:
        raise NotImplementedError

    def request(self, sample: Sample, protocol: str) -> Request:
        raise NotImplementedError

    def score(self, record: dict, protocol: str) -> dict:
        """Score one prediction record (needs only the record): {"score": 0..1, ...extras}."""
        raise NotImplementedError

    def table(self, records: list[dict], protocol: str) -> list[dict]:
        """accuracy.csv rows from scored records (each has `subset` and `score`)."""
        return accuracy_rows(self.name, records, list(self.subsets))

    def row_scores(self, records: list[dict], protocol: str) -> dict[str, list[list[float]]]:
        """Per-item scores behind each row of `table` (strata of scores; the row = mean of the strata
        means), for its standard error and bootstrap interval. A benchmark with extra rows adds them."""
        return subset_item_scores(records, list(self.subsets))

    def make_sample(self, out_dir: Path, n: int = 8, seed: int = 0) -> Path:
        raise NotImplementedError

    def fetch(self, out_dir: Path) -> Path:
        raise NotImplementedError

    def check_protocol(self, protocol: str) -> str:
        protocol = protocol or self.protocols[0]
        if protocol not in self.protocols:
            raise FlexEvalError(
                f"benchmark {self.name} has no protocol '{protocol}'; choose one of {', '.join(self.protocols)}"
            )
        return protocol

    def check_split(self, split: str | None) -> str | None:
        """The split's canonical name (None: the benchmark has one test set and no --split was given)."""
        if not split:
            return self.splits[0] if self.splits else None
        if split not in self.splits:
            raise FlexEvalError(f"benchmark {self.name} has no split '{split}'; "
                                + (f"choose one of {', '.join(self.splits)}" if self.splits else "drop --split"))
        return split

    def count_report(self, samples: list[Sample]) -> dict:
        """Loaded vs published counts per subset; `mismatch` lists the differences."""
        return count_against(samples, self.expected_counts)


def count_against(samples: list[Sample], expected: dict[str, int]) -> dict:
    """Items per subset (and `overall`) as loaded, beside the published `expected` counts."""
    loaded: dict[str, int] = {}
    for s in samples:
        loaded[s.subset] = loaded.get(s.subset, 0) + 1
    loaded["overall"] = len(samples)
    mismatch = {k: {"expected": v, "loaded": loaded.get(k, 0)} for k, v in expected.items() if loaded.get(k, 0) != v}
    return {"loaded": loaded, "expected": dict(expected), "mismatch": mismatch}
