"""Plugins: the README's complete plugin, built and installed from a temporary folder, is listed
with its package and runs (its benchmark on the tiny model, its model on a TSV file)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from flexeval.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(first_line: str) -> str:
    """The fenced block of the README whose first line is `first_line`."""
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", README.read_text(), flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no block starting with {first_line!r}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the README plugin into a folder (no network, no dependencies)."""
    root = tmp_path_factory.mktemp("plugin")
    src, target = root / "src", root / "site"
    src.mkdir()
    (src / "flexeval_colors.py").write_text(readme_block("# flexeval_colors.py"))
    (src / "pyproject.toml").write_text(readme_block("# pyproject.toml"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.fixture
def plugin_path(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    yield installed
    sys.modules.pop("flexeval_colors", None)


def _pngs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for color in ("red", "blue", "green"):
        Image.new("RGB", (40, 30), color).save(folder / f"{color}.png")
    return folder


def test_list_shows_the_plugins_and_their_package(plugin_path):
    r = CliRunner().invoke(app, ["list"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    colors = next(line for line in lines if line.strip().startswith("colors "))
    assert "plugin flexeval-colors 0.1 (flexeval_colors:Colors)" in colors
    red = next(line for line in lines if line.strip().startswith("always_red "))
    assert "plugin flexeval-colors 0.1 (flexeval_colors:AlwaysRed)" in red


def test_plugin_benchmark_and_model_run(plugin_path, tmp_path, release_dir):
    data, out = _pngs(tmp_path / "pngs"), tmp_path / "out"
    r = CliRunner().invoke(app, ["run", "--bench", "colors", "--data-dir", str(data), "--model-kind", "always_red",
                                 "--model", "anything", "--out", str(out), "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    folder = out / "anything" / "colors"
    preds = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [(p["id"], p["prediction"], p["score"]) for p in preds] == [
        ("blue", "red", 0.0), ("green", "red", 0.0), ("red", "red", 1.0)]
    run = json.loads((folder / "run.json").read_text())
    assert run["model"]["kind"] == "plugin:always_red" and run["model"]["distribution"] == "flexeval-colors 0.1"
    assert (folder / "accuracy.csv").read_text().splitlines()[-1].split(",")[1:4] == ["overall", "3", "1"]
    # the plugin benchmark on a real (tiny) model, and a rerun that reuses everything
    args = ["run", "--bench", "colors", "--data-dir", str(data), "--model", str(release_dir), "--out", str(out),
            "--workers", "0", "-q"]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "3 already done, 0 to run" in again.output


def test_plugin_model_on_a_tsv_file(plugin_path, tmp_path):
    from tests.test_file_benchmarks import mcq_rows, write_tsv

    path = write_tsv(tmp_path / "data" / "quiz.tsv", mcq_rows(tmp_path / "data"))
    r = CliRunner().invoke(app, ["run", "--bench", str(path), "--model-kind", "always_red", "--model", "m",
                                 "--out", str(tmp_path / "out"), "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    preds = [json.loads(x) for x in (tmp_path / "out" / "m" / "quiz" / "predictions.jsonl").read_text().splitlines()]
    # always_red scores each option by its length: the shortest (first of equals) is chosen
    shortest = ["ABCDE"[min(range(len(p["options"])), key=lambda k: (len(p["options"][k]), k))] for p in preds]
    assert shortest == ["A", "A", "B", "B"]  # red | left | red (of blue, red, ...) | red (of green, red)
    assert [p["parsed"] for p in preds] == shortest
    assert [p["score"] for p in preds] == [1.0, 0.0, 0.0, 0.0]  # the answers are A, B, E, A
    r = CliRunner().invoke(app, ["run", "--check", "--bench", str(path), "--model-kind", "always_red", "--model", "m",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0 and "quiz: 4 items in" in r.output and "model plugin always_red" in r.output, r.output
    r = CliRunner().invoke(app, ["run", "--bench", str(path), "--model-kind", "nosuch", "--model", "m"])
    assert r.exit_code == 1 and "--model-kind nosuch: no such kind" in r.output and "always_red" in r.output
