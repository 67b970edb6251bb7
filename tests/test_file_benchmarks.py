"""File benchmarks by path: VLMEvalKit MCQ TSV (likelihood, letter), VQA JSONL, HR-Bench 4K/8K."""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.benchmarks.hrbench import COLUMNS
from flexeval.benchmarks.mcq_file import letter_prompt, load_tsv, parse_letter
from flexeval.benchmarks.vqa_file import load_jsonl
from flexeval.cli import app
from flexeval.errors import FlexEvalError

HEADER = ["index", "question", "hint", "A", "B", "C", "D", "E", "answer", "category", "image", "image_path"]


def png_b64(color: str, size=(96, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def mcq_rows(folder: Path) -> list[list[str]]:
    """Rows covering the layout: base64, an index reference, an image path, a hint, 2 to 5 options."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (50, 70), "green").save(folder / "leaf.png")
    return [
        ["10", "What color is it?", "", "red", "green", "blue", "", "", "A", "color", png_b64("red"), ""],
        ["11", "Which is brighter?", "Look closely.", "left", "right", "", "", "", "B", "compare", png_b64("blue"), ""],
        ["12", "What color again?", "", "blue", "red", "green", "white", "black", "E", "color", "10", ""],
        ["13", "What is the leaf's color?", "", "green", "red", "", "", "", "A", "color", "", "leaf.png"],
    ]


def write_tsv(path: Path, rows, header=HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_tsv_layout_loads(tmp_path):
    path = write_tsv(tmp_path / "my_mcq.tsv", mcq_rows(tmp_path))
    samples = load_tsv(path)
    assert [s.id for s in samples] == ["10", "11", "12", "13"]
    assert [s.subset for s in samples] == ["color", "compare", "color", "color"]
    assert [len(s.options) for s in samples] == [3, 2, 5, 2]
    assert [s.target for s in samples] == ["A", "B", "E", "A"]
    assert samples[1].meta == {"hint": "Look closely."} and samples[0].meta == {}
    assert samples[2].image is samples[0].image  # the index reference shares row 10's decoded bytes
    assert Image.open(io.BytesIO(samples[0].image)).getpixel((0, 0)) == (255, 0, 0)
    assert samples[3].image == str(tmp_path / "leaf.png")
    assert letter_prompt(samples[1]) == ("Look closely.\nWhich is brighter?\nA. left\nB. right\n"
                                         "Answer with the option's letter from the given choices directly.")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r[0].__setitem__(8, "D"), r"row 1 \(index 10\), column 'answer': 'D' is not one of .*A, B, C"),
    (lambda r: r[1].__setitem__(10, "not base64!" * 10), r"row 2 \(index 11\), column 'image': not valid base64"),
    (lambda r: r[2].__setitem__(4, ""), r"row 3 \(index 12\), column 'B': empty while a later option"),
    (lambda r: r[3].__setitem__(11, "gone.png"), r"row 4 \(index 13\), column 'image_path': .*gone.png does not exist"),
    (lambda r: r[3].__setitem__(0, "11"), r"row 4, column 'index': '11' repeats row 2"),
    (lambda r: r[2].__setitem__(10, "99"), r"row 3 \(index 12\), column 'image': '99' is neither base64"),
    (lambda r: r[1].__setitem__(4, ""), r"row 2 \(index 11\): 1 option\(s\)"),
    (lambda r: r[0].pop(), r"row 1 has 11 columns, the header 12"),
])
def test_malformed_rows_name_the_file_row_and_column(tmp_path, edit, message):
    rows = mcq_rows(tmp_path)
    edit(rows)
    path = write_tsv(tmp_path / "bad.tsv", rows)
    with pytest.raises(FlexEvalError, match=message) as e:
        load_tsv(path)
    assert str(path) in str(e.value)


def test_missing_columns_and_the_cli_error(tmp_path):
    path = write_tsv(tmp_path / "nocol.tsv", [["1", "q?", "a", "b", "x"]], header=["index", "question", "A", "B", "x"])
    with pytest.raises(FlexEvalError, match="missing column\\(s\\) answer"):
        load_tsv(path)
    r = CliRunner().invoke(app, ["run", "--bench", str(path), "--model", str(tmp_path / "none")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["run", "--bench", str(tmp_path / "absent.tsv"), "--model", "x"])
    assert r.exit_code == 1 and "absent.tsv: no such file" in r.output


@pytest.mark.parametrize("reply, n, letter", [
    ("E", 5, "E"), ("e.", 5, "E"), ("(H)", 8, "H"), ("The answer is G", 8, "G"),
    ("F", 5, None),           # a letter beyond the row's options is no answer
    ("Blue", 4, "B"),         # lmms-eval's quirk kept: a reply starting with a letter is that letter
    ("I pick e", 5, "E"), ("I pick e", 4, "C"),  # 4 options: the only A-D letter of "I PICK E" is the C
])
def test_parse_letter_over_the_rows_letters(reply, n, letter):
    assert parse_letter(reply, n) == letter


def _monkey_generate(monkeypatch, replies: dict[str, str]):
    """FlexLlava.generate, its replies replaced by planted ones (keyed by a substring of the question)."""
    from flexeval.model.flex_llava import FlexLlava

    real = FlexLlava.generate

    def planted(self, items, **kw):
        out = real(self, items, **kw)
        return [replace(r, text=next(v for k, v in replies.items() if k in req.question)) for (req, _), r in zip(items, out)]

    monkeypatch.setattr(FlexLlava, "generate", planted)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _csv_rows(path: Path) -> dict[str, list[str]]:
    return {r[1]: r for r in (line.split(",") for line in path.read_text().splitlines()[1:])}


def test_tsv_runs_by_path_under_both_protocols(tmp_path, release_dir, monkeypatch):
    from flexeval.benchmarks.base import open_image
    from flexeval.model import load_pretrained, reference
    from flexeval.model.conversation import llava_v1_prompt

    path = write_tsv(tmp_path / "data" / "my-mcq.tsv", mcq_rows(tmp_path / "data"))
    out = tmp_path / "out"
    base = ["run", "--bench", str(path), "--model", str(release_dir), "--out", str(out), "--workers", "0", "-q",
            "--batch-size", "2"]
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    folder = out / release_dir.name / "my-mcq"  # named after the file
    preds = _lines(folder / "predictions.jsonl")
    run = json.loads((folder / "run.json").read_text())
    assert run["benchmark"] == "my-mcq" and run["protocol"] == "likelihood"
    assert run["benchmark_file"] == str(path.resolve()) and f"--bench {path.resolve()}" in run["command"]
    # the lowest mean NLL, by the literal reference, for one item; the scores by hand for all
    model = load_pretrained(release_dir, dtype="float32", device="cpu")
    s = load_tsv(path)[1]
    img = model.preprocess(open_image(s.image))
    question = f"{s.meta['hint']}\n{s.question}\nAnswer the question using a single word or phrase."
    ref = [reference.option_nll(model, llava_v1_prompt(question), img, o)[0] for o in s.options]
    np.testing.assert_allclose(preds[1]["option_nll"], ref, rtol=1e-4)
    correct: dict[str, list[float]] = {}
    for p in preds:
        chosen = "ABCDE"[int(np.argmin(p["option_nll"]))]
        correct.setdefault(p["subset"], []).append(float(chosen == p["target"]))
    rows = _csv_rows(folder / "accuracy.csv")
    assert list(rows) == ["color", "compare", "overall"]
    for subset, scores in [*correct.items(), ("overall", sum(correct.values(), []))]:
        assert rows[subset][2:4] == [str(len(scores)), str(int(sum(scores)))]
    # letter: planted replies, parsed over each row's letters; its own variant folder
    _monkey_generate(monkeypatch, {"What color is it": "A", "brighter": "The answer is (A)",
                                   "again": "e", "leaf": "none of them"})
    r = CliRunner().invoke(app, [*base, "--protocol", "letter"])
    assert r.exit_code == 0, r.output
    letter = _lines(folder / "protocol-letter" / "predictions.jsonl")
    assert [p["parsed"] for p in letter] == ["A", "A", "E", None]
    assert [p["score"] for p in letter] == [1.0, 0.0, 1.0, 0.0]
    rows = _csv_rows(folder / "protocol-letter" / "accuracy.csv")
    assert rows["color"][2:5] == ["3", "2", "66.6667"] and rows["overall"][2:4] == ["4", "2"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_vqa_jsonl_metric_follows_the_rows(tmp_path, release_dir, monkeypatch):
    Image.new("RGB", (64, 48), "red").save(tmp_path / "a.png")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (48, 64), "blue").save(tmp_path / "imgs" / "b.jpg")
    soft = write_jsonl(tmp_path / "soft.jsonl", [
        {"question": "What color?", "image": "a.png", "answers": ["red"] * 2 + ["crimson"] * 8, "category": "c"},
        {"question_id": 7, "question": "Which shape?", "image": "imgs/b.jpg", "answers": ["two"] * 10}])
    exact = write_jsonl(tmp_path / "exact.jsonl", [
        {"id": "x1", "question": "What color?", "image": "a.png", "answer": "red"},
        {"id": "x2", "question": "Which shape?", "image": "imgs/b.jpg", "answer": "square"}])
    assert [s.id for s in load_jsonl(soft)] == ["1", "7"] and [s.subset for s in load_jsonl(soft)] == ["c", "all"]
    _monkey_generate(monkeypatch, {"color": " The Red.", "shape": "2"})
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["run", "--bench", f"{soft},{exact}", "--model", str(release_dir), "--out", str(out),
                                 "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    soft_dir, exact_dir = out / release_dir.name / "soft", out / release_dir.name / "exact"
    # "The Red." normalises to "red": 2 of 10 annotators -> min(1, 1/3)*2/10 + min(1, 2/3)*8/10
    assert [p["score"] for p in _lines(soft_dir / "predictions.jsonl")] == pytest.approx([0.6, 1.0])
    assert [p["score"] for p in _lines(exact_dir / "predictions.jsonl")] == [1.0, 0.0]
    assert json.loads((soft_dir / "run.json").read_text())["metric"] == "vqa_accuracy"
    assert json.loads((exact_dir / "run.json").read_text())["metric"] == "exact_match"
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "q?", "image": "a.png", "answers": ["a"]}, {"question": "q?", "image": "a.png", "answer": "a"}])
    with pytest.raises(FlexEvalError, match="line 1 holds 'answers' but line 2 'answer'"):
        load_jsonl(mixed)
    with pytest.raises(FlexEvalError, match="line 1, field 'image': .*nope.png does not exist"):
        load_jsonl(write_jsonl(tmp_path / "noimg.jsonl", [{"question": "q?", "image": "nope.png", "answer": "a"}]))


# ---- HR-Bench ----

def test_hrbench_sample_is_in_the_release_layout(tmp_path):
    bench = get_benchmark("hrbench_4k")
    data = bench.make_sample(tmp_path / "hr", n=2, seed=3)
    with open(data / "hr_bench_4k.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == COLUMNS
    for k in range(1, len(rows), 4):  # one question on 4 rows: options rotated, the answer moving A, B, C, D
        block = [dict(zip(COLUMNS, r)) for r in rows[k:k + 4]]
        assert [b["cycle_category"] for b in block] == ["0", "1", "2", "3"]
        assert [b["answer"] for b in block] == ["A", "B", "C", "D"]
        assert len({b[b["answer"]] for b in block}) == 1 and len({b["image"] for b in block}) == 1
    samples = bench.load(data)
    assert len(samples) == 16 and {s.subset for s in samples} == {"single", "cross"}
    assert bench.count_report(samples)["mismatch"]["overall"] == {"expected": 800, "loaded": 16}
    assert get_benchmark("hrbench8k").name == "hrbench_8k"


def test_hrbench_scores_are_the_mean_over_cycles():
    bench = get_benchmark("hrbench_4k")
    planted = {("single", "0"): [1, 1, 0], ("single", "1"): [0], ("cross", "0"): [1], ("cross", "1"): [1, 0, 0, 0]}
    records = [{"subset": s, "score": float(x), "meta": {"cycle": c}} for (s, c), xs in planted.items() for x in xs]
    rows = {r["subset"]: r for r in bench.table(records, "letter")}
    assert rows["single"]["accuracy"] == pytest.approx(100 * (2 / 3 + 0) / 2, abs=1e-3)  # not 2/4 = 50
    assert rows["cross"]["accuracy"] == pytest.approx(100 * (1 + 1 / 4) / 2, abs=1e-3)
    assert rows["overall"]["accuracy"] == pytest.approx(100 * (3 / 4 + 1 / 5) / 2, abs=1e-3)  # cycle 0: 3 of 4, cycle 1: 1 of 5
    assert rows["overall"]["n"] == 9 and rows["overall"]["correct"] == 4


def test_hrbench_fetch_offline_names_the_hub_file(tmp_path, monkeypatch, release_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(app, ["data", "fetch", "--bench", "hrbench_8k", "--out", str(tmp_path / "hr8")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "DreamMr/HR-Bench" in r.output and "hr_bench_8k.tsv" in r.output and "offline" in r.output
    r = CliRunner().invoke(app, ["run", "--bench", "hrbench_4k", "--data-dir", str(tmp_path / "none"), "--model",
                                 str(release_dir)])
    assert r.exit_code == 1 and "hr_bench_4k.tsv" in r.output and "make-sample --bench hrbench_4k" in r.output
