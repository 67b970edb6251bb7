"""The runner end to end on the tiny model: V* numbers, resume, fingerprints, batch invariance, all."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.model import load_pretrained, reference
from flexeval.model.tiny import make_tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    model_dir = make_tiny_model(root / "tiny", seed=0)
    data = get_benchmark("vstar").make_sample(root / "vstar", n=3, seed=1)
    return root, model_dir, data


def _run(env, out, **kw):
    root, model_dir, data = env
    cfg = RunConfig(bench="vstar", model=str(model_dir), data_dir=data, out=out, workers=0, quiet=True,
                    batch_size=kw.pop("batch_size", "4"), **kw)
    return run_benchmarks(cfg)[0]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_vstar_scores_are_the_reference_mean_nll_argmin(env, tmp_path):
    root, model_dir, data = env
    run = _run(env, tmp_path / "out")
    bench_dir = tmp_path / "out" / "tiny" / "vstar"
    preds = _lines(bench_dir / "predictions.jsonl")
    assert [p["id"] for p in preds] == [f"direct_attributes/sa_{i}" for i in (1, 2, 3)] + \
        [f"relative_position/sa_{i}" for i in (4, 5, 6)]
    model = load_pretrained(model_dir, dtype="float32", device="cpu")
    bench = get_benchmark("vstar")
    samples = {s.id: s for s in bench.load(data)}
    for p in preds[:2] + preds[-1:]:  # independent: the literal reference, one option at a time
        s = samples[p["id"]]
        req = bench.request(s, "paper")
        from flexeval.benchmarks.base import open_image

        img = model.preprocess(open_image(s.image))
        ref = [reference.option_nll(model, model.prompt_text(req), img, o)[0] for o in s.options]
        np.testing.assert_allclose(p["option_nll"], ref, rtol=1e-4)
        assert p["prediction"] == s.options[int(np.argmin(ref))]
        assert p["score"] == float(p["prediction"] == s.options[0])
    # accuracy.csv from the predictions, by hand
    rows = (bench_dir / "accuracy.csv").read_text().splitlines()
    assert rows[0] == "benchmark,subset,n,correct,accuracy,stderr,ci95_low,ci95_high"
    by = {}
    for p in preds:
        by.setdefault(p["subset"], []).append(p["prediction"] == p["options"][0])
    overall = sum(sum(v) for v in by.values())
    assert rows[-1].split(",")[:4] == ["vstar", "overall", "6", str(overall)]
    assert float(rows[-1].split(",")[4]) == pytest.approx(100 * overall / 6, abs=1e-3)
    assert run["model"]["kind"] == "flexattention" and run["data"]["counts"]["loaded"]["overall"] == 6


def test_resume_after_a_crash_gives_the_uninterrupted_files(env, tmp_path, monkeypatch):
    _run(env, tmp_path / "full", batch_size="2")
    full = (tmp_path / "full" / "tiny" / "vstar" / "predictions.jsonl").read_bytes()

    from flexeval.model.flex_llava import FlexLlava

    real = FlexLlava.choose
    calls = {"n": 0}

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(self, *a, **k)

    monkeypatch.setattr(FlexLlava, "choose", crashing)
    with pytest.raises(KeyboardInterrupt):
        _run(env, tmp_path / "crash", batch_size="2")
    shard = next((tmp_path / "crash" / "tiny" / "vstar" / "shards").glob("*.jsonl"))
    assert len(shard.read_text().splitlines()) == 2  # the first batch survived, fsync'ed
    with open(shard, "ab") as f:
        f.write(b'{"key": "torn')  # and a torn write at the moment of the kill
    monkeypatch.setattr(FlexLlava, "choose", real)
    run = _run(env, tmp_path / "crash", batch_size="2")
    assert run["timing"]["reused"] == 2 and run["timing"]["ran"] == 4
    assert (tmp_path / "crash" / "tiny" / "vstar" / "predictions.jsonl").read_bytes() == full
    again = _run(env, tmp_path / "crash", batch_size="2")  # nothing left to do, same bytes
    assert again["timing"]["ran"] == 0
    assert (tmp_path / "crash" / "tiny" / "vstar" / "predictions.jsonl").read_bytes() == full


def test_changed_configuration_or_data_never_reuses_predictions(env, tmp_path):
    root, model_dir, data = env
    out = tmp_path / "out"
    _run(env, out, tag="t")
    assert _run(env, out, tag="t", protocol="official")["timing"]["ran"] == 6
    assert _run(env, out, tag="t", selection="center")["timing"]["ran"] == 6
    assert _run(env, out, tag="t", threshold=30.0)["timing"]["ran"] == 6
    assert _run(env, out, tag="t")["timing"]["ran"] == 0  # the original config is still there
    # same id, new content: only that item is recomputed
    item = Path(data) / "direct_attributes" / "sa_2.json"
    original = item.read_text()
    try:
        obj = json.loads(original)
        obj["options"] = obj["options"][::-1]
        item.write_text(json.dumps(obj))
        assert _run(env, out, tag="t")["timing"]["ran"] == 1
    finally:
        item.write_text(original)


def test_batch_size_does_not_change_per_sample_results(env, tmp_path):
    _run(env, tmp_path / "a", batch_size="1")
    _run(env, tmp_path / "b", batch_size="5")
    a = _lines(tmp_path / "a" / "tiny" / "vstar" / "predictions.jsonl")
    b = _lines(tmp_path / "b" / "tiny" / "vstar" / "predictions.jsonl")
    assert [x["prediction"] for x in a] == [x["prediction"] for x in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["option_nll"], y["option_nll"], rtol=1e-5)
        assert x["hd_selected_ratio"] == pytest.approx(y["hd_selected_ratio"], abs=1e-9)


def test_generation_batch_invariance_and_all_benchmarks(env, tmp_path):
    root, model_dir, _ = env
    data = tmp_path / "data"
    cli = CliRunner()
    r = cli.invoke(app, ["data", "make-sample", "--bench", "all", "--out", str(data), "--n", "2"])
    assert r.exit_code == 0, r.output
    outs = {}
    for bs in ("1", "3"):
        cfg = RunConfig(bench="all", model=str(model_dir), data_dir=data, out=tmp_path / f"res{bs}", workers=1,
                        quiet=True, batch_size=bs, max_new_tokens=5)
        run_benchmarks(cfg)
        outs[bs] = {b: _lines(tmp_path / f"res{bs}" / "tiny" / b / "max-new-tokens-5" / "predictions.jsonl")
                    for b in ("magnifierbench", "textvqa", "rsvqa_hrben")}
    for b, recs in outs["1"].items():
        assert [x["generated_ids"] for x in recs] == [x["generated_ids"] for x in outs["3"][b]], b
    summary = (tmp_path / "res1" / "summary.csv").read_text().splitlines()
    assert summary[0] == "model,benchmark,subset,n,correct,accuracy,stderr,ci95_low,ci95_high"
    benches = {line.split(",")[1] for line in summary[1:]}
    assert benches == {"vstar", "magnifierbench", "textvqa", "rsvqa_hrben"}
    md = (tmp_path / "res1" / "summary.md").read_text()
    assert "paper: FlexAttention-7B" in md and "| tiny " in md


def test_cli_errors_are_clear(env, tmp_path):
    root, model_dir, _ = env
    cli = CliRunner()
    r = cli.invoke(app, ["run", "--bench", "vstar", "--model", str(model_dir), "--data-dir", str(tmp_path / "nope")])
    assert r.exit_code == 1
    assert "direct_attributes/" in r.output and "flexeval data fetch" in r.output
    r = cli.invoke(app, ["run", "--bench", "nosuch", "--model", str(model_dir)])
    assert r.exit_code == 1 and "unknown benchmark" in r.output
    r = cli.invoke(app, ["run", "--bench", "vstar", "--model", str(model_dir), "--data-dir", str(env[2]),
                         "--batch-size", "zero", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--batch-size" in r.output


def test_auto_batch_backs_off_on_out_of_memory_without_losing_work(env, tmp_path, monkeypatch):
    _run(env, tmp_path / "ref", batch_size="1")
    from flexeval.model.flex_llava import FlexLlava

    real = FlexLlava.choose
    seen = []

    def small_memory(self, items):
        seen.append(len(items))
        if len(items) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, items)

    monkeypatch.setattr(FlexLlava, "choose", small_memory)
    run = _run(env, tmp_path / "oom", batch_size="auto")  # auto starts at 4 on the CPU
    assert seen[0] == 4 and max(seen[1:]) <= 2 and run["timing"]["batch_size_final"] == 2
    a = _lines(tmp_path / "ref" / "tiny" / "vstar" / "predictions.jsonl")
    b = _lines(tmp_path / "oom" / "tiny" / "vstar" / "predictions.jsonl")
    assert [x["id"] for x in a] == [x["id"] for x in b] and [x["prediction"] for x in a] == [x["prediction"] for x in b]


def test_a_broken_image_is_a_counted_reported_row(env, tmp_path):
    root, model_dir, data = env
    import shutil

    copy = tmp_path / "vstar"
    shutil.copytree(data, copy)
    victim = next((copy / "relative_position").glob("sa_5.*[!n]"))  # the image, not the .json
    victim.write_bytes(b"not an image at all")
    cfg = RunConfig(bench="vstar", model=str(model_dir), data_dir=copy, out=tmp_path / "out", workers=1,
                    quiet=True, batch_size="4")
    run = run_benchmarks(cfg)[0]
    preds = _lines(tmp_path / "out" / "tiny" / "vstar" / "predictions.jsonl")
    bad = [p for p in preds if p["id"] == "relative_position/sa_5"]
    assert len(preds) == 6 and len(bad) == 1
    assert bad[0]["score"] == 0.0 and "cannot decode image" in bad[0]["skipped"]
    assert run["stats"]["skipped"] == 1 and run["data"]["evaluated"] == 6


def _hand_textvqa(reply: str, answers: list[str]) -> float:
    """Leave-one-out VQA accuracy for simple lower-case answers: mean over i of min(1, matches among the others / 3)."""
    pred = reply.strip().lower()
    gt = [a.strip().lower() for a in answers]
    return sum(min(1.0, sum(1 for j, a in enumerate(gt) if j != i and a == pred) / 3) for i in range(len(gt))) / len(gt)


def _hand_magnifier(reply: str, target: str) -> float:
    """The release's reading of a reply, for one reply: "The answer is X", else the first of A-D in the
    reply, else in the upper-cased reply (paper prompts put options on their own lines: no option-text step)."""
    import re

    m = re.search(r"The answer is ([A-D])", reply)
    letter = m.group(1) if m else next((c for c in "ABCD" if c in reply), None) or \
        next((c for c in "ABCD" if c in reply.upper()), "other")
    return float(letter == target)


def test_every_generate_benchmark_through_the_runner_matches_the_reference(env, tmp_path):
    """Each Generate benchmark end to end: generated ids = reference.generate of the benchmark's own
    prompt and image mode, prediction = their decoded text, score = computed here by hand.
    MagnifierBench's sample holds a two-image item (the first image is used) and a no-image item
    (a counted, skipped row scored 0). The tiny model's replies match no generated answer, so every score
    here is 0: test_planted_answers_are_scored_above_zero_by_the_runner checks scores above 0."""
    from flexeval.benchmarks.base import open_image

    root, model_dir, _ = env
    model = load_pretrained(model_dir, dtype="float32", device="cpu")
    hand = {"textvqa": lambda rec: _hand_textvqa(rec["prediction"], rec["target"]),
            "rsvqa_hrben": lambda rec: float(rec["prediction"].strip().lower() == rec["target"].lower()),
            "magnifierbench": lambda rec: _hand_magnifier(rec["prediction"], rec["target"])}
    for name, n in (("magnifierbench", 4), ("textvqa", 2), ("rsvqa_hrben", 1)):
        bench = get_benchmark(name)
        data = bench.make_sample(tmp_path / "data" / name, n=n, seed=2)
        cfg = RunConfig(bench=name, model=str(model_dir), data_dir=data, out=tmp_path / "out", workers=0,
                        quiet=True, batch_size="3", max_new_tokens=3)
        run_benchmarks(cfg)
        recs = _lines(tmp_path / "out" / "tiny" / name / "max-new-tokens-3" / "predictions.jsonl")  # a variant
        samples = {s.id: s for s in bench.load(data)}
        assert [r["id"] for r in recs] == list(samples)
        for rec in recs:
            s = samples[rec["id"]]
            if s.image is None:
                assert rec["skipped"] == "no image" and rec["score"] == 0.0 and "generated_ids" not in rec
                continue
            req = bench.request(s, "paper")
            ids, _ = reference.generate(model, model.prompt_text(req), model.preprocess(open_image(s.image), req.image_mode), 3)
            assert rec["generated_ids"] == ids, (name, s.id)
            assert rec["prediction"] == model.tokenizer.decode(ids).strip()
            assert rec["score"] == pytest.approx(hand[name](rec)), (name, s.id, rec["prediction"])
        if name == "magnifierbench":
            n_images = sorted(s.meta["n_images"] for s in samples.values())
            assert n_images == [0, 1, 1, 2]


def test_planted_answers_are_scored_above_zero_by_the_runner(env, tmp_path):
    """The tiny model's replies score 0 against the generated answers, so scoring is checked here on
    answers planted equal to its replies: a first run gives each TextVQA item's greedy reply; the answers
    of the second run's data are k copies of that reply and 10 - k of a word it is not. Leave-one-out VQA
    accuracy by hand: k = 2 -> (2 x 1/3 + 8 x 2/3) / 10 = 0.6, k = 3 -> (3 x 2/3 + 7 x 1) / 10 = 0.9,
    k = 1 -> (1 x 0 + 9 x 1/3) / 10 = 0.3; accuracy.csv's overall row is their mean, 60.0."""
    root, model_dir, _ = env
    data = get_benchmark("textvqa").make_sample(tmp_path / "data", n=3, seed=2)

    def run(out):
        cfg = RunConfig(bench="textvqa", model=str(model_dir), data_dir=data, out=out, workers=0, quiet=True,
                        batch_size="3", max_new_tokens=3)
        run_benchmarks(cfg)
        return _lines(out / "tiny" / "textvqa" / "max-new-tokens-3" / "predictions.jsonl")

    first = run(tmp_path / "first")
    replies = {r["id"]: r["prediction"] for r in first}
    assert all(r["score"] == 0.0 for r in first) and all(replies.values())  # why answers are planted
    annotations = data / "TextVQA_0.5.1_val.json"
    doc = json.loads(annotations.read_text())
    planted = {}
    for entry, k in zip(doc["data"], (2, 3, 1)):
        reply = replies[str(entry["question_id"])]
        assert reply.strip().lower() != "unplanted"
        entry["answers"] = [reply] * k + ["unplanted"] * (10 - k)
        planted[str(entry["question_id"])] = {2: 0.6, 3: 0.9, 1: 0.3}[k]
    annotations.write_text(json.dumps(doc))
    second = run(tmp_path / "second")
    assert {r["id"]: r["prediction"] for r in second} == replies  # the same greedy replies
    for rec in second:
        assert rec["score"] == pytest.approx(planted[rec["id"]]), rec
        assert rec["score"] == pytest.approx(_hand_textvqa(rec["prediction"], rec["target"]))
    accuracy = (tmp_path / "second" / "tiny" / "textvqa" / "max-new-tokens-3" / "accuracy.csv").read_text()
    overall = next(row for row in csv.DictReader(accuracy.splitlines()) if row["subset"] == "overall")
    # correct = 0.6 + 0.9 + 0.3; stderr = sd(0.6, 0.9, 0.3) / sqrt(3) = 0.3 / sqrt(3)
    assert (float(overall["correct"]), float(overall["accuracy"])) == (pytest.approx(1.8), pytest.approx(60.0))
    assert float(overall["stderr"]) == pytest.approx(100 * 0.3 / 3 ** 0.5, abs=1e-4)
