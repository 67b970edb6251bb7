"""V* `--protocol letter`: lmms-eval's generation of an option letter (task `vstar_bench`).

Facts taken from lmms-eval (EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/vstar_bench/utils.py and
_default_template_yaml, checked at commit 75571cf, version 0.7.2); the code is ours.
- Data: lmms-eval reads the HF dataset `lmms-lab-encoder/vstar-bench` (fields `text`, `label`,
  `category`, `question_id`, `image`), a parquet copy of the release's `test_questions.jsonl`.
  We read that jsonl from the release snapshot, so the letters and the gold letter are the ones
  lmms-eval scores (the options in the per-image JSONs are in another order: options[0] is always
  the right one, which would make every gold letter A).
- Prompt (`vstar_doc_to_text`): the options are found in `text` with the regex
  `\\([A-D]\\)\\s*([^()]+?)(?=\\s*\\([A-D]\\)|$)`; if any are found, the question is the part before
  "(A)", stripped, followed by one line per option `"{letter}. {option stripped}"` (at most four);
  else `text` stays as is. Then the post-prompt "\\nAnswer with the option's letter from the given
  choices directly." (empty pre-prompt). Because `$` and `[^()]` let the last option run to the
  end of `text`, whatever follows the last option in `text` stays glued to it, as in lmms-eval.
  The question goes into the model's chat template (`--recipe` decides which), image as the recipe
  says.
- Generation: greedy, max_new_tokens 16 (lmms-eval: temperature 0, num_beams 1, do_sample false).
- Parsing (`extract_answer_letter`): on the reply stripped and upper-cased, the first of these
  regexes that matches anywhere (re.search): `^([A-D])\\s*[\\.)\\]]*` (the reply starts with the letter:
  so "Blue" parses as B - a quirk kept on purpose), `(?:THE\\s+)?(?:ANSWER|CHOICE|OPTION)(?:\\s+IS)?[\\s:]+([A-D])`,
  `\\(([A-D])\\)`, `([A-D])\\s*(?:\\.|\\)|])`, `(?:^|\\s)([A-D])(?:\\s|$)`; else the only A-D letter in the
  reply if there is exactly one; else nothing (wrong). Score = parsed letter == `label`.
Differences from lmms-eval: none in the text we build or the parse; the model input differs only
by the recipe (see README "comparing with lmms-eval / VLMEvalKit numbers"). Not verified against
the real `test_questions.jsonl` here (no network): check its field names on the first real load.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import replace
from pathlib import Path

from flexeval.errors import FlexEvalError

from .base import Sample, json_lines, read_utf8

LETTERED_FILE = "test_questions.jsonl"
LETTER_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
LETTER_MAX_NEW_TOKENS = 16
LETTERS = ("A", "B", "C", "D")

_OPTION = re.compile(r"\(([A-D])\)\s*([^()]+?)(?=\s*\([A-D]\)|$)")


@functools.lru_cache(maxsize=None)
def _parse_steps(last: str) -> tuple[re.Pattern, ...]:
    """lmms-eval's steps, in order, over the letters A..last (its own: A-D)."""
    c = f"[A-{last}]"
    return (re.compile(rf"^({c})\s*[\.)\]]*"), re.compile(rf"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+({c})"),
            re.compile(rf"\(({c})\)"), re.compile(rf"({c})\s*(?:\.|\)|])"), re.compile(rf"(?:^|\s)({c})(?:\s|$)"))


def lettered_question(text: str) -> str:
    """lmms-eval's `vstar_doc_to_text` on the release's `text` (see the module docstring)."""
    options = [m.group(2) for m in _OPTION.finditer(text)]
    if options:
        head = text.split("(A)")[0].strip()
        text = head + "\n" + "\n".join(f"{letter}. {opt.strip()}" for letter, opt in zip(LETTERS, options))
    return text + LETTER_POST_PROMPT


def letter_prompt(sample: Sample) -> str:
    return lettered_question(sample.meta["letter_text"])


def parse_letter(reply: str, last: str = "D") -> str | None:
    """lmms-eval's `extract_answer_letter`: a letter A-D (A..last) or None."""
    text = (reply or "").strip().upper()
    for step in _parse_steps(last):
        m = step.search(text)
        if m:
            return m.group(1)
    letters = re.findall(f"[A-{last}]", text)
    if len(letters) == 1:
        return letters[0]
    return None  # lmms-eval's last step (the first character, if A-D) is covered by step 1


def score_letter(record: dict) -> dict:
    parsed = parse_letter(record.get("prediction") or "")
    label = str(record["meta"]["letter_label"]).strip().upper()
    return {"score": float(parsed == label), "parsed": parsed}


def read_lettered(data_dir: Path, samples: list[Sample]) -> list[Sample]:
    """Each sample with `letter_text` and `letter_label` from test_questions.jsonl in its meta."""
    path = Path(data_dir) / LETTERED_FILE
    if not path.is_file():
        raise FlexEvalError(
            f"V* --protocol letter needs {path}: the release's lettered questions (the order and gold "
            f"letters lmms-eval scores). It is in a full snapshot of craigwu/vstar_bench "
            f"(`flexeval data fetch --bench vstar --out {data_dir}`); copy it there")
    by_id: dict[str, dict] = {}
    for k, row in json_lines(read_utf8(path), path, "re-download the file"):
        for key in ("image", "text", "label"):
            if not isinstance(row, dict) or key not in row:
                raise FlexEvalError(f"{path}: line {k} lacks field '{key}'; the file is not the release's "
                                    f"test_questions.jsonl")
        image = Path(str(row["image"]))
        by_id[f"{image.parent.name}/{image.stem}"] = row
    missing = [s.id for s in samples if s.id not in by_id]
    if missing:
        raise FlexEvalError(f"{path} has no line for {len(missing)} item(s), e.g. {', '.join(missing[:5])} "
                            f"(matched by the 'image' field, <subset>/<name>); use the file of the same snapshot")
    return [replace(s, meta={**s.meta, "letter_text": str(by_id[s.id]["text"]),
                             "letter_label": str(by_id[s.id]["label"])}) for s in samples]


def write_lettered(out_dir: Path, items: list[tuple[str, str, str, list[str]]], rng: random.Random) -> None:
    """Generated test_questions.jsonl in the release's layout: options shuffled, gold letter recorded."""
    lines = []
    for k, (image, subset, question, options) in enumerate(items):
        order = list(range(len(options)))
        rng.shuffle(order)
        text = question + "".join(f"\n({LETTERS[j]}) {options[i]}" for j, i in enumerate(order))
        label = LETTERS[order.index(0)]  # options[0] is the right one
        lines.append(json.dumps({"image": image, "text": text, "category": subset,
                                 "question_id": k, "label": label}))
    (Path(out_dir) / LETTERED_FILE).write_text("\n".join(lines) + "\n")
