"""HR-Bench 4K and 8K (Wang et al., "Divide, Conquer and Combine", arXiv 2408.15556), from the
release TSVs in VLMEvalKit's MCQ layout (benchmarks/mcq_file.py).

Release (HF dataset `DreamMr/HR-Bench`): `hr_bench_4k.tsv` (~1.9 GB) and `hr_bench_8k.tsv`
(~4.6 GB), columns `index, question, answer, category, A, B, C, D, cycle_category, image` (image:
base64 JPEG, repeated on every row of a question). 200 questions per version, 100 `single` (FSP,
fine-grained single-instance perception) and 100 `cross` (FCP, cross-instance), each asked 4 times
with the options cyclically permuted (`cycle_category` 0..3, the right answer at A, B, C, D in
turn): 800 rows.

Scoring as the authors do (their evaluation is VLMEvalKit's HRBenchDataset, `report_acc_hrbench`):
per cycle, the accuracy of each category and of all rows; each reported number is the MEAN OVER
THE 4 CYCLES of that per-cycle accuracy (not a circular "all four right" score). accuracy.csv has
`single`, `cross` and `overall` so computed; their intervals treat the cycles as strata.
The authors generate an answer with VLMEvalKit and extract its letter by exact matching
(`can_infer`: a lone option letter among the reply's words, else a lone option text in it), then a
GPT judge for what that misses. For LLaVA-1.5, VLMEvalKit's MCQ prompt is `{hint}\n{question}\nA. ...
\nB. ...\nAnswer with the option's letter from the given choices directly.`, the very text of our
`letter` protocol (the default here), which parses the reply with lmms-eval's rules instead (no
judge; VLMEvalKit's `can_infer` differs between its versions, so no copy of one is kept).
`--protocol likelihood`: the lowest mean-NLL option, the FlexAttention paper's rule.
"""

from __future__ import annotations

import base64
import csv
import io
import random
from pathlib import Path
from typing import Any

from flexeval.errors import FlexEvalError
from flexeval.hub import fetch_dataset

from .base import Sample
from .mcq_file import LETTERS, McqFile, load_tsv

HUB_REPO = "DreamMr/HR-Bench"
SUBSETS = ("single", "cross")
COLUMNS = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]
CYCLES = 4


def cycle_strata(records: list[dict], subset: str | None) -> list[list[float]]:
    """The scores of `subset` (None: every row) grouped by cycle, in cycle order."""
    by_cycle: dict[str, list[float]] = {}
    for r in records:
        if subset is None or r["subset"] == subset:
            by_cycle.setdefault(str(r["meta"].get("cycle", "0")), []).append(float(r["score"]))
    return [by_cycle[c] for c in sorted(by_cycle, key=lambda c: (len(c), c))]


def cycle_average_row(benchmark: str, subset: str, strata: list[list[float]]) -> dict:
    """One accuracy.csv row: n and correct over all rows, accuracy = mean over cycles of the cycle's accuracy."""
    scores = [x for s in strata for x in s]
    means = [sum(s) / len(s) for s in strata if s]
    return {"benchmark": benchmark, "subset": subset, "n": len(scores), "correct": round(sum(scores), 6),
            "accuracy": round(100.0 * sum(means) / len(means), 4) if means else float("nan")}


class HRBench(McqFile):
    protocols = ("letter", "likelihood")
    subsets = SUBSETS
    expected_counts = {"single": 400, "cross": 400, "overall": 800}
    kind = "hrbench"
    reads_own_file = False  # a named benchmark: its folder is --data-dir (default data/<name>)

    def __init__(self, version: str):
        self.version = version  # "4k" | "8k"
        self.file = f"hr_bench_{version}.tsv"
        super().__init__(Path(self.file), name=f"hrbench_{version}")
        self.aliases = (f"hrbench{version}", f"hr_bench_{version}")

    def load(self, data_dir: Path | None = None, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir or Path("data") / self.name)
        path = data_dir if data_dir.is_file() else data_dir / self.file
        if not path.is_file():
            raise FlexEvalError(f"HR-Bench {self.version.upper()} not found: expected {path} (the release TSV of the "
                                f"HF dataset {HUB_REPO}); `flexeval data fetch --bench {self.name} --out {data_dir}` "
                                f"where a network exists, or `flexeval data make-sample --bench {self.name} --out "
                                f"{data_dir}` for generated items in the same layout")
        samples = load_tsv(path, extra_meta=("cycle_category",))
        return [_with_cycle(s) for s in samples]

    def table(self, records: list[dict], protocol: str) -> list[dict]:
        return [cycle_average_row(self.name, s, cycle_strata(records, s)) for s in self._subsets(records)] + \
            [cycle_average_row(self.name, "overall", cycle_strata(records, None))]

    def row_scores(self, records: list[dict], protocol: str) -> dict[str, list[list[float]]]:
        out = {s: cycle_strata(records, s) for s in self._subsets(records)}
        out["overall"] = cycle_strata(records, None)
        return out

    def _subsets(self, records: list[dict]) -> list[str]:
        return list(SUBSETS) + sorted({r["subset"] for r in records} - set(SUBSETS))

    @property
    def cli_name(self) -> str:
        return self.name

    def run_info(self) -> dict:
        return {"metric": "accuracy averaged over the 4 cyclic option orders (HR-Bench)"}

    def fetch(self, out_dir: Path) -> Path:
        return fetch_dataset(HUB_REPO, out_dir, what=f"HR-Bench {self.version.upper()}: {self.file}",
                             allow_patterns=[self.file])

    def make_sample(self, out_dir: Path, n: int = 2, seed: int = 0) -> Path:
        """`n` questions per category, each on 4 rows (the cyclic option orders), in the release layout."""
        from .samples import draw_scene

        rng = random.Random(seed)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows, index = [], 0
        colors = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange"]
        for category in SUBSETS:
            for _ in range(n):
                img, _boxes = draw_scene(rng, rng.choice([768, 1024]), rng.choice([432, 576]), 2)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=85)
                blob = base64.b64encode(buf.getvalue()).decode()
                options = rng.sample(colors, 4)  # options[0] is the right one
                question = (f"What is the color of the {rng.choice(['cup', 'flag', 'kite'])}?" if category == "single"
                            else "Which color is the object left of the other one?")
                for cycle in range(CYCLES):  # cycle c: the options rotated right by c, the answer moves with them
                    order = options[-cycle:] + options[:-cycle] if cycle else list(options)
                    rows.append([str(index), question, LETTERS[order.index(options[0])], category, *order,
                                 str(cycle), blob])
                    index += 1
        path = out_dir / self.file
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(COLUMNS)
            w.writerows(rows)
        return out_dir


def _with_cycle(sample: Sample) -> Sample:
    meta = dict(sample.meta)
    meta["cycle"] = meta.pop("cycle_category", "0")
    return Sample(sample.id, sample.subset, sample.question, sample.image, sample.target, sample.options, meta)
