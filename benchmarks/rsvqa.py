"""RSVQA-HRBEN (Zenodo record 6344367): presence + comparison questions on 512x512 aerial tiles.

Release layout: `USGS_split_{split}_{questions,answers,images}.json` and `Data/{img_id}.tif`.
Every split file lists the WHOLE database; the split is the entries with `active == true`.
Questions point at their answer through `answers_ids[0]` (and answers back through
`question_id`): we join by id, never by list position. Only `presence` and `comp` questions are
kept (`count` and `area` are not part of the protocol). Default split `test_phili` (test set 2,
as GeoChat and the FlexAttention paper); `load(..., split="test")` selects test set 1.

Protocols: "paper" = strip the reply's surrounding whitespace (as GeoChat's scripts do), then
lower-cased exact match, so "Yes." is wrong; "lenient" also strips trailing punctuation.
Table: presence, comparison, `average` (their mean accuracy, the seed's headline number; its
`n` is the total and `correct` the summed corrects, so accuracy != correct / n on that row only),
then the micro `overall`. The standard error and bootstrap interval of `average` treat it as the
mean of two strata (resampled within each subset), see flexeval/results/intervals.py.
max_new_tokens = 16: every presence/comp answer is "yes" or "no", so a reply cut at 16 tokens
scores exactly as the full reply would (both are wrong).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

from flexeval.errors import FlexEvalError

from .asking import ShortAnswer
from .base import (
    Benchmark,
    Sample,
    accuracy_rows,
    count_against,
    note_missing,
    read_json,
    require_field,
    subset_item_scores,
)

ZENODO_RECORD = "6344367"
SPLITS = ("train", "val", "test", "test_phili")
SPLIT_ALIASES = {"test_2": "test_phili", "test2": "test_phili", "test_1": "test", "test1": "test"}
DEFAULT_SPLIT = "test_phili"
TYPE_TO_SUBSET = {"presence": "presence", "comp": "comparison"}
SUBSETS = ("presence", "comparison")
# Presence + comparison questions per split, as big_vision's RSVQA-HR builder counts them (its
# "nonum" config). Per-subset counts are not published, so only the total is checked.
EXPECTED_BY_SPLIT = {"train": 371834, "val": 60405, "test": 131468, "test_phili": 62554}
TRAILING_PUNCTUATION = ".,!?;:"
MAX_NEW_TOKENS = 16


def split_files(split: str) -> list[str]:
    return [f"USGS_split_{split}_{part}.json" for part in ("questions", "answers", "images")]


def resolve_split(split: str | None) -> str:
    split = SPLIT_ALIASES.get(split, split) if split else DEFAULT_SPLIT
    if split not in SPLITS:
        raise FlexEvalError(f"RSVQA-HRBEN has no split '{split}'; choose one of {', '.join(SPLITS)}")
    return split


class RSVQAHRBEN(ShortAnswer, Benchmark):
    name = "rsvqa_hrben"
    aliases = ("rsvqa", "rsvqa_hr", "hrben", "rsvqahrben", "rsvqa_hr_ben")
    protocols = ("paper", "lenient")
    max_new_tokens = MAX_NEW_TOKENS
    splits = (DEFAULT_SPLIT, *(s for s in SPLITS if s != DEFAULT_SPLIT))

    def check_split(self, split: str | None) -> str:
        return resolve_split(split)  # also takes the aliases (test2, test_1, ...)
    subsets = SUBSETS
    expected_counts = {"overall": EXPECTED_BY_SPLIT[DEFAULT_SPLIT]}  # default split; see count_report

    def load(self, data_dir: Path, split: str | None = None, **options: Any) -> list[Sample]:
        data_dir = Path(data_dir)
        split = resolve_split(split)
        q_path, a_path = (data_dir / name for name in split_files(split)[:2])
        missing = [p.name for p in (q_path, a_path) if not p.is_file()]
        if missing or not (data_dir / "Data").is_dir():
            missing += [] if (data_dir / "Data").is_dir() else ["Data/"]
            raise FlexEvalError(
                f"RSVQA-HRBEN data not found: {data_dir} lacks {', '.join(missing)}. Expected "
                f"{', '.join(split_files(split))} and Data/<img_id>.tif from Zenodo record {ZENODO_RECORD} "
                f"(`flexeval data fetch --bench rsvqa_hrben --out {data_dir}` where a network exists)."
            )
        questions = require_field(read_json(q_path), "questions", str(q_path))
        answers = require_field(read_json(a_path), "answers", str(a_path))
        answer_by_id = {require_field(a, "id", f"{a_path} answer {k}"): a for k, a in enumerate(answers)}
        samples, image_ok, missing_images = [], {}, []
        for k, q in enumerate(questions):
            where = f"{q_path} question {k}"
            if not require_field(q, "active", where):
                continue
            subset = TYPE_TO_SUBSET.get(require_field(q, "type", where))
            if subset is None:  # count / area
                continue
            qid = require_field(q, "id", where)
            answer = self._answer_for(q, qid, answer_by_id, where, a_path)
            img_id = require_field(q, "img_id", where)
            image = data_dir / "Data" / f"{img_id}.tif"
            note_missing(image_ok, missing_images, img_id, image)
            samples.append(Sample(id=str(qid), subset=subset, question=require_field(q, "question", where),
                                  image=str(image), target=str(answer),
                                  meta={"type": q["type"], "img_id": img_id, "split": split}))
        if missing_images:
            raise FlexEvalError(f"RSVQA-HRBEN: {len(missing_images)} image(s) of split {split} are missing, "
                                f"e.g. {', '.join(missing_images[:3])}; extract Data/*.tif from the "
                                f"record's Images.tar into {data_dir}")
        return samples

    @staticmethod
    def _answer_for(q: dict, qid: Any, answer_by_id: dict, where: str, a_path: Path) -> str:
        ids = require_field(q, "answers_ids", where)
        if not isinstance(ids, list) or not ids:
            raise FlexEvalError(f"{where}: field 'answers_ids' must be a non-empty list")
        answer = answer_by_id.get(ids[0])
        if answer is None:
            raise FlexEvalError(f"{where}: answers_ids[0] = {ids[0]} has no entry with that 'id' in {a_path}")
        if require_field(answer, "question_id", f"{a_path} answer {ids[0]}") != qid:
            raise FlexEvalError(f"{a_path} answer {ids[0]}: field 'question_id' is {answer['question_id']}, "
                                f"but question {qid} points at it; the files are from different releases")
        return require_field(answer, "answer", f"{a_path} answer {ids[0]}")

    def count_report(self, samples: list[Sample]) -> dict:
        """Loaded vs published counts for the split the samples came from."""
        split = samples[0].meta.get("split", DEFAULT_SPLIT) if samples else DEFAULT_SPLIT
        expected = {"overall": EXPECTED_BY_SPLIT[split]} if split in EXPECTED_BY_SPLIT else {}
        return {**count_against(samples, expected), "split": split}

    def score(self, record: dict, protocol: str) -> dict:
        protocol = self.check_protocol(protocol)
        reply = (record.get("prediction") or "").strip().lower()
        target = str(record["target"]).strip().lower()
        if protocol == "lenient":
            reply = reply.rstrip(TRAILING_PUNCTUATION).strip()
        return {"score": float(reply == target)}

    def table(self, records: list[dict], protocol: str) -> list[dict]:
        rows = accuracy_rows(self.name, records, list(SUBSETS))
        by_subset = {r["subset"]: r for r in rows}
        parts = [by_subset[s] for s in SUBSETS]
        # From correct / n, not the rounded row accuracies; NaN when a subset is empty (a --limit
        # run, say): the mean needs both.
        accuracies = [100.0 * r["correct"] / r["n"] if r["n"] else float("nan") for r in parts]
        mean = sum(accuracies) / 2
        average = {"benchmark": self.name, "subset": "average", "n": sum(r["n"] for r in parts),
                   "correct": round(sum(r["correct"] for r in parts), 6),
                   "accuracy": float("nan") if math.isnan(mean) else round(mean, 4)}
        return rows[:-1] + [average, rows[-1]]

    def row_scores(self, records: list[dict], protocol: str) -> dict[str, list[list[float]]]:
        """`average` is the mean of the presence and comparison accuracies, so its uncertainty is that
        of a mean of two independent strata: the bootstrap resamples within each subset."""
        out = subset_item_scores(records, list(SUBSETS))
        out["average"] = [out["presence"][0], out["comparison"][0]]
        return out

    def make_sample(self, out_dir: Path, n: int = 6, seed: int = 0) -> Path:
        """A small database in the release layout: all four split files (each listing every entry,
        active only in its split), count/area questions and answers stored in a shuffled order with
        ids != positions, so only a join by id gives the right answers. n = presence and comparison
        questions per test split; images are 512x512 RGB TIFFs in Data/."""
        from .samples import draw_scene

        rng = random.Random(seed)
        out_dir = Path(out_dir)
        (out_dir / "Data").mkdir(parents=True, exist_ok=True)
        per_split = {"train": (1, 2), "val": (1, 2), "test": (2, n), "test_phili": (2, n)}  # (images, n)
        images, questions = [], []
        for split, (n_images, n_each) in per_split.items():
            first = len(images)
            for _ in range(n_images):
                images.append({"id": len(images), "split": split})
                img, _ = draw_scene(rng, 512, 512, 6)
                img.save(out_dir / "Data" / f"{images[-1]['id']}.tif", format="TIFF")
            kinds = ["presence"] * n_each + ["comp"] * n_each + ["count", "area"]
            for kind in kinds:
                question, answer = _make_question(rng, kind)
                questions.append({"img_id": rng.randrange(first, len(images)), "type": kind,
                                  "question": question, "answer": answer, "split": split})
        questions.sort(key=lambda q: q["img_id"])  # the release lists questions image by image
        order = _derangement(rng, len(questions))  # question i -> answer id order[i]
        q_rows, a_rows = [], [None] * len(questions)
        for qid, q in enumerate(questions):
            q_rows.append({"id": qid, "date_added": 1557161046.0, "img_id": q["img_id"], "people_id": 0,
                           "type": q["type"], "question": q["question"], "answers_ids": [order[qid]]})
            a_rows[order[qid]] = {"id": order[qid], "date_added": 1557161046.0, "question_id": qid,
                                  "people_id": 0, "answer": q["answer"]}
        i_rows = [{"id": im["id"], "date_added": 1557161046.0, "original_name": f"tile_{im['id']}.tif",
                   "people_id": 0, "questions_ids": [k for k, q in enumerate(questions) if q["img_id"] == im["id"]]}
                  for im in images]
        split_of_answer = {order[k]: q["split"] for k, q in enumerate(questions)}
        for split in SPLITS:
            files = dict(zip(("questions", "answers", "images"), split_files(split), strict=True))
            _write(out_dir / files["questions"], "questions",
                   [{**r, "active": questions[r["id"]]["split"] == split} for r in q_rows])
            _write(out_dir / files["answers"], "answers",
                   [{**r, "active": split_of_answer[r["id"]] == split} for r in a_rows])
            _write(out_dir / files["images"], "images",
                   [{**r, "active": images[r["id"]]["split"] == split} for r in i_rows])
        return out_dir

    def fetch(self, out_dir: Path) -> Path:
        from .zenodo import download, extract_matching

        out_dir = Path(out_dir)
        wanted = split_files("test_phili") + split_files("test")
        hint = (f"download {', '.join(wanted)} and Images.tar from https://zenodo.org/records/{ZENODO_RECORD} "
                f"on a machine with a network, put the JSON files in {out_dir} and extract Images.tar's "
                f"Data/*.tif to {out_dir / 'Data'}")
        paths = download(ZENODO_RECORD, lambda key: key in wanted or key.endswith((".tar", ".zip")), out_dir, hint)
        for archive in (p for p in paths if p.suffix in (".tar", ".zip")):
            # Images.tar holds Data/<id>.tif (and other formats we do not need).
            if extract_matching(archive, r"(^|/)Data/[^/]+\.tif$", out_dir):
                archive.unlink()
        nested = next((p for p in out_dir.rglob("Data") if p.is_dir() and p != out_dir / "Data"), None)
        if nested is not None and not (out_dir / "Data").exists():
            shutil.move(str(nested), str(out_dir / "Data"))
        return out_dir


# ------------------------------------------------------------------ sample data
def _make_question(rng: random.Random, kind: str) -> tuple[str, str]:
    things = ["residential building", "road", "water area", "commercial building", "parking", "grass area"]
    a, b = rng.sample(things, 2)
    if kind == "presence":
        return f"Is there a {a}?", rng.choice(["yes", "no"])
    if kind == "comp":
        return rng.choice([f"Is the number of {a}s equal to the number of {b}s?", f"Are there more {a}s than {b}s?",
                           f"Is there less {a}s than {b}s?"]), rng.choice(["yes", "no"])
    if kind == "count":
        return f"How many {a}s are there?", str(rng.randrange(0, 30))
    return f"What is the area covered by {a}s?", f"{rng.randrange(0, 3000)}m2"


def _derangement(rng: random.Random, n: int) -> list[int]:
    """A permutation with no fixed point (n >= 2), so no answer sits at its question's position."""
    order = list(range(n))
    rng.shuffle(order)
    for i in range(n):
        if order[i] == i:
            j = (i + 1) % n
            order[i], order[j] = order[j], order[i]
    return order


def _write(path: Path, key: str, rows: list[dict]) -> None:
    path.write_text(json.dumps({key: rows}))
