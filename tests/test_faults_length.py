"""Issue 24, class 4: every prompt and option is checked against the model's positions before it runs;
an item over them is a counted, reported skipped row (chosen over an error: one overlong item is that
item's problem, like an over-limit image), and a giant text is refused without tokenising it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flexeval.benchmarks import get_benchmark
from flexeval.evaluate import RunConfig, run_benchmarks


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-len"), n=2, seed=8)


def _edit(data: Path, dest: Path, name: str, **fields) -> Path:
    copy = dest if dest.exists() else shutil.copytree(data, dest)
    js = next(copy.rglob(name))
    item = json.loads(js.read_text())
    item.update(fields)
    js.write_text(json.dumps(item))
    return copy


def _records(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}


def test_overlong_questions_and_options_are_counted_skipped_rows(release_dir, data, tmp_path, capfd, monkeypatch):
    files = sorted(p.name for p in data.rglob("*.json"))
    long_data = _edit(data, tmp_path / "d", files[0], question="word " * 1500)  # ~ 6k positions with the image
    _edit(data, long_data, files[1], options=["red", "blue " * 2000])
    _edit(data, long_data, files[2], question="x" * 2_000_000)  # refused without tokenising 2 MB
    cfg = RunConfig(bench="vstar", model=str(release_dir), data_dir=long_data, out=tmp_path / "o", workers=0,
                    quiet=True, tag="t", batch_size="2")
    run = run_benchmarks(cfg)[0]
    recs = _records(tmp_path / "o" / "t" / "vstar")
    skipped = {i: r["skipped"] for i, r in recs.items() if r.get("skipped")}
    assert len(skipped) == 3 and run["stats"]["skipped"] == 3
    assert sum(run["stats"]["skipped_per_subset"].values()) == 3
    texts = sorted(skipped.values())
    assert sum("over the model's max_position_embeddings 4096" in t for t in texts) == 2
    assert sum("2000" in t and "characters" in t for t in texts) == 1  # the 2 MB question: by its length
    assert all(r["score"] == 0 for r in recs.values() if r.get("skipped"))
    assert len([r for r in recs.values() if not r.get("skipped")]) == len(recs) - 3
    assert "items were not run and count as wrong" in capfd.readouterr().err
    # the rerun looks again (a skipped row is no cached result) and asks the model nothing
    from flexeval.model.flex_llava import FlexLlava

    monkeypatch.setattr(FlexLlava, "choose", lambda *a, **k: pytest.fail("the model ran an overlong item"))
    again = run_benchmarks(cfg)[0]
    assert again["timing"]["ran"] == 3 and again["stats"]["skipped"] == 3
    assert _records(tmp_path / "o" / "t" / "vstar") == recs


def test_the_limit_is_the_checkpoints_and_a_short_item_passes(release_dir):
    from flexeval.model import load_pretrained
    from flexeval.model.conversation import llava_v1_prompt
    from flexeval.model.length import length_problem, max_positions
    from flexeval.requests import Generate

    model = load_pretrained(release_dir, dtype="float32", device="cpu")
    limit = max_positions(model)
    assert limit == json.loads((Path(release_dir) / "config.json").read_text())["max_position_embeddings"]
    q = "What is the colour of the bag?"
    assert length_problem(model, Generate(question=q, max_new_tokens=16), limit) is None
    n_prompt = len(model.tokenizer.encode_prompt(llava_v1_prompt(q))) - 1 + 576
    fits = Generate(question=q, max_new_tokens=limit - n_prompt)
    assert length_problem(model, fits, limit) is None  # exactly at the limit: runs
    over = Generate(question=q, max_new_tokens=limit - n_prompt + 1)
    assert f"needs {limit + 1} positions" in length_problem(model, over, limit)


@pytest.mark.parametrize("command", ["inspect", "attention"])
def test_an_overlong_prompt_typed_on_the_command_line_is_an_error(release_dir, data, tmp_path, command):
    from typer.testing import CliRunner

    from flexeval.cli import app

    image = next(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    args = [command, "-m", str(release_dir), "--image", str(image), "--prompt", "word " * 1500]
    args += ["--out", str(tmp_path / "a.png")] if command == "attention" else []
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--prompt: the item needs" in res.output and "max_position_embeddings 4096" in res.output
    assert not (tmp_path / "a.png").exists()
