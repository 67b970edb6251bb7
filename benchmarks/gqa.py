"""GQA (Hudson & Manning 2019), val balanced, for the attention-map accuracy of the seed's A.3.

Release layout (https://gqadataset.org, questions1.2.zip + sceneGraphs.zip + images.zip):
    val_balanced_questions.json  {qid: {imageId, question, answer, fullAnswer, isBalanced,
                                        annotations: {question|answer|fullAnswer: {span: objId}}, semantic, ...}}
    val_sceneGraphs.json         {imageId: {width, height, objects: {objId: {name, x, y, w, h, ...}}}}
    images/{imageId}.jpg
testdev has no public scene graphs, so the grounding analysis uses val. This adapter is for that
analysis (`flexeval grounding`); it is registered for make-sample / fetch / attention but is not
part of `--bench all` or the accuracy report. Its score is the official script's exact match.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from flexeval.errors import FlexEvalError
from flexeval.requests import Generate

from .base import Benchmark, Sample, read_json, require_field
from .conversation import SHORT_ANSWER_SUFFIX, llava_v1_prompt

QUESTIONS = "val_balanced_questions.json"
SCENES = "val_sceneGraphs.json"
IMAGES = "images"
RELEASE_FILES = {
    "questions1.2.zip": "https://downloads.cs.stanford.edu/nlp/data/gqa/questions1.2.zip",
    "sceneGraphs.zip": "https://downloads.cs.stanford.edu/nlp/data/gqa/sceneGraphs.zip",
    "images.zip": "https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip",
}


def load_questions(path: Path) -> dict[str, dict]:
    """The balanced questions (the official script scores only `isBalanced` ones), release order."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise FlexEvalError(f"{path}: expected an object {{questionId: question}}; is it {QUESTIONS}?")
    out = {}
    for qid, q in data.items():
        where = f"{path} question {qid}"
        for key in ("imageId", "question", "answer", "annotations"):
            require_field(q, key, where)
        for key in ("question", "fullAnswer"):
            if not isinstance(require_field(q["annotations"], key, where + " annotations"), dict):
                raise FlexEvalError(f"{where}: annotations.{key} must be an object {{span: objectId}}")
        if q.get("isBalanced", True):
            out[str(qid)] = q
    return out


def load_scenes(path: Path) -> dict[str, dict]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise FlexEvalError(f"{path}: expected an object {{imageId: scene graph}}; is it {SCENES}?")
    for image_id, g in data.items():
        where = f"{path} image {image_id}"
        for key in ("width", "height", "objects"):
            require_field(g, key, where)
    return data


class GQA(Benchmark):
    name = "gqa"
    aliases = ("gqa_val", "gqa-val")
    protocols = ("paper",)
    subsets = ("val_balanced",)

    def load(self, data_dir: Path, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir)
        q_path = data_dir / QUESTIONS
        if not q_path.is_file():
            raise FlexEvalError(f"GQA data not found: {q_path} is missing. Unpack the release's questions1.2.zip, "
                                f"sceneGraphs.zip and images.zip there (`flexeval data fetch --bench gqa` lists them), "
                                f"or `flexeval data make-sample --bench gqa --out {data_dir}`")
        samples = []
        for qid, q in load_questions(q_path).items():
            image = data_dir / IMAGES / f"{q['imageId']}.jpg"
            samples.append(Sample(id=qid, subset="val_balanced", question=q["question"],
                                  image=str(image) if image.is_file() else None, target=q["answer"],
                                  meta={"imageId": q["imageId"]}))
        if samples and all(s.image is None for s in samples):  # was exit 0 with 0.00 at every layer (issue 24)
            raise FlexEvalError(f"GQA: none of the {len(samples)} questions' images is in {data_dir / IMAGES} "
                                f"(looked for {data_dir / IMAGES / (samples[0].meta['imageId'] + '.jpg')}); unpack "
                                f"the release's images.zip there")
        return samples

    def request(self, sample: Sample, protocol: str) -> Generate:
        self.check_protocol(protocol)
        # LLaVA-1.5's GQA prompt (its eval script): the short-answer suffix, greedy, short answers.
        question = sample.question + SHORT_ANSWER_SUFFIX
        return Generate(prompt=llava_v1_prompt(question), question=question, max_new_tokens=16)

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
        (out_dir / SCENES).write_text(json.dumps(scenes, indent=1))
        return out_dir

    def fetch(self, out_dir: Path) -> Path:
        files = "\n".join(f"  {name}: {url}" for name, url in RELEASE_FILES.items())
        raise FlexEvalError(
            f"GQA is not downloaded automatically (about 21 GB of images). Download\n{files}\nand unpack "
            f"{QUESTIONS}, {SCENES} and images/ into {out_dir} (the other question files are not needed)")
