"""The CLI's shared parts (flexeval/cli_common.py): one error path for every command, --model-args,
one spelling of the new-token limit."""

from __future__ import annotations

import errno

import pytest
from typer.testing import CliRunner

from flexeval.cli import app
from flexeval.cli_common import MODEL_KNOBS, one_error_path


def _commands(typer_app, path=("flexeval",)):
    """(path, the function typer calls) of every command and group callback, recursively."""
    found = [(path + (info.name or info.callback.__name__.replace("_", "-"),), info.callback)
             for info in typer_app.registered_commands]
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub.registered_callback is not None:
            found.append((path + (group.name, "<callback>"), sub.registered_callback.callback))
        found += _commands(sub, path + (group.name,))
    return found


def test_every_command_and_callback_runs_inside_the_one_error_path():
    found = _commands(app)
    names = {" ".join(p[1:]) for p, _ in found}
    assert {"run", "compare", "speed", "grounding <callback>", "grounding score", "data fetch",
            "model make-tiny"} <= names and len(found) >= 14
    unwrapped = [" ".join(p) for p, f in found if getattr(f, "error_path", None) is not one_error_path]
    assert unwrapped == []


@pytest.mark.parametrize("args, message", [
    (["rescore", "{tmp}/nowhere"], "nowhere"),
    (["data", "make-sample", "--bench", "nosuchbench", "--out", "{tmp}/d"], "nosuchbench"),
    (["model", "make-tiny", "--out", "{tmp}/m", "--format", "nosuchformat"], "nosuchformat"),
    (["grounding", "--model", "m"], "needs --model M and --data-dir D"),
    (["grounding", "score", "--questions", "{tmp}/q.json", "--scenes", "{tmp}/s.json", "--attentions",
      "{tmp}/a.json"], "q.json"),
    (["attention", "--model", "m"], "give either --image"),
    (["speed", "--new-tokens", "3"], "--new-tokens is now --max-new-tokens"),
    (["inspect", "--image", "x.png", "--prompt", "p"], "needs --model M (or --model-args pretrained=M)"),
])
def test_a_user_error_is_one_line_and_exit_1_in_every_kind_of_command(tmp_path, args, message):
    r = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def _raising(exc):
    def fake(*args, **kwargs):
        raise exc
    return fake


def test_ctrl_c_disk_full_and_bugs(monkeypatch, tmp_path):
    import flexeval.results.report as report

    monkeypatch.setattr(report, "write_report", _raising(KeyboardInterrupt()))
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 130 and r.output.startswith("interrupted: ") and "run the same command again" in r.output
    monkeypatch.setattr(report, "write_report", _raising(OSError(errno.ENOSPC, "No space left on device", "x.csv")))
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 1 and r.output.startswith("error: cannot write x.csv (No space left on device)")
    monkeypatch.setattr(report, "write_report", _raising(OSError(errno.EIO, "I/O error")))  # not the user's: a traceback
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert isinstance(r.exception, OSError) and r.exception.errno == errno.EIO


@pytest.fixture
def captured_run(monkeypatch):
    """`flexeval run` up to its RunConfig (the run itself is not started)."""
    import flexeval.evaluate as evaluate

    seen = []
    monkeypatch.setattr(evaluate, "run_benchmarks", lambda cfg: seen.append(cfg))

    def invoke(*args):
        r = CliRunner().invoke(app, ["run", "--bench", "vstar", *args])
        return r, (seen[-1] if seen else None)
    return invoke


def test_model_args_set_the_model_flags_as_lm_eval_users_type_them(captured_run):
    r, cfg = captured_run("--model-args", "pretrained=ckpt/x,dtype=float16,selection=random,first_layer=5,"
                          "threshold=30.5,zoom=3,trust_remote_code=true,max_pixels=1000,batch_size=2,seed=7,"
                          "model_kind=hf,recipe=native,device=cpu,min_pixels=10")
    assert r.exit_code == 0, r.output
    assert (cfg.model, cfg.dtype, cfg.selection, cfg.first_layer, cfg.threshold, cfg.zoom) == \
        ("ckpt/x", "float16", "random", 5, 30.5, 3)
    assert (cfg.trust_remote_code, cfg.max_pixels, cfg.min_pixels, cfg.batch_size, cfg.seed) == (True, 1000, 10, "2", 7)
    assert (cfg.model_kind, cfg.recipe, cfg.device) == ("hf", "native", "cpu")
    # a flag repeated with the same value is no conflict; untouched flags keep their values
    r, cfg = captured_run("--dtype", "float16", "--zoom", "2", "--model-args", "dtype=float16")
    assert r.exit_code == 0 and (cfg.dtype, cfg.zoom, cfg.selection) == ("float16", 2, None)


@pytest.mark.parametrize("spec, flags, message", [
    ("zoomm=3", [], "unknown key 'zoomm' for `flexeval run`; valid keys: batch_size, device, dtype, first_layer, "
                    "max_pixels, min_pixels, model_kind, pretrained, recipe, seed, selection, threshold, "
                    "trust_remote_code, zoom"),
    ("first_layer=nine", [], "--model-args first_layer=nine: Invalid value for '--first-layer': Input should be a valid integer"),
    ("dtype=float16", ["--dtype", "bfloat16"], "--model-args dtype=float16 contradicts --dtype bfloat16"),
    ("pretrained=a", ["--model", "b"], "contradicts --model b"),
    ("dtype", [], "'dtype' is not key=value"),
    ("seed=1,seed=2", [], "seed is given twice"),
])
def test_model_args_are_checked_like_the_flags(captured_run, spec, flags, message):
    r, cfg = captured_run(*flags, "--model-args", spec)
    assert r.exit_code == 1 and cfg is None
    assert r.output.startswith("error: ") and message in r.output, r.output


def test_model_args_of_a_command_are_its_own_flags():
    r = CliRunner().invoke(app, ["attention", "--model-args", "zoom=3"])
    assert r.exit_code == 1
    assert "valid keys: device, dtype, pretrained, selection" in r.output, r.output
    assert set(MODEL_KNOBS) >= {"selection", "threshold", "first_layer", "zoom", "dtype", "device", "recipe"}


def test_one_spelling_of_the_new_token_limit_in_every_help():
    for command in ("run", "inspect", "attention", "speed"):
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert "--max-new-tokens" in text and "--new-tokens " not in text, command
    assert "--model-args" in CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output


def test_gen_kwargs_max_new_tokens_is_the_same_setting(captured_run):
    r, cfg = captured_run("--gen-kwargs", "max_new_tokens=7")
    assert r.exit_code == 0 and cfg.max_new_tokens == 7
    r, _ = captured_run("--max-new-tokens", "5", "--gen-kwargs", "max_new_tokens=7")
    assert r.exit_code == 1 and "disagree" in r.output

