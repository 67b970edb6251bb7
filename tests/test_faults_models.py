"""Issue 24, classes 2 and 3: the run and `run --check` say the same thing about a checkpoint, whichever
code (FlexLlava or transformers) serves it; an original-format checkpoint never falls through to
transformers and says why it cannot run natively."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-models"), n=1, seed=2)


def _cli(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, " ".join(res.output.split())


def _run_and_check(model: Path, data: Path, out: Path, *extra) -> tuple[str, str]:
    """(the run's error, the problems --check lists), each without its framing."""
    args = ["run", "-b", "vstar", "-m", model, "-d", data, "-o", out, "--workers", "0", "-q", *extra]
    code, run_out = _cli(args)
    assert code == 1 and "Traceback" not in run_out, run_out
    code, check_out = _cli([*args, "--check"])
    assert code == 1, check_out
    return run_out, check_out


def _edit_config(src: Path, dest: Path, **changes) -> Path:
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize("change, field", [
    ({"mm_patch_merge_type": "spatial_unpad"}, "mm_patch_merge_type"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"image_aspect_ratio": "anyres"}, "image_aspect_ratio"),
    ({"extra": {"zoom_ratio": "3", "nosuch": 1}}, "extra"),
    ({"extra": {"zoom_ratio": "7"}}, "extra.zoom_ratio"),
])
def test_an_unparsable_release_config_gives_the_same_message_in_run_and_check(release_dir, data, tmp_path,
                                                                             change, field):
    bad = _edit_config(release_dir, tmp_path / "bad", **change)
    run_out, check_out = _run_and_check(bad, data, tmp_path / "out")
    assert f"{field} = " in run_out and "processor_class" not in run_out
    message = run_out.split("error: ", 1)[1]
    assert message in check_out  # --check lists the very same sentence


@pytest.mark.parametrize("extra", [["--recipe", "native"], ["--model-kind", "hf"]])
def test_native_on_the_release_checkpoint_says_it_cannot_and_why(release_dir, data, tmp_path, extra):
    run_out, check_out = _run_and_check(release_dir, data, tmp_path / "out", *extra)
    assert f"{extra[0]} {extra[1]}: " in run_out and "FlexAttention release checkpoint" in run_out
    assert "cannot run natively" in run_out and "transformers has no model class" in run_out
    assert run_out.split("error: ", 1)[1] in check_out
    # the fix it names works: without --recipe/--model-kind the run starts (the check passes)
    code, ok = _cli(["run", "-b", "vstar", "-m", release_dir, "-d", data, "-o", tmp_path / "out", "--check"])
    assert code == 0 and "no problems found" in ok


def _break(folder: Path, damage: str) -> None:
    weights = folder / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "no tokenizer_config":
        (folder / "tokenizer_config.json").unlink()
    elif damage == "no image processor":
        (folder / "preprocessor_config.json").unlink()
    elif damage == "garbage tokenizer.json":
        (folder / "tokenizer.json").write_bytes(b"\xff\xfe garbage")
    elif damage == "NaN weights":
        sd = load_file(str(weights))
        name = sorted(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 4)[3]
        sd[name] = sd[name].clone()
        sd[name].view(-1)[1] = float("nan")
        save_file(sd, str(weights), metadata={"format": "pt"})


@pytest.mark.parametrize("damage, words", [
    ("truncated weights", "lie beyond the file's"),
    ("no tokenizer", "tokenizer files of"),
    ("no tokenizer_config", "tokenizer_config.json not found"),
    ("no image processor", "image processor settings of"),
    ("garbage tokenizer.json", "tokenizer.json: not valid JSON"),
    ("NaN weights", "hold NaN or inf as float32"),
])
def test_the_transformers_path_has_flexllavas_checkpoint_checks(hf_dirs, data, tmp_path, damage, words):
    folder = shutil.copytree(hf_dirs["qwen2-vl"], tmp_path / "qwen")
    _break(folder, damage)
    run_out, check_out = _run_and_check(folder, data, tmp_path / "out", "--dtype", "float32")
    assert words in run_out and words in check_out
    assert f"checkpoint {folder}" in run_out  # FlexLlava's framing: "checkpoint <folder>: N problem(s)"


def test_flexllava_and_transformers_word_a_truncated_file_alike(release_dir, hf_dirs, tmp_path):
    from flexeval.model.checks import header_problems
    from flexeval.model.hf_checks import hf_file_problems

    for src in (release_dir, hf_dirs["qwen2-vl"]):
        folder = shutil.copytree(src, tmp_path / Path(src).name)
        _break(folder, "truncated weights")
        flex = header_problems([folder / "model.safetensors"])
        assert flex and set(flex) <= set(hf_file_problems(folder))


@pytest.mark.parametrize("budget, words", [
    (["--max-pixels", "100"], "is below the smallest image"),
    (["--min-pixels", "5000", "--max-pixels", "4000"], "min 5000 > max 4000"),
    (["--max-pixels", "784"], "min 3136 > max 784"),
    (["--min-pixels", "-5"], "--min-pixels -5 must be a positive number of pixels"),
])
def test_a_pixel_budget_the_processor_cannot_honour_is_refused_and_its_fix_runs(hf_dirs, data, tmp_path,
                                                                                budget, words):
    import re

    args = ["run", "-b", "vstar", "-m", hf_dirs["qwen2-vl"], "-d", data, "-o", tmp_path, "--workers", "0", "-q",
            "--dtype", "float32"]
    code, out = _cli(args + budget)
    assert code == 1 and words in out, out
    fix = re.search(r"give (--m\w+-pixels \d+)", out)
    if fix is None:
        return  # a negative number: no number to suggest
    flag, value = fix.group(1).split()
    fixed = dict(zip(budget[::2], budget[1::2])) | {flag: value}
    code, out = _cli(args + [x for kv in fixed.items() for x in kv])
    assert code == 0, out  # the fix it names runs
