"""MagnifierBench (Otter-AI/MagnifierBench): 283 multiple-choice questions on ~1920x1080 images.

Release layouts read here (the first that is present wins):
- the MIMIC-IT export the FlexAttention release reads: `data_instructions.json`
  (`{"data": {id: {"instruction", "answer", "image_ids", "rel_ins_ids"}}}`) + `images.json`
  (`{image_id: base64}`); image ids missing from images.json are dropped, as the release does;
- a `datasets.save_to_disk` folder (a Dataset, or a DatasetDict holding `test`);
- the hub layout: parquet files (`data/test-*.parquet`), columns `id`, `instruction`,
  `images` (list of `{"bytes", "path"}`), `answer`;
- the hub id itself (`Otter-AI/MagnifierBench`) when the folder does not exist and a network does.

Protocols (see docs/benchmarks-spec.md):
- "paper": the FlexAttention release's loop: options on their own lines, suffix
  "\\nAnswer with the option's letter from the given choices directly.", the first image of
  multi-image items, the release's parser run against the REFORMATTED instruction;
- "official": Otter's loop: "Answer with the option letter from the given choices directly."
  + " " + instruction, the parser run against that string, items with != 1 image count wrong,
  image resized + centre-cropped (Otter's LLaVA wrapper uses the CLIP processor directly).
Both release loops generate up to 512 new tokens and we keep that: the parser looks for a letter
ANYWHERE in the reply (A before B before ...), so cutting a long reply short could change its
parse. Greedy decoding replaces Otter's temperature-0.2 sampling (determinism).
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

from flexeval.errors import FlexEvalError
from flexeval.requests import Generate

from .base import Benchmark, ImageRef, Sample, decode_image_bytes, read_json, read_parquet_text, require_field

HUB_REPO = "Otter-AI/MagnifierBench"
SUBSET = "test"
LETTERS = ("A", "B", "C", "D")
PAPER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
OFFICIAL_PROMPT = "Answer with the option letter from the given choices directly."
MAX_NEW_TOKENS = 512  # both release loops; see the module docstring

_ANSWER_IS = re.compile(r"The answer is ([A-D])")
_OPTION_TEXT = re.compile(r"A\. (.+?), B\. (.+?), C\. (.+?), D\. (.+)")
# Strict: the whole reply is one letter, optionally bracketed and/or followed by a period.
_STRICT = re.compile(r"^[\(\[]?([A-D])[\)\]]?\.?$")


def paper_instruction(instruction: str) -> str:
    """The release puts each option on its own line (which also disables the option-text step)."""
    return (instruction.replace(" A.", "\nA.").replace(", B.", "\nB.")
            .replace(", C.", "\nC.").replace(", D.", "\nD."))


def official_question(instruction: str) -> str:
    return f"{OFFICIAL_PROMPT} {instruction}"


def parse_choice(reply: str, question: str) -> str:
    """The release parser (identical in Otter and FlexAttention); returns a letter or "other"."""
    match = _ANSWER_IS.search(reply)
    if match:
        return match.group(1)
    for letter in LETTERS:  # case-sensitive substring: "Answer: C" gives "A"
        if letter in reply:
            return letter
    options = _OPTION_TEXT.search(question)
    if options:
        for letter, option in zip(LETTERS, options.groups(), strict=True):
            option = option.strip()
            if option.endswith((".", ",", "?")):
                option = option[:-1]
            if option.upper() in reply.upper():
                return letter
    for letter in LETTERS:
        if letter in reply.upper():
            return letter
    return "other"


def strict_choice(reply: str) -> str | None:
    match = _STRICT.match(reply.strip())
    return match.group(1) if match else None


class MagnifierBench(Benchmark):
    name = "magnifierbench"
    aliases = ("magnifier", "magnifier_bench", "magbench")
    protocols = ("paper", "official")
    subsets = (SUBSET,)
    expected_counts = {SUBSET: 283, "overall": 283}

    # ---------------------------------------------------------------- loading
    def load(self, data_dir: Path, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir)
        if (data_dir / "data_instructions.json").is_file() or (data_dir / "images.json").is_file():
            return _load_mimicit(data_dir)
        if (data_dir / "dataset_dict.json").is_file() or (data_dir / "state.json").is_file():
            return _rows_to_samples(_load_from_disk(data_dir), str(data_dir))
        parquet = _find_parquet(data_dir)
        if parquet:
            return _load_parquet(parquet)
        raise FlexEvalError(
            f"MagnifierBench data not found in {data_dir}: expected data/test-*.parquet (the HF dataset "
            f"{HUB_REPO}), a datasets.save_to_disk folder, or data_instructions.json + images.json "
            f"(the MIMIC-IT export). Run `flexeval data fetch --bench magnifierbench --out {data_dir}` "
            f"where a network exists, or copy one of these layouts there."
        )

    # --------------------------------------------------------------- requests
    def request(self, sample: Sample, protocol: str) -> Generate:
        protocol = self.check_protocol(protocol)
        if protocol == "official":
            question = official_question(sample.question)
            return Generate(question=question, max_new_tokens=MAX_NEW_TOKENS,
                            image_mode="crop")
        question = paper_instruction(sample.question) + PAPER_SUFFIX
        return Generate(question=question, max_new_tokens=MAX_NEW_TOKENS)

    def score(self, record: dict, protocol: str) -> dict:
        protocol = self.check_protocol(protocol)
        n_images = int((record.get("meta") or {}).get("n_images", 1))
        if (protocol == "official" and n_images != 1) or n_images == 0:
            # Otter skips these but keeps them in the denominator; the paper loop has no image to use.
            reason = "skipped" if protocol == "official" else "no_image"
            return {"score": 0.0, "parsed": reason, "strict": None, "strict_score": 0.0}
        reply = (record.get("prediction") or "").strip()  # both loops strip the decoded text
        question = (official_question(record["question"]) if protocol == "official"
                    else paper_instruction(record["question"]))
        parsed = parse_choice(reply, question)
        strict = strict_choice(reply)
        target = str(record["target"])
        return {"score": float(parsed == target), "parsed": parsed, "strict": strict,
                "strict_score": float(strict == target)}

    def table(self, records: list[dict], protocol: str) -> list[dict]:
        """Subset row + overall (release parser), then `overall_strict` (strict parse accuracy) and
        `parse_disagreements` (n = items, correct = replies where the release parser and the strict
        parse differ, a strict failure counting as "other"; skipped items never disagree)."""
        scored = [r if "strict_score" in r else {**r, **self.score(r, protocol)} for r in records]
        rows = super().table(scored, protocol)
        n = len(scored)
        strict_correct = sum(float(r["strict_score"]) for r in scored)
        disagree = sum(1 for r in scored if _disagrees(r))
        for subset, correct in (("overall_strict", strict_correct), ("parse_disagreements", disagree)):
            rows.append({"benchmark": self.name, "subset": subset, "n": n, "correct": round(correct, 6),
                         "accuracy": round(100.0 * correct / n, 4) if n else float("nan")})
        return rows

    def row_scores(self, records: list[dict], protocol: str) -> dict[str, list[list[float]]]:
        """`overall_strict`: the per-item strict scores; `parse_disagreements`: a 0/1 indicator per item
        (1 = the two parses differ), so its interval is that of a disagreement rate."""
        scored = [r if "strict_score" in r else {**r, **self.score(r, protocol)} for r in records]
        out = super().row_scores(scored, protocol)
        out["overall_strict"] = [[float(r["strict_score"]) for r in scored]]
        out["parse_disagreements"] = [[float(_disagrees(r)) for r in scored]]
        return out

    # ----------------------------------------------------------- sample data
    def make_sample(self, out_dir: Path, n: int = 6, seed: int = 0, fmt: str = "parquet") -> Path:
        """Generated items in a release layout: fmt "parquet" (hub), "disk" (save_to_disk) or
        "mimicit" (data_instructions.json + images.json). With n >= 4 the second item has two
        images and the third none, as both occur in the spec's handling rules."""
        from .samples import draw_scene

        if fmt not in ("parquet", "disk", "mimicit"):
            raise FlexEvalError(f"unknown MagnifierBench sample format '{fmt}'; use parquet, disk or mimicit")
        rng = random.Random(seed)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        colors = ["red", "green", "blue", "white", "black", "yellow", "orange", "purple"]
        things = ["umbrella", "kite", "bicycle", "sign", "backpack", "boat"]
        items = []
        for i in range(n):
            n_images = 2 if (n >= 4 and i == 1) else 0 if (n >= 4 and i == 2) else 1
            images = []
            for _ in range(n_images):
                img, _ = draw_scene(rng, rng.choice([480, 512]), 270, 3)  # ~16:9, like 1920x1080
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=85)
                images.append(buf.getvalue())
            opts = rng.sample(colors, 4)
            question = f"What is the color of the {rng.choice(things)}?"
            instruction = question + " " + ", ".join(f"{letter}. {opt}" for letter, opt in zip(LETTERS, opts, strict=True))
            items.append({"id": f"magnifier_{i:04d}", "instruction": instruction,
                          "answer": rng.choice(LETTERS), "images": images})
        if fmt == "mimicit":
            _write_mimicit(out_dir, items)
        else:
            table = _items_to_arrow(items)
            if fmt == "parquet":
                import pyarrow.parquet as pq

                (out_dir / "data").mkdir(exist_ok=True)
                pq.write_table(table, out_dir / "data" / "test-00000-of-00001.parquet")
            else:
                import datasets

                datasets.DatasetDict({"test": datasets.Dataset(table)}).save_to_disk(str(out_dir))
        return out_dir

    def fetch(self, out_dir: Path) -> Path:
        from flexeval.hub import fetch_dataset

        return fetch_dataset(HUB_REPO, out_dir, what="MagnifierBench (data/test-*.parquet)")


def _disagrees(scored: dict) -> bool:
    """The release parser and the strict parse differ (a strict failure counts as "other")."""
    return scored["parsed"] not in ("skipped", "no_image") and (scored["strict"] or "other") != scored["parsed"]


# -------------------------------------------------------------------- loaders
def _load_mimicit(data_dir: Path) -> list[Sample]:
    instr_path, images_path = data_dir / "data_instructions.json", data_dir / "images.json"
    for path in (instr_path, images_path):
        if not path.is_file():
            raise FlexEvalError(f"MagnifierBench MIMIC-IT export incomplete: missing {path} "
                                f"(expected data_instructions.json + images.json in {data_dir})")
    data = require_field(read_json(instr_path), "data", str(instr_path))
    images = read_json(images_path)
    if not isinstance(data, dict) or not isinstance(images, dict):
        raise FlexEvalError(f"{instr_path} field 'data' and {images_path} must be JSON objects keyed by id")
    samples = []
    for item_id, row in data.items():
        where = f"{instr_path} item {item_id}"
        image_ids = require_field(row, "image_ids", where)
        found = [i for i in image_ids if i in images]  # the release drops ids it cannot resolve
        decoded = []
        for image_id in found[:1]:  # only the first image is ever used
            try:
                decoded.append(decode_image_bytes(images[image_id]))
            except (ValueError, TypeError) as e:
                raise FlexEvalError(f"{images_path}: image '{image_id}' is not valid base64 ({e}); "
                                    "re-download the file") from e
        meta = {"n_images": len(found), "image_ids": list(image_ids)}
        if len(found) != len(image_ids):
            meta["missing_image_ids"] = [i for i in image_ids if i not in images]
        samples.append(_sample(str(item_id), require_field(row, "instruction", where),
                               require_field(row, "answer", where), decoded[0] if decoded else None, meta, where))
    return samples


def _find_parquet(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        return []
    files = sorted(data_dir.rglob("*.parquet"))
    test = [p for p in files if p.name.startswith("test") or p.parent.name == "test"]
    return test or files


def _load_parquet(files: list[Path]) -> list[Sample]:
    """The hub layout; images stay in the files (ImageRef), only the first of each item is referenced."""
    from .parquet_images import scan_image_column

    samples = []
    for path in files:
        rows = read_parquet_text(path, "images")
        for k, (row, (image, n_images)) in enumerate(zip(rows, scan_image_column(path, "images", item=0),
                                                         strict=True)):
            where = f"{path} row {k}"
            samples.append(_sample(str(require_field(row, "id", where)), require_field(row, "instruction", where),
                                   require_field(row, "answer", where), image, {"n_images": n_images}, where))
    return samples


def _load_from_disk(data_dir: Path) -> list[dict]:
    import datasets

    ds = datasets.load_from_disk(str(data_dir))
    if isinstance(ds, datasets.DatasetDict):
        if SUBSET not in ds:
            raise FlexEvalError(f"{data_dir} holds splits {list(ds)}, no '{SUBSET}'; save the test split")
        ds = ds[SUBSET]
    return ds.with_format("arrow")[:].to_pylist()  # raw {"bytes", "path"} structs, no PIL round trip


def _rows_to_samples(rows: list[dict], where: str) -> list[Sample]:
    samples = []
    for k, row in enumerate(rows):
        item_where = f"{where} row {k}"
        item_id = require_field(row, "id", item_where)
        images = require_field(row, "images", item_where) or []
        image = None
        if images:
            try:
                image = decode_image_bytes(images[0])
            except (ValueError, TypeError) as e:
                raise FlexEvalError(f"{item_where} (id {item_id}): field 'images' holds no decodable image "
                                    f"({e}); re-download the data") from e
        samples.append(_sample(str(item_id), require_field(row, "instruction", item_where),
                               require_field(row, "answer", item_where), image,
                               {"n_images": len(images)}, item_where))
    return samples


def _sample(item_id: str, instruction: Any, answer: Any, image: bytes | ImageRef | None, meta: dict, where: str) -> Sample:
    if not isinstance(instruction, str) or not isinstance(answer, str):
        raise FlexEvalError(f"{where}: fields 'instruction' and 'answer' must be strings")
    return Sample(id=item_id, subset=SUBSET, question=instruction, image=image, target=answer.strip(),
                  meta=meta)


# -------------------------------------------------------------------- writers
def _write_mimicit(out_dir: Path, items: list[dict]) -> None:
    import base64

    data, images = {}, {}
    for item in items:
        image_ids = []
        for j, blob in enumerate(item["images"]):
            image_id = f"MAGNIFIER_IMG_{item['id']}_{j}"
            images[image_id] = base64.b64encode(blob).decode()
            image_ids.append(image_id)
        data[item["id"]] = {"instruction": item["instruction"], "answer": item["answer"],
                            "image_ids": image_ids, "rel_ins_ids": []}
    (out_dir / "data_instructions.json").write_text(json.dumps({"meta": {"version": "0.0.1"}, "data": data}))
    (out_dir / "images.json").write_text(json.dumps(images))


def _items_to_arrow(items: list[dict]):
    """The hub table: HF `Image` structs inside a list, with the `huggingface` schema metadata that
    `datasets` (2023 upload, hence "Sequence") writes so it decodes the column as images."""
    import pandas as pd
    import pyarrow as pa

    image_struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("instruction", pa.string()),
                        ("images", pa.list_(image_struct)), ("answer", pa.string())])
    features = {"id": {"dtype": "string", "_type": "Value"},
                "instruction": {"dtype": "string", "_type": "Value"},
                "images": {"feature": {"_type": "Image"}, "_type": "Sequence"},
                "answer": {"dtype": "string", "_type": "Value"}}
    frame = pd.DataFrame([{**item, "images": [{"bytes": b, "path": None} for b in item["images"]]}
                          for item in items])
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
