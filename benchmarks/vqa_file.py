"""A VQA file evaluated by path: `--bench path/to/file.jsonl`.

One JSON object a line: `question` (text), `image` (a path relative to the file's folder, or
absolute), and either `answers` (a list of reference answers: the standard VQA accuracy with the
EvalAI normaliser, benchmarks/vqa_eval.py, as TextVQA) or `answer` (one string: exact match after
that same normalisation). Optional: `id` (else `question_id`, else the line number) and `category`
(the accuracy.csv row; default `all`). The metric is chosen by what the rows hold (all rows must
hold the same kind) and recorded in run.json (`metric`).

Prompt: `{question}\\nAnswer the question using a single word or phrase.`, greedy, 64 new tokens
(TextVQA's), the reply stripped before scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexeval.errors import FlexEvalError

from .asking import ShortAnswer
from .base import Sample, json_lines
from .file_bench import FileBenchmark
from .mcq_file import NO_CATEGORY
from .vqa_eval import normalize_answer, vqa_accuracy

MAX_NEW_TOKENS = 64
VQA_ACCURACY = "vqa_accuracy"
EXACT_MATCH = "exact_match"


def _line_sample(path: Path, k: int, row: Any) -> Sample:
    where = f"{path}: line {k}"
    if not isinstance(row, dict):
        raise FlexEvalError(f"{where}: expected a JSON object with question, image and answers/answer")
    for field in ("question", "image"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise FlexEvalError(f"{where}, field '{field}': missing or not a non-empty string; add it")
    if ("answers" in row) == ("answer" in row):
        raise FlexEvalError(f"{where}: give either 'answers' (a list: VQA accuracy) or 'answer' (a string: exact "
                            f"match), not {'both' if 'answers' in row else 'neither'}")
    if "answers" in row:
        target = row["answers"]
        if not isinstance(target, list) or not target or not all(isinstance(a, str) for a in target):
            raise FlexEvalError(f"{where}, field 'answers': must be a non-empty list of strings")
    else:
        target = row["answer"]
        if not isinstance(target, str):
            raise FlexEvalError(f"{where}, field 'answer': must be a string (a list goes in 'answers')")
    image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
    if not image.is_file():
        raise FlexEvalError(f"{where}, field 'image': {image} does not exist; paths are relative to the file's folder")
    item_id = row.get("id", row.get("question_id", k))
    return Sample(id=str(item_id), subset=str(row.get("category") or NO_CATEGORY), question=row["question"].strip(),
                  image=str(image), target=target)


def load_jsonl(path: Path) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise FlexEvalError(f"{path}: no such file; give the path of a JSONL file (question, image, answers/answer)")
    samples, kinds = [], {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FlexEvalError(f"cannot read {path} as UTF-8 text ({e})") from e
    for k, row in json_lines(text, path, "fix the line"):
        s = _line_sample(path, k, row)
        kinds.setdefault(metric_of(s.target), k)
        samples.append(s)
    if len(kinds) > 1:
        raise FlexEvalError(f"{path}: line {kinds[VQA_ACCURACY]} holds 'answers' but line {kinds[EXACT_MATCH]} "
                            f"'answer'; one file holds one kind (a list of answers, or one answer, on every line)")
    return samples


def metric_of(target: Any) -> str:
    return VQA_ACCURACY if isinstance(target, list) else EXACT_MATCH


def score_answer(prediction: str | None, target: Any) -> float:
    if prediction is None:
        return 0.0
    reply = prediction.strip()
    if isinstance(target, list):
        return vqa_accuracy(reply, target)
    return float(normalize_answer(reply) == normalize_answer(str(target)))


class VqaFile(ShortAnswer, FileBenchmark):
    """`--bench path/to/file.jsonl`: results under <out>/<tag>/<file stem>/."""

    protocols = ("paper",)
    kind = "vqa_file"
    max_new_tokens = MAX_NEW_TOKENS

    def __init__(self, path: Path | str, name: str | None = None):
        super().__init__(path, name)
        self.metric: str | None = None  # known once loaded

    def load(self, data_dir: Path | None = None, **options: Any) -> list[Sample]:
        samples = load_jsonl(self.path)
        self.metric = metric_of(samples[0].target) if samples else None
        return samples

    def score(self, record: dict, protocol: str) -> dict:
        self.check_protocol(protocol)
        return {"score": score_answer(record.get("prediction"), record["target"])}

    def run_info(self) -> dict:
        return {"benchmark_file": str(self.path.resolve()), "benchmark_kind": self.kind,
                "metric": self.metric or metric_of(load_jsonl(self.path)[0].target)}
