"""GQA (Hudson & Manning 2019): val balanced for the attention-map accuracy of the seed's A.3, and
testdev balanced for answer accuracy.

Release layout (https://gqadataset.org, questions1.2.zip + sceneGraphs.zip + images.zip):
    {split}_questions.json       {qid: {imageId, question, answer, fullAnswer, isBalanced,
                                        annotations: {question|answer|fullAnswer: {span: objId}}, semantic, ...}}
                                 split: val_balanced (132,062 questions), testdev_balanced (12,578)
    val_sceneGraphs.json         {imageId: {width, height, objects: {objId: {name, x, y, w, h, ...}}}}
    images/{imageId}.jpg
testdev has no public scene graphs, so the grounding analysis uses val. `flexeval run --bench gqa
[--split testdev_balanced]` answers the questions (the official exact match); `flexeval grounding`
scores the maps. GQA is not part of `--bench all` or the accuracy report.

The question files are large (val_balanced: ~130k questions with programs, entailments, ...): they are
read as one string and decoded one question at a time (flexeval/benchmarks/gqa.py iter_json_object),
keeping only what the harness and the grounding score read (`slim_question`), so the peak memory is
about the file's size plus the slim questions; a parsed file is memoised per (path, size, mtime).
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator

from flexeval.errors import FlexEvalError
from flexeval.requests import Generate

from .base import Benchmark, Sample, require_field
from .wording import SHORT_ANSWER_SUFFIX

SPLITS = ("val_balanced", "testdev_balanced")
SPLIT_ALIASES = {"val": "val_balanced", "testdev": "testdev_balanced"}
EXPECTED_COUNTS = {"val_balanced": 132062, "testdev_balanced": 12578}
QUESTIONS = "val_balanced_questions.json"
SCENES = "val_sceneGraphs.json"
IMAGES = "images"
RELEASE_FILES = {
    "questions1.2.zip": "https://downloads.cs.stanford.edu/nlp/data/gqa/questions1.2.zip",
    "sceneGraphs.zip": "https://downloads.cs.stanford.edu/nlp/data/gqa/sceneGraphs.zip",
    "images.zip": "https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip",
}
_WS = re.compile(r"[ \t\n\r]*")


def questions_file(split: str) -> str:
    return f"{split}_questions.json"


def resolve_split(split: str | None) -> str:
    split = SPLIT_ALIASES.get(split, split) if split else SPLITS[0]
    if split not in SPLITS:
        raise FlexEvalError(f"GQA has no split '{split}'; choose one of {', '.join(SPLITS)} (or val, testdev)")
    return split


def iter_json_object(path: Path) -> Iterator[tuple[str, Any]]:
    """(key, value) of a top-level JSON object, one value decoded at a time (the C scanner on one string):
    no second full-size tree of Python objects is ever built."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise FlexEvalError(f"missing file {path}") from e
    dec = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if text[i:i + 1] != "{":
        raise FlexEvalError(f"{path}: expected a JSON object {{id: ...}} at the top; re-download it")
    i = _WS.match(text, i + 1).end()
    if text[i:i + 1] == "}":
        return
    try:
        while True:
            key, i = dec.raw_decode(text, i)
            i = _WS.match(text, i).end()
            if text[i] != ":" or not isinstance(key, str):
                raise ValueError(f"expected a string key and ':' at character {i}")
            value, i = dec.raw_decode(text, _WS.match(text, i + 1).end())
            yield key, value
            i = _WS.match(text, i).end()
            if text[i] == "}":
                return
            if text[i] != ",":
                raise ValueError(f"expected ',' or '}}' at character {i}")
            i = _WS.match(text, i + 1).end()
    except (ValueError, IndexError) as e:  # JSONDecodeError is a ValueError
        raise FlexEvalError(f"{path} is not valid JSON ({e}); re-download it") from e


def slim_question(q: Any, where: str) -> dict:
    """What the harness and the official grounding score read. `semantic` steps become the tuple of their
    keys: the official `"scene" in c` on a step dict is a key test, and a tuple of the keys answers it alike."""
    for key in ("imageId", "question", "answer", "annotations"):
        require_field(q, key, where)
    ann = {}
    for key in ("question", "fullAnswer"):
        ann[key] = require_field(q["annotations"], key, where + " annotations")
        if not isinstance(ann[key], dict):
            raise FlexEvalError(f"{where}: annotations.{key} must be an object {{span: objectId}}")
    semantic = [tuple(c) if isinstance(c, dict) else c for c in q.get("semantic") or []]
    return {"imageId": str(q["imageId"]), "question": q["question"], "answer": q["answer"], "annotations": ann,
            "semantic": semantic}


def _file_key(path: Path) -> tuple[str, int, int]:
    try:
        st = Path(path).stat()
    except FileNotFoundError as e:
        raise FlexEvalError(f"missing file {path}") from e
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def load_questions(path: Path) -> dict[str, dict]:
    """The balanced questions (the official script scores only `isBalanced` ones), release order, slim."""
    return _load_questions(_file_key(path))


@functools.lru_cache(maxsize=2)
def _load_questions(key: tuple[str, int, int]) -> dict[str, dict]:
    path = key[0]
    out = {}
    for qid, q in iter_json_object(Path(path)):
        if not isinstance(q, dict):
            raise FlexEvalError(f"{path} question {qid}: expected an object; is it a GQA *_questions.json?")
        if q.get("isBalanced", True):
            out[qid] = slim_question(q, f"{path} question {qid}")
    return out


def load_scenes(path: Path) -> dict[str, dict]:
    """imageId -> {width, height, objects: {objId: {x, y, w, h}}} (names, attributes, relations dropped)."""
    return _load_scenes(_file_key(path))


@functools.lru_cache(maxsize=1)
def _load_scenes(key: tuple[str, int, int]) -> dict[str, dict]:
    path = key[0]
    out = {}
    for image_id, g in iter_json_object(Path(path)):
        where = f"{path} image {image_id}"
        for k in ("width", "height", "objects"):
            require_field(g, k, where)
        out[image_id] = {"width": g["width"], "height": g["height"],
                         "objects": {str(o): {c: v[c] for c in "xywh"} for o, v in g["objects"].items()}}
    return out


def image_names(folder: Path) -> set[str]:
    """File names in the images folder, listed once (a stat per question is slow at 132k questions)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except FileNotFoundError:
        return set()


class GQA(Benchmark):
    name = "gqa"
    aliases = ("gqa_val", "gqa-val")
    protocols = ("paper",)
    subsets = ()  # one row per split loaded (the subset is the split): no empty row for the other split
    splits = SPLITS

    def check_split(self, split: str | None) -> str:
        return resolve_split(split)

    def count_report(self, samples: list[Sample]) -> dict:
        from .base import count_against

        return count_against(samples, {s: EXPECTED_COUNTS[s] for s in {x.subset for x in samples}})

    def load(self, data_dir: Path, split: str | None = None, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir)
        split = resolve_split(split)
        q_path = data_dir / questions_file(split)
        if not q_path.is_file():
            raise FlexEvalError(f"GQA data not found: {q_path} is missing. Unpack the release's questions1.2.zip, "
                                f"sceneGraphs.zip and images.zip there (`flexeval data fetch --bench gqa` lists them), "
                                f"or `flexeval data make-sample --bench gqa --out {data_dir}`")
        present = image_names(data_dir / IMAGES)
        samples = []
        for qid, q in load_questions(q_path).items():
            name = f"{q['imageId']}.jpg"
            samples.append(Sample(id=qid, subset=split, question=q["question"],
                                  image=str(data_dir / IMAGES / name) if name in present else None,
                                  target=q["answer"], meta={"imageId": q["imageId"]}))
        if samples and all(s.image is None for s in samples):  # was exit 0 with 0.00 at every layer (issue 24)
            raise FlexEvalError(f"GQA: none of the {len(samples)} questions' images is in {data_dir / IMAGES} "
                                f"(looked for {data_dir / IMAGES / (samples[0].meta['imageId'] + '.jpg')}); unpack "
                                f"the release's images.zip there")
        return samples

    def request(self, sample: Sample, protocol: str) -> Generate:
        self.check_protocol(protocol)
        # LLaVA-1.5's GQA prompt (its eval script): the short-answer suffix, greedy, short answers.
        question = sample.question + SHORT_ANSWER_SUFFIX
        return Generate(question=question, max_new_tokens=16)

    def score(self, record: dict, protocol: str) -> dict:
        # The official script: prediction == answer, after LLaVA's answer clean-up (lower case, no final period).
        pred = str(record.get("prediction", "")).strip().lower().rstrip(".")
        return {"score": float(pred == str(record["target"]).strip().lower())}

    def make_sample(self, out_dir: Path, n: int = 6, seed: int = 0) -> Path:
        """Generated items in the release layout: wide, tall and square images with coloured boxes as scene-graph
        objects; each question points at one object in `annotations.question` and `annotations.fullAnswer`."""
        from .samples import PALETTE, draw_scene

        names = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange"]
        rng = random.Random(seed)
        out_dir = Path(out_dir)
        (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
        questions, scenes = {}, {}
        sizes = [(640, 480), (375, 500), (500, 500), (800, 450)]
        for k in range(n):
            w, h = sizes[k % len(sizes)]
            img, boxes = draw_scene(rng, w, h, 3)
            image_id = f"n{100000 + k}"
            img.save(out_dir / IMAGES / f"{image_id}.jpg", quality=92)
            objects = {}
            for j, (x, y, bw, bh) in enumerate(boxes):
                centre = img.getpixel((x + bw // 2, y + bh // 2))  # a later box may cover it: nearest colour
                colour = names[min(range(len(PALETTE)), key=lambda c: sum((a - b) ** 2 for a, b in
                                                                              zip(PALETTE[c], centre)))]
                objects[str(1000 + 10 * k + j)] = {"name": "box", "x": x, "y": y, "w": bw, "h": bh,
                                                   "attributes": [colour], "relations": []}
            scenes[image_id] = {"width": w, "height": h, "objects": objects}
            oid, obj = next(iter(objects.items()))
            colour = obj["attributes"][0]
            qid = f"{2000000 + k}"
            questions[qid] = {
                "imageId": image_id, "question": "What color is the box?", "answer": colour,
                "fullAnswer": f"The box is {colour}.", "isBalanced": True, "types": {"structural": "query",
                                                                                     "semantic": "attr"},
                "annotations": {"question": {"3": oid}, "answer": {}, "fullAnswer": {"1": oid}},
                "semantic": [{"operation": "select", "dependencies": [], "argument": f"box ({oid})"},
                             {"operation": "query", "dependencies": [0], "argument": "color"}],
                "entailed": [], "equivalent": [qid], "groups": {"global": "color", "local": "10q-box_color"}}
        (out_dir / QUESTIONS).write_text(json.dumps(questions, indent=1))
        testdev = {f"t{qid}": {**q, "equivalent": [f"t{qid}"]} for qid, q in questions.items()}  # no scene graphs
        (out_dir / questions_file("testdev_balanced")).write_text(json.dumps(testdev, indent=1))
        (out_dir / SCENES).write_text(json.dumps(scenes, indent=1))
        return out_dir

    def fetch(self, out_dir: Path) -> Path:
        files = "\n".join(f"  {name}: {url}" for name, url in RELEASE_FILES.items())
        raise FlexEvalError(
            f"GQA is not downloaded automatically (about 21 GB of images). Download\n{files}\nand unpack "
            f"{QUESTIONS}, {SCENES} and images/ into {out_dir} (the other question files are not needed)")
