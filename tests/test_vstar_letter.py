"""V* --protocol letter (lmms-eval's option-letter generation) and the run conveniences, end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flexeval.analysis.attention import generate_answers
from flexeval.benchmarks import get_benchmark
from flexeval.benchmarks.base import open_image
from flexeval.benchmarks.vstar_letter import lettered_question, parse_letter
from flexeval.benchmarks.wording import SHORT_ANSWER_SUFFIX
from flexeval.cli import app
from flexeval.errors import FlexEvalError
from flexeval.model.conversation import llava_v1_prompt

POST = "\nAnswer with the option's letter from the given choices directly."


def test_lettered_question_as_lmms_eval_builds_it():
    text = "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather"
    assert lettered_question(text) == (
        "What is the material of the glove?\nA. rubber\nB. cotton\nC. kevlar\nD. leather" + POST)
    # options inline: the question is the part before "(A)", stripped
    assert lettered_question("Is the cup on the left or right? (A) left (B) right") == (
        "Is the cup on the left or right?\nA. left\nB. right" + POST)
    # text after the last option stays glued to it (the regex's `$`), so an instruction already in the
    # text appears twice, as in lmms-eval
    assert lettered_question("Q?\n(A) x\n(B) y\nAnswer directly.") == "Q?\nA. x\nB. y\nAnswer directly." + POST
    assert lettered_question("No options here") == "No options here" + POST


@pytest.mark.parametrize("reply, letter", [
    ("A", "A"), ("b.", "B"), ("(C)", "C"),            # starts with a letter / bracketed
    ("The answer is c", "C"), ("Option: d", "D"),     # "answer/option (is)" forms
    ("I choose d", "D"),                              # a standalone letter
    ("Blue", "B"),                                    # quirk: a reply starting with A-D is that letter
    ("red", "D"),                                     # quirk: the only A-D letter of "RED"
    ("yes", None), ("none", None), ("", None),
])
def test_parse_letter_like_lmms_eval(reply, letter):
    assert parse_letter(reply) == letter


def test_letter_protocol_needs_the_lettered_file(tmp_path):
    bench = get_benchmark("vstar")
    data = bench.make_sample(tmp_path / "v", n=1)
    assert len(bench.load(data)) == 2  # the other protocols never read test_questions.jsonl
    lines = (data / "test_questions.jsonl").read_text().splitlines()
    (data / "test_questions.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(FlexEvalError, match="no line for 1 item.*relative_position/sa_2"):
        bench.load(data, protocol="letter")
    (data / "test_questions.jsonl").unlink()
    with pytest.raises(FlexEvalError, match="test_questions.jsonl"):
        bench.load(data, protocol="letter")


def test_sample_letters_point_at_the_right_option(tmp_path):
    bench = get_benchmark("vstar")
    data = bench.make_sample(tmp_path / "v", n=4, seed=3)
    samples = bench.load(data, protocol="letter")
    labels = set()
    for s in samples:
        label = s.meta["letter_label"]
        labels.add(label)
        lettered = dict(line.split(". ", 1) for line in lettered_question(s.meta["letter_text"]).split("\n")[1:-1])
        assert lettered[label] == s.options[0]  # the gold letter is the release's right option
        assert sorted(lettered.values()) == sorted(s.options)
    assert len(labels) > 1  # shuffled: not always A


def test_run_letter_protocol_with_ids_offset_fraction_and_gen_kwargs(tmp_path, release_dir, release_model):
    data = get_benchmark("vstar").make_sample(tmp_path / "vstar", n=3, seed=1)
    ids = tmp_path / "ids.txt"
    ids.write_text("direct_attributes/sa_1\ndirect_attributes/sa_2\nrelative_position/sa_4\n"
                   "relative_position/sa_5\nrelative_position/sa_6\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, [
        "run", "--bench", "vstar", "--protocol", "letter", "--model", str(release_dir), "--data-dir", str(data),
        "--out", str(out), "--ids", str(ids), "--offset", "1", "--limit", "0.5", "--gen-kwargs",
        "max_new_tokens=3,temperature=0", "--workers", "0", "--quiet", "--batch-size", "2", "--dtype", "float32",
        "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (bench_dir,) = out.glob("*/vstar/protocol-letter+max-new-tokens-3+items-2-*")  # a variant folder (layout.py)
    preds = [json.loads(x) for x in (bench_dir / "predictions.jsonl").read_text().splitlines()]
    # 5 listed ids, offset 1 -> 4, ceil(0.5 * 4) = 2
    assert [p["id"] for p in preds] == ["direct_attributes/sa_2", "relative_position/sa_4"]
    images = {s.id: s.image for s in get_benchmark("vstar").load(data)}
    lettered = {}
    for line in (data / "test_questions.jsonl").read_text().splitlines():
        row = json.loads(line)
        lettered[row["image"].rsplit(".", 1)[0]] = row
    for p in preds:
        row = lettered[p["id"]]
        # the prompt, built here by hand: question, "X. option" lines, lmms-eval's post-prompt
        head, *opts = row["text"].split("\n")
        prompt = llava_v1_prompt(head + "".join(f"\n{o[1]}. {o[4:]}" for o in opts) + POST)
        image = release_model.preprocess(open_image(images[p["id"]]))
        expected = generate_answers(release_model, [prompt], [image], 3)[0]
        assert p["generated_ids"] == expected.token_ids and len(p["generated_ids"]) <= 3
        assert p["score"] == float(parse_letter(p["prediction"]) == row["label"])
    run = json.loads((bench_dir / "run.json").read_text())
    assert run["protocol"] == "letter"
    assert (run["accuracy_intervals"]["resamples"], run["accuracy_intervals"]["seed"]) == (1000, 0)
    assert run["data"]["items"] == {"loaded": 6, "ids_file": str(ids), "after_ids": 5, "offset": 1,
                                        "limit": 0.5, "kept": 2}
    acc = (bench_dir / "accuracy.csv").read_text().splitlines()
    assert acc[-1].startswith(f"vstar,overall,2,{sum(p['score'] for p in preds):g},")


def test_run_a_benchmark_list_with_the_lmms_eval_question_style(tmp_path, release_dir, release_model):
    root = tmp_path / "data"
    get_benchmark("vstar").make_sample(root / "vstar", n=1)
    get_benchmark("textvqa").make_sample(root / "textvqa", n=2, seed=5)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, [
        "run", "--bench", "vstar,textvqa", "--model", str(release_dir), "--data-dir", str(root), "--out", str(out),
        "--limit", "1", "--max-new-tokens", "2", "--question-style", "lmms-eval", "--workers", "0", "--quiet",
        "--dtype", "float32", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (tag_dir,) = [p for p in out.iterdir() if p.is_dir()]  # beside it: summary.csv, summary.md
    assert tag_dir.name.endswith("-qs-lmms-eval")
    assert sorted(p.name for p in tag_dir.iterdir()) == ["textvqa", "vstar"]
    assert "--question-style lmms-eval changes nothing here" in r.output  # said for V*
    textvqa_dir = tag_dir / "textvqa" / "max-new-tokens-2+limit-1"  # a variant folder (layout.py)
    (rec,) = [json.loads(x) for x in (textvqa_dir / "predictions.jsonl").read_text().splitlines()]
    sample = get_benchmark("textvqa").load(root / "textvqa")[0]
    assert rec["question"] == sample.question  # the record keeps the release's question
    assert sample.question.capitalize() != sample.question  # so the style did change the prompt
    prompt = llava_v1_prompt(sample.question.capitalize() + SHORT_ANSWER_SUFFIX)
    image = release_model.preprocess(open_image(sample.image))
    assert rec["generated_ids"] == generate_answers(release_model, [prompt], [image], 2)[0].token_ids
    run = json.loads((textvqa_dir / "run.json").read_text())
    assert run["config"]["question_style"] == "lmms-eval"
