"""V* Bench (craigwu/vstar_bench): lowest-perplexity choice over the options.

Release layout: `direct_attributes/` (115 items, 4 options) and `relative_position/` (76 items,
2 options), each item an image `sa_N.<ext>` beside `sa_N.json` holding
`{"target_object", "bbox", "question", "options"}`; the correct option is always `options[0]`.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from flexeval.conversation import SHORT_ANSWER_SUFFIX, VSTAR_OFFICIAL_SYSTEM, llava_v1_prompt
from flexeval.errors import FlexEvalError

from .base import Benchmark, Choice, Sample, read_json, require_field

SUBSETS = ("direct_attributes", "relative_position")
IMAGE_EXTS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".webp")
HUB_REPO = "craigwu/vstar_bench"


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class VStar(Benchmark):
    name = "vstar"
    aliases = ("v*", "vstar_bench", "v_star", "vstarbench")
    protocols = ("paper", "official")
    subsets = SUBSETS
    expected_counts = {"direct_attributes": 115, "relative_position": 76, "overall": 191}
    kind = "choice"

    def load(self, data_dir: Path, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir)
        missing = [s for s in SUBSETS if not (data_dir / s).is_dir()]
        if missing:
            raise FlexEvalError(
                f"V* data not found: {data_dir} lacks {', '.join(m + '/' for m in missing)}. "
                f"Put a full snapshot of the HF dataset repo {HUB_REPO} there "
                f"(`flexeval data fetch --bench vstar --out {data_dir}` where a network exists)."
            )
        samples = []
        for subset in SUBSETS:
            folder = data_dir / subset
            for js in sorted(folder.glob("*.json"), key=lambda p: _natural_key(p.name)):
                samples.append(self._load_item(subset, js))
        return samples

    def _load_item(self, subset: str, js: Path) -> Sample:
        item = read_json(js)
        question = require_field(item, "question", str(js))
        options = require_field(item, "options", str(js))
        if not isinstance(question, str) or not isinstance(options, list) or len(options) < 2:
            raise FlexEvalError(f"{js}: 'question' must be a string and 'options' a list of >= 2 strings")
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
            options=tuple(str(o) for o in options),
        )

    def request(self, sample: Sample, protocol: str) -> Choice:
        protocol = self.check_protocol(protocol)
        if protocol == "official":
            # penghao-wu/vstar: other system prompt, no answer-format suffix, EOS after the option,
            # image not padded (the CLIP processor resizes the short side and centre-crops).
            prompt = llava_v1_prompt(sample.question, system=VSTAR_OFFICIAL_SYSTEM)
            return Choice(prompt=prompt, options=sample.options, append_eos=True, image_mode="crop",
                          question=sample.question)
        question = sample.question + SHORT_ANSWER_SUFFIX
        return Choice(prompt=llava_v1_prompt(question), options=sample.options, question=question)

    def score(self, record: dict, protocol: str) -> dict:
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
        return out_dir

    def fetch(self, out_dir: Path) -> Path:
        from .hub import snapshot

        return snapshot(HUB_REPO, out_dir, what="V* Bench (direct_attributes/, relative_position/)")
