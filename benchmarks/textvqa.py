"""TextVQA val, OCR-free (5000 questions on 3166 images), scored with the EvalAI VQA accuracy.

Release layouts read here:
- the original files: `TextVQA_0.5.1_val.json` (`{"data": [{question_id, question, image_id,
  answers[10], ...}]}`) with the images at `train_images/{image_id}.jpg` (val images live in
  the train_images folder of the release);
- the HF parquet copies (`lmms-lab/textvqa`: `data/validation-*.parquet`; `facebook/textvqa`'s
  parquet conversion: `.../validation/*.parquet`), same fields with the image embedded as
  `{"bytes", "path"}`. `lmms-lab` adds `ocr_tokens`; they never reach the prompt (OCR-free protocol).

Protocol "paper" (the FlexAttention release): `{question}\\nAnswer the question using a single
word or phrase.`, greedy. Score = soft VQA accuracy of the stripped reply (vqa_eval.py).
max_new_tokens = 64 (the release allows 512): a reply cut at 64 tokens could only change its
score if a ground-truth answer normalised to 64+ tokens, which TextVQA answers never are.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from flexeval.checks import repeated_ids
from flexeval.errors import FlexEvalError

from .asking import ShortAnswer
from .base import Benchmark, ImageRef, Sample, note_missing, read_json, read_parquet_text, require_field
from .vqa_eval import vqa_accuracy

# lmms-lab/textvqa is a plain parquet repo (facebook/textvqa started as a loading script), and a
# filtered snapshot of it fetches only the validation shards (~0.9 GB of ~8 GB).
HUB_REPO = "lmms-lab/textvqa"
HUB_PATTERNS = ["data/validation-*.parquet", "README.md"]
ANNOTATIONS = "TextVQA_0.5.1_val.json"
IMAGE_DIR = "train_images"
SUBSET = "val"
MAX_NEW_TOKENS = 64


class TextVQA(ShortAnswer, Benchmark):
    name = "textvqa"
    aliases = ("textvqa_val", "text_vqa")
    protocols = ("paper",)
    max_new_tokens = MAX_NEW_TOKENS  # the question verbatim; OCR tokens are never added (OCR-free protocol)
    subsets = (SUBSET,)
    expected_counts = {SUBSET: 5000, "overall": 5000}

    def load(self, data_dir: Path, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir)
        if (data_dir / ANNOTATIONS).is_file():
            return _load_json(data_dir)
        parquet = _find_validation_parquet(data_dir)
        if parquet:
            return _load_parquet(parquet)
        raise FlexEvalError(
            f"TextVQA data not found in {data_dir}: expected {ANNOTATIONS} with {IMAGE_DIR}/<image_id>.jpg "
            f"(the original release) or validation parquet files (data/validation-*.parquet of the HF "
            f"dataset {HUB_REPO}). Run `flexeval data fetch --bench textvqa --out {data_dir}` where a "
            f"network exists, or copy one of these layouts there."
        )

    def score(self, record: dict, protocol: str) -> dict:
        self.check_protocol(protocol)
        prediction = record.get("prediction")
        reply = prediction.strip() if isinstance(prediction, str) else None  # the release strips it
        return {"score": vqa_accuracy(reply, record["target"])}

    def make_sample(self, out_dir: Path, n: int = 6, seed: int = 0, fmt: str = "json") -> Path:
        """Generated questions in a release layout: fmt "json" (TextVQA_0.5.1_val.json +
        train_images/*.jpg) or "parquet" (lmms-lab's data/validation-*.parquet). Images are
        320x272 JPEGs (the val average 950x811, scaled); some images carry two questions."""
        if fmt not in ("json", "parquet"):
            raise FlexEvalError(f"unknown TextVQA sample format '{fmt}'; use json or parquet")
        rng = random.Random(seed)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        entries, images = _generate(rng, n)
        if fmt == "json":
            (out_dir / IMAGE_DIR).mkdir(exist_ok=True)
            for image_id, blob in images.items():
                (out_dir / IMAGE_DIR / f"{image_id}.jpg").write_bytes(blob)
            doc = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": entries}
            (out_dir / ANNOTATIONS).write_text(json.dumps(doc))
        else:
            _write_parquet(out_dir / "data" / "validation-00000-of-00001.parquet", entries, images, rng)
        return out_dir

    def fetch(self, out_dir: Path) -> Path:
        from flexeval.hub import fetch_dataset

        # Only the validation parquet shards (~0.9 GB of the repo's ~8 GB).
        return fetch_dataset(HUB_REPO, out_dir, what=f"TextVQA val; {ANNOTATIONS} + {IMAGE_DIR}/ work as well",
                        allow_patterns=list(HUB_PATTERNS))


def _load_json(data_dir: Path) -> list[Sample]:
    path = data_dir / ANNOTATIONS
    data = require_field(read_json(path), "data", str(path))
    if not isinstance(data, list):
        raise FlexEvalError(f"{path}: field 'data' must be a list of questions")
    samples, missing = [], []
    seen: dict[str, bool] = {}
    for k, entry in enumerate(data):
        where = f"{path} entry {k}"
        image_id = str(require_field(entry, "image_id", where))
        image = data_dir / IMAGE_DIR / f"{image_id}.jpg"
        note_missing(seen, missing, image_id, image)
        samples.append(_sample(entry, str(image), where))
    _refuse_duplicate_ids(samples, f"{path} field 'data'")
    if missing:
        raise FlexEvalError(f"TextVQA: {len(missing)} image(s) listed in {path} are missing, e.g. "
                            f"{', '.join(missing[:3])}; restore {data_dir / IMAGE_DIR}/ from the release")
    return samples


def _find_validation_parquet(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        return []
    return sorted(p for p in data_dir.rglob("*.parquet")
                  if p.name.startswith("validation") or p.parent.name == "validation")


def _load_parquet(files: list[Path]) -> list[Sample]:
    from .parquet_images import scan_image_column

    samples = []
    for path in files:
        rows = read_parquet_text(path, "image", skip=("ocr_tokens",))  # never the OCR tokens (OCR-free)
        for k, (row, (image, _)) in enumerate(zip(rows, scan_image_column(path, "image"), strict=True)):
            where = f"{path} row {k}"
            if image is None:
                raise FlexEvalError(f"{where}: field 'image' holds no embedded image; re-download it")
            samples.append(_sample(row, image, where))
    _refuse_duplicate_ids(samples, f"{', '.join(str(f) for f in files)}")
    return samples


def _refuse_duplicate_ids(samples: list[Sample], where: str) -> None:
    """question_id identifies an item (results, resume); a repeat would be counted twice or overwrite."""
    repeats = [f"question_id {i} (items {a} and {b})" for i, a, b in repeated_ids(samples)]
    if repeats:
        raise FlexEvalError(f"{where}: {len(repeats)} repeated question_id(s): {'; '.join(repeats[:10])}"
                            f"{' ...' if len(repeats) > 10 else ''}; each question must appear once - remove the "
                            f"repeats or restore the release file")


def _sample(entry: dict, image: str | ImageRef, where: str) -> Sample:
    question = require_field(entry, "question", where)
    answers = require_field(entry, "answers", where)
    if not isinstance(question, str) or not isinstance(answers, list) or not answers:
        raise FlexEvalError(f"{where}: 'question' must be a string and 'answers' a non-empty list")
    return Sample(id=str(require_field(entry, "question_id", where)), subset=SUBSET, question=question,
                  image=image, target=[str(a) for a in answers],
                  meta={"image_id": str(require_field(entry, "image_id", where))})


# ------------------------------------------------------------------ sample data
def _generate(rng: random.Random, n: int) -> tuple[list[dict], dict[str, bytes]]:
    from PIL import ImageDraw

    from .samples import draw_scene

    words = ["nokia", "coca-cola", "stop", "exit", "2019", "open", "u.s.a", "pepsi", "sale", "12"]
    entries, images = [], {}
    image_id = None
    for i in range(n):
        if image_id is None or rng.random() < 0.6:  # ~1.6 questions per image, like the release
            image_id = "".join(rng.choice("0123456789abcdef") for _ in range(16))
            img, boxes = draw_scene(rng, 320, 272, 2)
            ImageDraw.Draw(img).text((boxes[0][0], boxes[0][1]), rng.choice(words), fill=(0, 0, 0))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            images[image_id] = buf.getvalue()
        answer = rng.choice(words)
        # 10 annotators, mostly agreeing, with the variants the normaliser has to reconcile.
        answers = [rng.choice([answer, answer.upper(), f"the {answer}", rng.choice(words)]) for _ in range(10)]
        question = rng.choice(["what brand is this?", "what does the sign say?", "what number is shown?"])
        entries.append({
            "question": question,
            "image_id": image_id, "image_classes": ["Poster"],
            "flickr_original_url": f"https://farm1.staticflickr.com/{image_id}_o.jpg",
            "flickr_300k_url": f"https://c1.staticflickr.com/{image_id}_z.jpg",
            "image_width": 320, "image_height": 272, "answers": answers,
            "question_tokens": question.rstrip("?").split(), "question_id": 34602 + i, "set_name": "val",
        })
    return entries, images


def _write_parquet(path: Path, entries: list[dict], images: dict[str, bytes], rng: random.Random) -> None:
    """lmms-lab's validation shard: its column order, the embedded image and `ocr_tokens`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text, strings = pa.string(), pa.list_(pa.string())
    columns = [("image_id", text, "string"), ("question_id", pa.int64(), "int64"), ("question", text, "string"),
               ("question_tokens", strings, None), ("image", pa.struct([("bytes", pa.binary()), ("path", text)]), None),
               ("image_width", pa.int64(), "int64"), ("image_height", pa.int64(), "int64"),
               ("flickr_original_url", text, "string"), ("flickr_300k_url", text, "string"),
               ("answers", strings, None), ("image_classes", strings, None), ("set_name", text, "string"),
               ("ocr_tokens", strings, None)]
    rows = [{**e, "image": {"bytes": images[e["image_id"]], "path": None},
             "ocr_tokens": ["SECRET_OCR_TOKEN", str(rng.randrange(100))]} for e in entries]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(name, typ) for name, typ, _ in columns]))
    features = {name: ({"dtype": dtype, "_type": "Value"} if dtype else
                       {"_type": "Image"} if name == "image" else
                       {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"})
                for name, _, dtype in columns}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
