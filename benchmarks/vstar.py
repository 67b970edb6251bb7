"""V* Bench (craigwu/vstar_bench): lowest-perplexity choice over the options.

Release layout: `direct_attributes/` (115 items, 4 options) and `relative_position/` (76 items,
2 options), each item an image `sa_N.<ext>` beside `sa_N.json` holding
`{"target_object", "bbox", "question", "options"}`; the correct option is always `options[0]`.
The snapshot's top level also holds `test_questions.jsonl`: one line an item, the same questions
with their options lettered in a shuffled order, `{"image": "<subset>/sa_N.<ext>", "text":
"<question>\n(A) <opt>\n(B) <opt>...", "label": "<letter>", "category", "question_id"}`; it is
read only by `--protocol letter` (see benchmarks/vstar_letter.py).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from flexeval.analysis.coverage import parse_boxes
from flexeval.errors import FlexEvalError
from flexeval.hub import fetch_dataset
from flexeval.requests import Choice, Generate

from .base import Benchmark, Sample, read_json, require_field
from .vstar_letter import LETTER_MAX_NEW_TOKENS, letter_prompt, read_lettered, score_letter, write_lettered
from .wording import SHORT_ANSWER_SUFFIX, VSTAR_OFFICIAL_SYSTEM

SUBSETS = ("direct_attributes", "relative_position")
IMAGE_EXTS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".webp")
HUB_REPO = "craigwu/vstar_bench"


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_options(js: Path, options: Any) -> None:
    """The release's options: >= 2 distinct non-empty strings, the correct one first. An empty option,
    or a duplicate of options[0], would win or tie the lowest-NLL choice and score as correct."""
    fix = "restore the release file (the correct option first, then the distractors)"
    if not isinstance(options, list) or len(options) < 2:
        raise FlexEvalError(f"{js}: field 'options' must be a list of >= 2 strings, got {options!r:.80}; {fix}")
    for k, o in enumerate(options):
        if not isinstance(o, str) or not o.strip():
            raise FlexEvalError(f"{js}: options[{k}] = {o!r:.80} is not a non-empty string; {fix}")
    seen: dict[str, int] = {}
    for k, o in enumerate(options):
        if o.strip() in seen:
            raise FlexEvalError(f"{js}: options[{k}] = {o!r:.80} repeats options[{seen[o.strip()]}]; "
                                f"a tie would be scored as the first option; {fix}")
        seen[o.strip()] = k


def _target_meta(item: dict, js: Path) -> dict:
    """The annotated targets (for target coverage, flexeval/analysis/coverage.py): `bbox` as a list of
    [x, y, w, h] boxes in original pixels, and `target_object` as the release has it."""
    if "bbox" not in item:
        return {}
    return {"target_object": item.get("target_object"), "bbox": parse_boxes(item["bbox"], str(js))}


def _orphan_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix in IMAGE_EXTS and not p.with_suffix(".json").is_file()),
                  key=lambda p: _natural_key(p.name))


class VStar(Benchmark):
    name = "vstar"
    aliases = ("v*", "vstar_bench", "v_star", "vstarbench")
    protocols = ("paper", "official", "letter")
    subsets = SUBSETS
    expected_counts = {"direct_attributes": 115, "relative_position": 76, "overall": 191}

    def load(self, data_dir: Path, protocol: str | None = None, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir)
        missing = [s for s in SUBSETS if not (data_dir / s).is_dir()]
        if missing:
            raise FlexEvalError(
                f"V* data not found: {data_dir} lacks {', '.join(m + '/' for m in missing)}. "
                f"Put a full snapshot of the HF dataset repo {HUB_REPO} there "
                f"(`flexeval data fetch --bench vstar --out {data_dir}` where a network exists)."
            )
        samples, problems = [], []
        for subset in SUBSETS:
            folder = data_dir / subset
            for js in sorted(folder.glob("*.json"), key=lambda p: _natural_key(p.name)):
                try:
                    samples.append(self._load_item(subset, js))
                except FlexEvalError as e:  # collected: the user sees every broken item at once
                    problems.append(str(e))
            problems += [f"{img}: an image without its JSON ({img.with_suffix('.json').name}); restore the JSON "
                         f"or remove the image" for img in _orphan_images(folder)]
        if problems:
            raise FlexEvalError(f"V* data in {data_dir} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        if protocol == "letter":  # only then: the other protocols' item fingerprints stay as they were
            samples = read_lettered(data_dir, samples)
        return samples

    def _load_item(self, subset: str, js: Path) -> Sample:
        item = read_json(js)
        question = require_field(item, "question", str(js))
        options = require_field(item, "options", str(js))
        if not isinstance(question, str) or not question.strip():
            raise FlexEvalError(f"{js}: field 'question' must be a non-empty string; restore the release file")
        _check_options(js, options)
        image = next((js.with_suffix(ext) for ext in IMAGE_EXTS if js.with_suffix(ext).is_file()), None)
        if image is None:
            raise FlexEvalError(
                f"{js}: no image beside it (looked for {js.stem} with {', '.join(IMAGE_EXTS)}); restore the image"
            )
        return Sample(
            id=f"{subset}/{js.stem}",
            subset=subset,
            question=question,
            image=str(image),
            target=str(options[0]),
            options=tuple(options),
            meta=_target_meta(item, js),
        )

    def request(self, sample: Sample, protocol: str) -> Choice | Generate:
        protocol = self.check_protocol(protocol)
        if protocol == "letter":
            question = letter_prompt(sample)
            return Generate(question=question, max_new_tokens=LETTER_MAX_NEW_TOKENS)
        if protocol == "official":
            # penghao-wu/vstar: other system prompt, no answer-format suffix, EOS after the option,
            # image not padded (the CLIP processor resizes the short side and centre-crops).
            return Choice(question=sample.question, options=sample.options, append_eos=True, image_mode="crop",
                          system=VSTAR_OFFICIAL_SYSTEM)
        question = sample.question + SHORT_ANSWER_SUFFIX
        return Choice(question=question, options=sample.options)

    def score(self, record: dict, protocol: str) -> dict:
        if self.check_protocol(protocol) == "letter":
            return score_letter(record)
        # The correct option is always options[0]; the runner resolved ties to the lowest index.
        return {"score": float(record["prediction"] == record["options"][0])}

    def make_sample(self, out_dir: Path, n: int = 6, seed: int = 0) -> Path:
        """Generated items in the release layout: large images of varied aspect ratios."""
        from .samples import draw_scene

        rng = random.Random(seed)
        out_dir = Path(out_dir)
        colors = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange"]
        objects = ["cup", "flag", "umbrella", "bag", "car", "kite"]
        exts = [".jpg", ".png", ".JPG", ".jpeg"]
        counter = 1
        lettered = []  # (image path, subset, question, options) for test_questions.jsonl
        for subset in SUBSETS:
            (out_dir / subset).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                w = rng.choice([1600, 2246, 1200, 1024])
                h = rng.choice([1200, 1582, 1800, 768])
                img, boxes = draw_scene(rng, w, h, 2)
                stem = f"sa_{counter}"
                counter += 1
                ext = rng.choice(exts)
                img.save(out_dir / subset / f"{stem}{ext}", format="PNG" if ext == ".png" else "JPEG", quality=90)
                a, b = rng.sample(objects, 2)
                if subset == "direct_attributes":
                    opts = rng.sample(colors, 4)
                    question = f"What is the color of the {a}?"
                else:
                    opts = rng.sample(["left", "right"], 2)
                    question = f"Is the {a} on the left or right side of the {b}?"
                    opts = [f"The {a} is on the {o} side of the {b}." for o in opts]
                meta = {"target_object": [a] if subset == "direct_attributes" else [a, b],
                        "bbox": boxes, "question": question, "options": opts}
                (out_dir / subset / f"{stem}.json").write_text(json.dumps(meta))
                lettered.append((f"{subset}/{stem}{ext}", subset, question, opts))
        write_lettered(out_dir, lettered, rng)
        return out_dir

    def fetch(self, out_dir: Path) -> Path:
        return fetch_dataset(HUB_REPO, out_dir, what="V* Bench (direct_attributes/, relative_position/)")
