"""Issue 24, class 5: every command a message suggests is run here, and it works."""

from __future__ import annotations

import errno
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app


def _cli(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res.exit_code, " ".join(res.output.split())


def _commands(message: str) -> list[list[str]]:
    return [shlex.split(c) for c in re.findall(r"`([^`]+)`", message)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-sugg"), n=1, seed=6)


def test_attention_has_the_max_image_pixels_its_message_suggests(release_dir, tmp_path):
    image = tmp_path / "wide.png"
    Image.new("RGB", (120, 40), (200, 30, 30)).save(image)
    args = ["attention", "-m", release_dir, "--image", image, "--prompt", "what colour?", "--out",
            tmp_path / "map.png", "--layers", "1", "--max-new-tokens", "2"]
    code, out = _cli(args + ["--max-image-pixels", 1000])
    assert code == 1 and "120x40" in out and "raise --max-image-pixels" in out
    code, out = _cli(args + ["--max-image-pixels", 120 * 40])  # the option it names, raised to the image's size
    assert code == 0 and (tmp_path / "map.png").is_file(), out


@pytest.fixture(scope="module")
def overflow_model(release_dir, tmp_path_factory) -> Path:
    """Finite weights whose logits overflow float32: every NLL is NaN/inf."""
    out = shutil.copytree(release_dir, tmp_path_factory.mktemp("overflow") / "tiny")
    sd = load_file(str(out / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    sd["lm_head.weight"] = 3e38 * torch.randn(sd["lm_head.weight"].shape, generator=g).sign()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_the_float32_non_finite_stop_suggests_what_works(overflow_model, data, tmp_path):
    args = ["run", "-b", "vstar", "-m", overflow_model, "-d", data, "-o", tmp_path, "--workers", "0", "-q",
            "--dtype", "float32"]
    code, out = _cli(args + ["--max-non-finite", "0"])
    assert code == 1 and "no --dtype helps" in out and "run --check" not in out
    code, check = _cli(args + ["--check"])  # what it used to suggest: passes, so it was no fix
    assert code == 0 and "no problems found" in check
    limit = re.search(r"rerun with --max-non-finite (\d+)", out)
    assert limit is not None, out
    code, out = _cli(args + ["--max-non-finite", limit.group(1)])
    assert code == 0 and "gave NaN/inf outputs and count as wrong" in out


@pytest.mark.parametrize("command", ["report", "rescore"])
def test_report_and_rescore_in_a_folder_they_cannot_write(release_dir, data, tmp_path, monkeypatch, command):
    results = tmp_path / f"res-{tmp_path.name}"
    code, out = _cli(["run", "-b", "vstar", "-m", release_dir, "-d", data, "-o", results, "--workers", "0", "-q"])
    assert code == 0, out
    from flexeval.results import store

    real = store.write_bytes_atomic

    def read_only(path, data_bytes):  # root ignores chmod: refuse writes under `results` as a read-only mount does
        if Path(path).resolve().is_relative_to(results.resolve()):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, data_bytes)

    monkeypatch.setattr(store, "write_bytes_atomic", read_only)
    code, out = _cli([command, results])
    assert code == 1 and "cannot write" in out and "Permission denied" in out
    cmds = _commands(out)
    assert [c[0] for c in cmds] == ["cp", "flexeval"] and cmds[1][1] == command
    copy = Path(cmds[0][-1])
    try:
        subprocess.run(cmds[0], check=True)
        code, again = _cli(cmds[1][1:])
        assert code == 0, again
        written = copy / "summary.md" if command == "report" else next(copy.rglob("accuracy.csv"))
        assert written.is_file()
    finally:
        shutil.rmtree(copy, ignore_errors=True)
