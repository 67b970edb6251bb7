"""Issue 24, classes 7 and 8: a typo is an error that names the option and the fix (never a run that
records it, never a traceback), and one setting spelled two ways is one folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.results.report import MIN_DELTA_N, summary_markdown


def _cli(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output and not isinstance(res.exception, (AttributeError, TypeError)), res.output
    return res.exit_code, " ".join(res.output.split())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("typo-data")
    for name in ("vstar", "rsvqa_hrben"):
        get_benchmark(name).make_sample(root / name, n=1, seed=4)
    return root


def test_a_protocol_no_benchmark_has_is_an_error_with_bench_all(release_dir, root, tmp_path):
    code, out = _cli(["run", "-b", "vstar,rsvqa_hrben", "-m", release_dir, "-d", root, "-o", tmp_path, "--protocol",
                      "nosuch", "--check"])
    assert code == 1 and "--protocol 'nosuch': no benchmark of this run has it" in out and "paper" in out
    assert not (tmp_path / Path(release_dir).name).exists()


def test_offset_past_the_end_is_an_error_naming_the_range(release_dir, root, tmp_path):
    n = len(get_benchmark("vstar").load(root / "vstar"))
    code, out = _cli(["run", "-b", "vstar", "-m", release_dir, "-d", root / "vstar", "-o", tmp_path,
                      "--offset", n, "--workers", "0"])
    assert code == 1 and f"--offset {n} is past the end: vstar has {n} item(s); give --offset 0..{n - 1}" in out
    code, out = _cli(["run", "-b", "vstar", "-m", release_dir, "-d", root / "vstar", "-o", tmp_path,
                      "--offset", n - 1, "--workers", "0", "-q"])
    assert code == 0, out  # the last valid offset runs


def _cfg(model, data, out, **kw) -> RunConfig:
    return RunConfig(bench=kw.pop("bench", "vstar"), model=str(model), data_dir=data, out=out, workers=0,
                     quiet=True, **kw)


def test_two_spellings_of_a_dtype_are_one_folder(release_dir, root, tmp_path):
    a = run_benchmarks(_cfg(release_dir, root / "vstar", tmp_path, dtype="bf16"))[0]
    b = run_benchmarks(_cfg(release_dir, root / "vstar", tmp_path, dtype="BFloat16"))[0]
    assert a["model"]["tag"] == b["model"]["tag"] == f"{Path(release_dir).name}-bfloat16"
    assert b["timing"]["ran"] == 0 and a["config"]["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [f"{Path(release_dir).name}-bfloat16"]


def test_an_explicit_default_generation_length_is_the_default_folder(release_dir, root, tmp_path):
    kw = {"bench": "rsvqa_hrben", "tag": "t"}
    default = run_benchmarks(_cfg(release_dir, root / "rsvqa_hrben", tmp_path, **kw))[0]
    same = run_benchmarks(_cfg(release_dir, root / "rsvqa_hrben", tmp_path, max_new_tokens=16, **kw))[0]
    other = run_benchmarks(_cfg(release_dir, root / "rsvqa_hrben", tmp_path, max_new_tokens=3, **kw))[0]
    assert default["variant"] == same["variant"] == "" and same["timing"]["ran"] == 0
    assert other["variant"] == "max-new-tokens-3"
    assert sorted(p.name for p in (tmp_path / "t" / "rsvqa_hrben").iterdir() if p.is_dir()) == [
        "max-new-tokens-3", "shards"]


def _entry(n: int, accuracy: float) -> dict:
    rows = [{"benchmark": "vstar", "subset": s, "n": n, "accuracy": accuracy}
            for s in ("direct_attributes", "relative_position", "overall")]
    return {"tag": f"run{n}", "kind": "flexattention", "bench": "vstar", "protocol": "paper", "rows": rows}


def test_no_difference_to_the_paper_for_a_tiny_run(tmp_path):
    md = summary_markdown([_entry(2, 100.0), _entry(MIN_DELTA_N, 60.0)])
    assert "Δ run2 " not in md  # 2 items: no Δ row at all
    delta = next(line for line in md.splitlines() if line.startswith(f"| Δ run{MIN_DELTA_N} "))
    assert "+5.5" in delta  # 60.0 - 54.5 (the paper's V* overall), shown from n = MIN_DELTA_N on
    assert f"at least {MIN_DELTA_N} items" in md


def test_grounding_without_images_is_an_error_not_zero_scores(tmp_path):
    gqa = get_benchmark("gqa")
    data = gqa.make_sample(tmp_path / "gqa", n=2, seed=0)
    assert len(gqa.load(data)) > 0
    shutil.rmtree(data / "images")
    code, out = _cli(["grounding", "-m", tmp_path / "nomodel", "-d", data, "--out", tmp_path / "g"])
    assert code == 1 and "none of the" in out and "images.zip" in out


@pytest.mark.parametrize("args, words", [
    (["run", "-b", "vstar", "-m", "{model}", "-d", "{data}", "-o", "{out}", "--device", "nosuch"],
     "--device 'nosuch' is not a device; choose auto, cpu, cuda or cuda:N"),
    (["run", "-b", "vstar", "-m", "{model}", "-d", "{data}", "-o", "{out}", "--dtype", "bf17"],
     "--dtype 'bf17' is not a dtype"),
    (["run", "-b", "vstar", "-m", "{model}", "-d", "{data}", "-o", "{out}", "--max-new-tokens", "-3"],
     "--max-new-tokens must be at least 1, not -3"),
    (["inspect", "-m", "{model}", "--image", "{image}", "--prompt", "q", "--max-new-tokens", "-3"],
     "--max-new-tokens must be at least 1, not -3"),
    (["inspect", "-m", "{model}", "--image", "{image}", "--prompt", "q", "--device", "nosuch"],
     "--device 'nosuch' is not a device"),
    (["attention", "-m", "{model}", "--image", "{image}", "--prompt", "q", "--out", "{out}/a.png",
      "--max-new-tokens", "-2"], "--max-new-tokens must be at least 1, not -2"),
    (["data", "make-sample", "-b", "vstar", "--out", "{out}/d", "--n", "0"], "--n must be at least 1, not 0"),
    (["data", "make-sample", "-b", "vstar", "--out", "{file}/d"], "is not a folder; choose another --out"),
    (["model", "make-tiny", "--out", "{file}/m"], "is not a folder; choose another --out"),
    (["attention-check", "--out", "{file}/a.png"], "is not a folder; choose another --out"),
    (["speed", "--arch", "tiny", "--out", "{file}/s"], "is not a folder; choose another --out"),
    (["grounding", "-m", "{model}", "-d", "{data}", "--out", "{file}/g"], "is not a folder"),
    (["run", "-b", "vstar", "-m", "{model}", "-d", "{data}", "-o", "{file}/r"], "is not a folder"),
    (["attention", "-m", "{model}", "--image", "{image}", "--prompt", "q", "--out", "{file}/a.png"],
     "is not a folder"),
])
def test_bad_values_and_blocked_output_paths_are_one_line_errors(release_dir, root, tmp_path, args, words):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    image = next(p for p in (root / "vstar").rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    values = {"model": release_dir, "data": root / "vstar", "out": tmp_path / "o", "file": blocker, "image": image}
    code, out = _cli([a.format(**{k: str(v) for k, v in values.items()}) for a in args])
    assert code == 1 and words in out, out
    assert blocker.read_text() == "x"
    assert json.dumps(out)  # one printable line of text
