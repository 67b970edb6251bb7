"""A multiple-choice file in VLMEvalKit's MCQ TSV layout, evaluated by path: `--bench path/to/file.tsv`.

The layout (facts from VLMEvalKit's ImageMCQDataset / ImageBaseDataset; the code is ours): a
tab-separated file with a header row; columns `index` (the item id), `question`, one column per
option letter `A`, `B`, ... (2 to 8 options; a row may leave its last letters empty), `answer`
(the right letter), optional `category` (the accuracy.csv row; without it every item counts in
`all`), optional `hint` (put before the question), and the image as `image` (base64 of the encoded
file; a value of 64 characters or fewer is the `index` of another row whose image it shares, as
VLMEvalKit stores repeated images) or `image_path` (a path, relative to the TSV's folder). A
value written as a Python list (`['...', '...']`) holds several images: the first is used.

Protocols (the ones flexeval has for V*):
- `likelihood` (default; the FlexAttention paper's rule): the option of lowest mean NLL as the
  answer to `{hint}\\n{question}\\nAnswer the question using a single word or phrase.`; a tie goes
  to the lowest letter.
- `letter` (lmms-eval style, as benchmarks/vstar_letter.py): `{hint}\\n{question}\\nA. ...\\nB. ...`
  then "Answer with the option's letter from the given choices directly.", greedy, 16 new tokens,
  the reply parsed by lmms-eval's rules extended from A-D to the row's letters. The question text
  is also exactly what VLMEvalKit's LLaVA class asks for a multiple-choice row.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexeval.errors import FlexEvalError

from . import vstar_letter
from .asking import ask, choose
from .base import Sample
from .file_bench import FileBenchmark, file_bench_name  # noqa: F401  (file_bench_name: its old home)
from .wording import SHORT_ANSWER_SUFFIX

LETTERS = "ABCDEFGH"
LETTER_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
LETTER_MAX_NEW_TOKENS = 16
IMAGE_REF_MAX = 64  # VLMEvalKit: an `image` value this short is another row's index
REQUIRED = ("index", "question", "answer")
NO_CATEGORY = "all"


@dataclass
class TsvRow:
    number: int  # 1-based data row (the header is row 0)
    cells: dict[str, str]
    image: bytes | None = None  # the decoded `image` cell (its base64 text is dropped while reading)
    n_images: int = 1


def read_tsv(path: Path, absorb=None) -> tuple[list[str], list[TsvRow]]:
    """Header and rows of a VLMEvalKit TSV (pandas' quoting); every row must have the header's width.
    `absorb(row)` sees each row as it is read (ImageCells decodes its image there, so a 2 GB file's
    base64 text is never held whole)."""
    csv.field_size_limit(sys.maxsize)  # base64 images are megabytes long
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header:
                raise FlexEvalError(f"{path}: empty file; a VLMEvalKit TSV starts with a header row "
                                    f"(index, question, A, B, ..., answer, image)")
            header = [h.strip() for h in header]
            rows = []
            for k, cells in enumerate(reader, start=1):
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise FlexEvalError(f"{path}: row {k} has {len(cells)} columns, the header {len(header)}; "
                                        f"a tab or quote inside a field is not escaped: rewrite the file with "
                                        f"pandas `to_csv(sep='\\t', index=False)`")
                row = TsvRow(k, dict(zip(header, cells)))
                if absorb is not None:
                    absorb(row)
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FlexEvalError(f"cannot read {path} as a UTF-8 TSV ({e}); check the file") from e
    return header, rows


def option_letters(path: Path, header: list[str]) -> str:
    """The option columns: A, B, ... consecutive, 2 to 8 of them."""
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise FlexEvalError(f"{path}: missing column(s) {', '.join(missing)}; a VLMEvalKit MCQ TSV has index, "
                            f"question, A, B, ..., answer and image (or image_path)")
    if "image" not in header and "image_path" not in header:
        raise FlexEvalError(f"{path}: no 'image' (base64) or 'image_path' column; add one of them")
    letters = ""
    for letter in LETTERS:
        if letter not in header:
            break
        letters += letter
    extra = [c for c in header if len(c) == 1 and c.isupper() and c not in letters]
    if len(letters) < 2 or extra:
        raise FlexEvalError(f"{path}: option columns must be A, B, ... in sequence, 2 to 8 of them; found "
                            f"{', '.join(c for c in header if len(c) == 1 and c.isupper()) or 'none'}")
    return letters


def _first(value: str) -> tuple[str, int]:
    """A cell holding one value, or a Python list of values (several images): (first, how many)."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text, 1
        if isinstance(items, list) and items:
            return str(items[0]), len(items)
    return text, 1


class ImageCells:
    """Decodes the image column once per distinct image (repeated images share one bytes object)."""

    def __init__(self, path: Path):
        self.path = path
        self.decoded: dict[str, bytes] = {}  # sha256 -> bytes
        self.by_index: dict[str, TsvRow] = {}

    def absorb(self, row: TsvRow) -> None:
        """While reading: a base64 `image` cell becomes `row.image` (bytes); a short one stays (a reference)."""
        self.by_index.setdefault(row.cells.get("index", "").strip(), row)
        first, row.n_images = _first(row.cells.get("image", ""))
        if len(first) > IMAGE_REF_MAX:
            row.image, row.cells["image"] = self._decode(first, row), ""

    def image(self, row: TsvRow) -> tuple[Any, dict]:
        """(image source, meta extras) of a row: bytes (base64), or a path string (image_path)."""
        extra = {"n_images": row.n_images} if row.n_images > 1 else {}
        if row.image is not None:
            return row.image, extra
        ref = _first(row.cells.get("image", ""))[0]
        if ref:
            target = self.by_index.get(ref)
            if target is None or target.image is None:
                raise FlexEvalError(f"{self.path}: row {row.number} (index {row.cells['index']}), column 'image': "
                                    f"{ref!r} is neither base64 nor the index of a row holding an image; "
                                    f"put the image's base64 there")
            return target.image, extra
        value = row.cells.get("image_path", "").strip()
        if not value:
            raise FlexEvalError(f"{self.path}: row {row.number} (index {row.cells['index']}) has no image "
                                f"('image' and 'image_path' empty); add one")
        first, n = _first(value)
        image = Path(first) if Path(first).is_absolute() else self.path.parent / first
        if not image.is_file():
            raise FlexEvalError(f"{self.path}: row {row.number} (index {row.cells['index']}), column 'image_path': "
                                f"{image} does not exist; paths are relative to the TSV's folder")
        return str(image), ({"n_images": n} if n > 1 else {})

    def _decode(self, text: str, row: TsvRow) -> bytes:
        try:
            data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise FlexEvalError(f"{self.path}: row {row.number} (index {row.cells.get('index', '?')}), column 'image': "
                                f"not valid base64 ({e}); re-export the image") from e
        return self.decoded.setdefault(hashlib.sha256(data).hexdigest(), data)


def row_sample(path: Path, letters: str, row: TsvRow, images: ImageCells, extra_meta: tuple[str, ...] = ()) -> Sample:
    """One TSV row as a Sample: target = the answer letter, options = the row's non-empty option cells."""
    cells, where = row.cells, f"{path}: row {row.number} (index {row.cells['index'].strip()})"
    options = [cells[c].strip() for c in letters]
    n = len(options)
    while n and not options[n - 1]:
        n -= 1
    if n < 2:
        raise FlexEvalError(f"{where}: {n} option(s) in columns {', '.join(letters)}; a question needs 2 to 8")
    blank = [letters[k] for k in range(n) if not options[k]]
    if blank:
        raise FlexEvalError(f"{where}, column '{blank[0]}': empty while a later option is filled; "
                            f"options must be consecutive from A")
    answer = cells["answer"].strip().upper()
    if len(answer) != 1 or answer not in letters[:n]:
        raise FlexEvalError(f"{where}, column 'answer': {cells['answer']!r} is not one of the row's letters "
                            f"{', '.join(letters[:n])}; write the right option's letter")
    if not cells["question"].strip():
        raise FlexEvalError(f"{where}, column 'question': empty; write the question")
    image, meta = images.image(row)
    hint = cells.get("hint", "").strip()
    if hint and hint.lower() != "nan":  # a missing hint: empty (pandas' to_csv) or "nan" (a stringified NaN)
        meta["hint"] = hint
    meta.update({k: cells[k].strip() for k in extra_meta if k in cells})
    category = cells.get("category", "").strip() or NO_CATEGORY
    return Sample(id=cells["index"].strip(), subset=category, question=cells["question"].strip(), image=image,
                  target=answer, options=tuple(options[:n]), meta=meta)


def load_tsv(path: Path, extra_meta: tuple[str, ...] = ()) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise FlexEvalError(f"{path}: no such file; give the path of a VLMEvalKit MCQ TSV")
    images = ImageCells(path)
    header, rows = read_tsv(path, images.absorb)
    letters = option_letters(path, header)
    seen: dict[str, int] = {}
    for r in rows:
        index = r.cells["index"].strip()
        if not index:
            raise FlexEvalError(f"{path}: row {r.number}, column 'index': empty; every row needs a unique index")
        if index in seen:
            raise FlexEvalError(f"{path}: row {r.number}, column 'index': {index!r} repeats row {seen[index]}; "
                                f"every row needs a unique index")
        seen[index] = r.number
    return [row_sample(path, letters, r, images, extra_meta) for r in rows]


# ---- the two protocols ----

def full_question(sample: Sample) -> str:
    hint = sample.meta.get("hint")
    return f"{hint}\n{sample.question}" if hint else sample.question


def letter_prompt(sample: Sample) -> str:
    lines = [f"{LETTERS[k]}. {o}" for k, o in enumerate(sample.options)]
    return full_question(sample) + "\n" + "\n".join(lines) + LETTER_POST_PROMPT


def parse_letter(reply: str, n_options: int) -> str | None:
    """lmms-eval's `extract_answer_letter` (benchmarks/vstar_letter.py) over the letters A.. of n options."""
    return vstar_letter.parse_letter(reply, LETTERS[n_options - 1])


def score_choice(record: dict, protocol: str) -> dict:
    """1 if the chosen letter is the `target` letter (likelihood: the first lowest NLL)."""
    target = str(record["target"])
    if protocol == "letter":
        parsed = parse_letter(record.get("prediction") or "", len(record["options"]))
        return {"score": float(parsed == target), "parsed": parsed}
    nll = record.get("option_nll")
    if not nll or record.get("prediction") is None:  # skipped (no image) or non-finite
        return {"score": 0.0, "parsed": None}
    letter = LETTERS[min(range(len(nll)), key=lambda k: (nll[k], k))]
    return {"score": float(letter == target), "parsed": letter}


class McqFile(FileBenchmark):
    """`--bench path/to/file.tsv`: results under <out>/<tag>/<file stem>/."""

    protocols = ("likelihood", "letter")
    kind = "mcq_file"

    def load(self, data_dir: Path | None = None, **options: Any) -> list[Sample]:
        return load_tsv(self.path)

    def request(self, sample: Sample, protocol: str):
        if self.check_protocol(protocol) == "letter":
            return ask(letter_prompt(sample), LETTER_MAX_NEW_TOKENS)
        return choose(full_question(sample) + SHORT_ANSWER_SUFFIX, sample.options)

    def score(self, record: dict, protocol: str) -> dict:
        return score_choice(record, self.check_protocol(protocol))

    def run_info(self) -> dict:
        """run.json fields: the file (so rescore/compare find this benchmark again) and the metric."""
        return {"benchmark_file": str(self.path.resolve()), "benchmark_kind": self.kind, "metric": "accuracy"}
