"""Results you can trust (issue 14, points 2-7): no run overwrites another's numbers, rescore
refuses a damaged predictions.jsonl, resume by the model's content, strict JSON, messages whose
suggested command works (each one is run here), checks before the model loads, a progress bar
that says what it waits for. Points 1 (image modes) are in test_image_modes.py."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app
from flexeval.errors import FlexEvalError
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.model.tiny import make_tiny_model

cli = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    model_dir = make_tiny_model(root / "demo" / "tiny", seed=0)
    data = get_benchmark("vstar").make_sample(root / "data" / "vstar", n=3, seed=1)
    return root, model_dir, data


def _run(model, data, out, **kw):
    cfg = RunConfig(bench=kw.pop("bench", "vstar"), model=str(model), data_dir=data, out=out, workers=0,
                    quiet=kw.pop("quiet", True), batch_size=kw.pop("batch_size", "4"), **kw)
    return run_benchmarks(cfg)[0]


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _suggested(message: str) -> list[str]:
    """The commands a message suggests, in `backticks`, as argument lists without `flexeval`."""
    cmds = [shlex.split(c) for c in re.findall(r"`([^`]+)`", message)]
    return [c[1:] for c in cmds if c and c[0] == "flexeval"]


def _invoke(args: list[str]):
    r = cli.invoke(app, args)
    return r.exit_code, r.output


# ---- 2. protocols, splits and limited runs never overwrite each other -----------------------------

def test_protocols_splits_and_limits_each_keep_their_own_files(env, tmp_path):
    root, model, data = env
    out = tmp_path / "out"
    full = _run(model, data, out)
    bench_dir = out / "tiny" / "vstar"
    files = {n: (bench_dir / n).read_bytes() for n in ("predictions.jsonl", "accuracy.csv", "run.json")}

    limited = _run(model, data, out, limit=2)
    none = _run(model, data, out, limit=0)
    official = _run(model, data, out, protocol="official", limit=1)
    for n, b in files.items():  # the full default result is untouched
        assert (bench_dir / n).read_bytes() == b, n
    assert full["accuracy"][-1]["n"] == 6 and full["variant"] == ""
    assert limited["timing"]["ran"] == 0 and limited["timing"]["reused"] == 2  # shards are shared
    lim = [json.loads(x) for x in (bench_dir / "limit-2" / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lim] == ["direct_attributes/sa_1", "direct_attributes/sa_2"]
    assert (bench_dir / "limit-0" / "predictions.jsonl").read_bytes() == b"" and none["data"]["evaluated"] == 0
    assert official["protocol"] == "official" and official["timing"]["ran"] == 1
    assert (bench_dir / "protocol-official+limit-1" / "accuracy.csv").read_text().splitlines()[-1].startswith(
        "vstar,overall,1,")
    # A --limit as large as the benchmark is the full run: it is the default folder, all reused.
    again = _run(model, data, out, limit=6)
    assert again["variant"] == "" and again["timing"]["ran"] == 0
    assert (bench_dir / "predictions.jsonl").read_bytes() == files["predictions.jsonl"]

    # The report lists each variant as its own row; rescore finds every folder.
    code, output = _invoke(["report", str(out)])
    assert code == 0, output
    md = (out / "summary.md").read_text()
    assert "| tiny (flexattention)" in md and "| tiny [limit-2] (flexattention)" in md
    assert "| tiny [protocol-official+limit-1] (flexattention)" in md
    code, output = _invoke(["rescore", str(out)])
    assert code == 0 and output.count("rescored ") == 4, output


def test_rsvqa_splits_get_their_own_folders(env, tmp_path):
    root, model, _ = env
    data = get_benchmark("rsvqa_hrben").make_sample(tmp_path / "rsvqa", n=1, seed=0)
    out = tmp_path / "out"
    default = _run(model, data, out, bench="rsvqa_hrben", max_new_tokens=2)
    other = _run(model, data, out, bench="rsvqa_hrben", max_new_tokens=2, split="test1")  # alias of test
    bench_dir = out / "tiny" / "rsvqa_hrben"
    assert default["split"] == "test_phili" and other["split"] == "test"
    a = [json.loads(x)["meta"]["split"] for x in (bench_dir / "max-new-tokens-2" / "predictions.jsonl").open()]
    b = [json.loads(x)["meta"]["split"] for x in
         (bench_dir / "split-test+max-new-tokens-2" / "predictions.jsonl").open()]
    assert set(a) == {"test_phili"} and set(b) == {"test"} and len(a) == len(b) == 2


# ---- 3. rescore refuses a predictions.jsonl that lost records ---------------------------------------

@pytest.mark.parametrize("damage", ["torn last line", "emptied"])
def test_rescore_refuses_a_damaged_file_and_its_command_rebuilds_it(env, tmp_path, damage):
    root, model, data = env
    out = tmp_path / "out"
    _run(model, data, out)
    bench_dir = out / "tiny" / "vstar"
    pred = bench_dir / "predictions.jsonl"
    good_pred, good_acc = pred.read_bytes(), (bench_dir / "accuracy.csv").read_bytes()
    lines = good_pred.splitlines(keepends=True)
    pred.write_bytes(b"".join(lines[:-1]) + lines[-1][:40] if damage == "torn last line" else b"")

    code, output = _invoke(["rescore", str(bench_dir)])
    assert code == 1 and "Traceback" not in output
    assert str(pred) in output.replace("\n", "") or "predictions.jsonl" in output
    assert "says the run evaluated 6" in output
    assert (bench_dir / "accuracy.csv").read_bytes() == good_acc  # nothing rewritten from the damaged file
    message = json.loads((bench_dir / "run.json").read_text())["command"]
    assert message in output.replace("\n", "")
    (cmd,) = _suggested(output.replace("\n", ""))
    code, output = _invoke(cmd)
    assert code == 0, output
    assert pred.read_bytes() == good_pred
    code, output = _invoke(["rescore", str(bench_dir)])
    assert code == 0 and (bench_dir / "accuracy.csv").read_bytes() == good_acc


# ---- 4. resume by the model's content, not by the spelling of --model -----------------------------

def test_resume_does_not_depend_on_how_the_model_is_spelled(env, tmp_path, monkeypatch):
    root, model, data = env
    monkeypatch.chdir(root)
    out = tmp_path / "out"
    first = _run("demo/tiny", data, out)
    assert first["timing"]["ran"] == 6
    for spelling in ("./demo/tiny", "demo/tiny/", str(model.resolve()), "demo/../demo/tiny"):
        run = _run(spelling, data, out)
        assert run["timing"]["ran"] == 0 and run["timing"]["reused"] == 6, spelling
        assert run["config_fingerprint"] == first["config_fingerprint"]
    # A byte-for-byte copy elsewhere is the same model; other weights of the same size are not.
    copy = shutil.copytree(model, tmp_path / "elsewhere" / "tiny")
    assert _run(copy, data, out)["timing"]["ran"] == 0
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # the last byte of the last tensor's data
    weights.write_bytes(bytes(raw))
    from flexeval.results.identity import checkpoint_content

    changed = {r[0]: r for r in checkpoint_content(copy)}["model.safetensors"]
    orig = {r[0]: r for r in checkpoint_content(model)}["model.safetensors"]
    assert changed[1] == orig[1] and changed[2] != orig[2]
    assert _run(copy, data, out)["timing"]["ran"] == 6


# ---- 5. strict JSON -----------------------------------------------------------------------------

def test_non_finite_numbers_are_null_and_named(env, tmp_path):
    from flexeval.results.store import record_line

    line = record_line({"key": "k", "option_nll": [1.5, float("nan"), float("inf")], "x": {"y": float("-inf")}})
    rec = _strict_json(line.decode())
    assert rec["option_nll"] == [1.5, None, None] and rec["x"] == {"y": None}
    assert rec["non_finite_values"] == {"option_nll[1]": "NaN", "option_nll[2]": "Infinity", "x.y": "-Infinity"}

    root, model, data = env
    run = _run(model, data, tmp_path / "out", limit=3)  # relative_position has no item: accuracy NaN
    text = (tmp_path / "out" / "tiny" / "vstar" / "limit-3" / "run.json").read_text()
    parsed = _strict_json(text)
    rows = {r["subset"]: r for r in parsed["accuracy"]}
    assert rows["relative_position"]["n"] == 0 and rows["relative_position"]["accuracy"] is None
    assert parsed["non_finite_values"] == {f"accuracy[1].{k}": "NaN" for k in ("accuracy", "stderr", "ci95_low", "ci95_high")}
    assert run["accuracy"][1]["subset"] == "relative_position"


# ---- 6. every suggested fix works -----------------------------------------------------------------

def test_a_mistyped_local_model_path_is_not_looked_up_on_the_hub(env, monkeypatch):
    root, model, data = env
    monkeypatch.chdir(root)
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("a local path was looked up on the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    args = ["run", "--bench", "vstar", "--data-dir", str(data), "--out", "out", "--workers", "0", "-q"]
    code, output = _invoke(args + ["--model", "demo/tinny"])
    assert code == 1 and "did you mean demo/tiny?" in output and "hub" not in output.split("(")[0]
    code, output = _invoke(args + ["--model", "demo/tiny"])
    assert code == 0, output


def test_a_missing_vision_tower_says_where_to_put_it(env, tmp_path):
    from flexeval.model import load_pretrained

    root, model, _ = env
    ckpt = shutil.copytree(model, tmp_path / "ckpt", ignore=shutil.ignore_patterns("clip-vit-tiny"))
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mm_vision_tower"] = "openai/clip-vit-tiny-test"  # a hub id this offline machine does not have
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FlexEvalError) as e:
        load_pretrained(ckpt, dtype="float32", device="cpu")
    msg = str(e.value)
    assert "vision tower openai/clip-vit-tiny-test" in msg and "--model" not in msg.replace("--model stays", "")
    target = re.search(r"copy its folder \(config.json \+ weights\) to (\S+),", msg).group(1)
    assert Path(target) == ckpt / "clip-vit-tiny-test"
    shutil.copytree(model / "clip-vit-tiny", target)  # the fix the message gives
    assert load_pretrained(ckpt, dtype="float32", device="cpu").vision is not None


def test_a_data_root_given_as_data_dir_gets_the_benchmark_folder(env, tmp_path, monkeypatch):
    root, model, data = env
    base = ["run", "--bench", "vstar", "--model", str(model), "--out", str(tmp_path / "out"), "--workers", "0",
            "-q"]
    code, output = _invoke(base + ["--data-dir", str(root / "data")])
    flat = output.replace("\n", "")
    assert code == 1 and f"give --data-dir {root / 'data' / 'vstar'}" in flat
    code, output = _invoke(base + ["--data-dir", str(root / "data" / "vstar")])
    assert code == 0, output

    # An empty root: the suggested fetch / make-sample write into <root>/vstar, which then runs.
    empty = tmp_path / "data"
    empty.mkdir()
    code, output = _invoke(base + ["--data-dir", str(empty)])
    flat = output.replace("\n", "")
    fetch, make = _suggested(flat)
    assert fetch[:3] == ["data", "fetch", "--bench"] and fetch[-1] == str(empty / "vstar")
    import flexeval.benchmarks.vstar as vstar

    monkeypatch.setattr(vstar, "fetch_dataset", lambda repo, out, **k: shutil.copytree(data, out) and Path(out),
                        raising=False)
    code, output = _invoke(fetch)
    assert code == 0 and (empty / "vstar" / "direct_attributes").is_dir(), output
    shutil.rmtree(empty / "vstar")
    code, output = _invoke(make)
    assert code == 0, output
    # --data-dir <a benchmark folder> runs (shown above); this one now is one: 2 subsets x 6 items.
    assert len(get_benchmark("vstar").load(empty / "vstar")) == 12


def test_a_too_large_image_is_not_called_broken(tmp_path):
    from PIL import Image

    from flexeval.benchmarks.base import open_image

    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    with pytest.raises(FlexEvalError) as e:
        open_image(str(path), max_pixels=1000)  # 4096 px over a 1000 px limit
    msg = str(e.value)
    assert "replace the file" not in msg and "64x64" in msg and "--max-image-pixels" in msg and str(path) in msg
    assert open_image(str(path), max_pixels=10_000).size == (64, 64)  # the fix: raise the limit


def test_the_report_command_printed_after_a_run_works_and_make_demo_agrees(env, tmp_path):
    root, model, data = env
    out = tmp_path / "out"
    code, output = _invoke(["run", "--bench", "vstar", "--model", str(model), "--data-dir", str(data), "--out",
                            str(out), "--workers", "0", "-q"])
    assert code == 0, output
    hint = re.search(r"flexeval report (\S+)", output).group(1)
    code, report = _invoke(["report", hint])
    assert code == 0 and "| tiny (flexattention)" in report
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    run_out = re.search(r"flexeval run .*--out (\S+)", demo).group(1)
    assert re.search(r"flexeval report (\S+)", demo).group(1) == run_out


# ---- 7. friction: checks before the model loads, counts in words, a talking progress bar ------------

@pytest.mark.parametrize("bad, words", [
    ({"batch_size": "lots"}, "--batch-size"),
    ({"limit": -1}, "--limit"),
    ({"split": "test"}, "vstar has no split"),
    ({"protocol": "nope"}, "no protocol 'nope'"),
    ({"selection": "sideways"}, "unknown selection"),
    ({"zoom": 5}, "zoom ratio 5"),
    ({"data_dir": "missing"}, "V* data not found"),
])
def test_options_and_data_are_checked_before_the_model_loads(env, tmp_path, monkeypatch, bad, words):
    import flexeval.model

    root, model, data = env

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(flexeval.model, "load_pretrained", no_load)
    kw = {"data_dir": data, **bad}
    if kw["data_dir"] == "missing":
        kw["data_dir"] = tmp_path / "missing"
    with pytest.raises(FlexEvalError, match=re.escape(words)):
        _run(model, kw.pop("data_dir"), tmp_path / "out", **kw)


def test_counts_are_a_sentence_and_the_bar_says_what_it_waits_for(env, tmp_path, capsys):
    root, model, data = env
    _run(model, data, tmp_path / "out", quiet=False, batch_size="2")
    err = capsys.readouterr().err
    count_line = next(line for line in err.splitlines() if "published" in line)
    assert "{" not in count_line and "loaded 6 items; the published release has 191" in count_line
    assert "direct_attributes 3 of 115, relative_position 3 of 76" in count_line
    steps = ["starting the image decoders", "first batch: 1/2 images decoded",
             "model: first batch of 2", "6/6"]
    where = [err.find(s) for s in steps]
    assert -1 not in where and where == sorted(where), list(zip(steps, where))
