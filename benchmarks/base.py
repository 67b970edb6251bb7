"""What every benchmark adapter shares: samples, the two request kinds, scoring rows, images.

A benchmark never touches the model: it turns release files into `Sample`s, a sample into a
`Generate` or `Choice` request, and a prediction record (a line of predictions.jsonl) into a
score. The runner is the only place that knows both a benchmark and a model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from flexeval.errors import FlexEvalError


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


@dataclass(frozen=True)
class Generate:
    """Greedy generation from `prompt` (full conversation text holding one `<image>`)."""

    prompt: str
    max_new_tokens: int = 32
    image_mode: str = "pad"  # "pad" (release: pad to square) | "crop" (CLIP processor: resize + centre crop)


@dataclass(frozen=True)
class Choice:
    """Mean-NLL score of each `prompt + " " + option` continuation; prediction = argmin."""

    prompt: str
    options: tuple[str, ...]
    append_eos: bool = False  # official V*: the option is followed by </s>, counted in the mean
    image_mode: str = "pad"


Request = Union[Generate, Choice]

_digest_cache: dict[tuple, str] = {}


def image_digest(image: ImageSource | None) -> str:
    """sha256 of the image file's bytes (memoised per path, size and mtime)."""
    if image is None:
        return "none"
    if isinstance(image, ImageRef):
        return image.sha256
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    try:
        st = os.stat(image)
    except OSError as e:
        raise FlexEvalError(f"image file {image} cannot be read ({e}); restore it or re-fetch the data") from e
    key = (image, st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with open(image, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


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


def open_image(image: ImageSource, where: str = "") -> Image.Image:
    """Decode an image source to RGB; a broken file is a FlexEvalError naming it."""
    if isinstance(image, ImageRef):  # lazily referenced parquet cell: read it here, in the data worker
        where = where or f"{image.path} row {image.row}"
        image = image.read()
    try:
        img = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
        img.load()
    except Exception as e:  # PIL raises many types
        name = where or (image if isinstance(image, str) else "<embedded image bytes>")
        raise FlexEvalError(f"cannot decode image {name}: {e}; replace the file or re-fetch the data") from e
    return img.convert("RGB")


def read_json(path: Path) -> Any:
    """Parse a release JSON file; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise FlexEvalError(f"missing file {path}") from e
    except json.JSONDecodeError as e:
        raise FlexEvalError(f"{path} is not valid JSON ({e}); re-download it") from e


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
    kind: str = "generate"  # "generate" | "choice"

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

    def count_report(self, samples: list[Sample]) -> dict:
        """Loaded vs published counts per subset; `mismatch` lists the differences."""
        loaded: dict[str, int] = {}
        for s in samples:
            loaded[s.subset] = loaded.get(s.subset, 0) + 1
        loaded["overall"] = len(samples)
        mismatch = {
            k: {"expected": v, "loaded": loaded.get(k, 0)}
            for k, v in self.expected_counts.items()
            if loaded.get(k, 0) != v
        }
        return {"loaded": loaded, "expected": dict(self.expected_counts), "mismatch": mismatch}
