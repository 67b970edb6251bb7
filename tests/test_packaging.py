"""The package as users install it: pyproject packages every folder, and a non-editable install
(`pip install .`, no network) runs the demo from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "flexeval", "benchmarks", "model")


def _setuptools() -> dict:
    tomllib = pytest.importorskip("tomllib")  # the standard library from Python 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    """Every folder holding Python files under the three package roots, as its import name."""
    found = set()
    for name, folder in _setuptools()["package-dir"].items():
        for d in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            if d.name == "__pycache__" or not any(d.glob("*.py")):
                continue
            rel = d.relative_to(ROOT / folder).parts
            if name == "flexeval" and rel and rel[0] in ("benchmarks", "model"):
                continue
            found.add(".".join((name, *rel)))
    return found


def test_pyproject_packages_every_folder_with_python_files():
    listed = set(_setuptools()["packages"])
    on_disk = _packages_on_disk()
    assert {"flexeval.results", "flexeval.analysis", "flexeval.speed", "flexeval.model"} <= on_disk
    assert listed == on_disk, f"add {sorted(on_disk - listed)} / drop {sorted(listed - on_disk)} in pyproject.toml"
    for name in on_disk:  # a folder without __init__.py would be a namespace package setuptools skips
        folder = _setuptools()["package-dir"].get(name) or ROOT.joinpath(*name.split("."))
        folder = ROOT / folder if not Path(folder).is_absolute() else folder
        assert (folder / "__init__.py").is_file(), name


def test_a_non_editable_install_runs_the_demo_outside_the_checkout(tmp_path, release_dir):
    """`pip install --target` (no network, no build isolation), then, from a folder outside the checkout
    with only the install on PYTHONPATH: every module imports from the install, and `python -m flexeval
    run` (runpy, as -m runs it, in the same process: one torch import) evaluates the tiny model."""
    pytest.importorskip("setuptools")
    from flexeval.benchmarks import get_benchmark

    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    src.mkdir()
    work.mkdir()
    for name in SOURCES:  # a copy: the build writes build/ and *.egg-info next to the sources
        from_path = ROOT / name
        if from_path.is_dir():
            shutil.copytree(from_path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(from_path, src / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
           "--target", str(site), str(src)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    get_benchmark("vstar").make_sample(work / "data", n=1)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLEXEVAL_WT")}
    env |= {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = (
        "import importlib, json, pkgutil, runpy, sys, flexeval\n"
        "names = [m.name for m in pkgutil.walk_packages(flexeval.__path__, 'flexeval.')]\n"
        "files = {n: importlib.import_module(n).__file__ for n in ['flexeval', *names]}\n"
        "open('modules.json', 'w').write(json.dumps(files))\n"
        f"sys.argv = ['flexeval', 'run', '--bench', 'vstar', '--model', {str(release_dir)!r}, '--tag', 'tiny',\n"
        "            '--data-dir', 'data', '--out', 'results', '--workers', '0', '--quiet']\n"
        "runpy.run_module('flexeval', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    files = json.loads((work / "modules.json").read_text())
    assert {"flexeval.results.store", "flexeval.speed.measure", "flexeval.analysis.grounding",
            "flexeval.model.checks", "flexeval.benchmarks.vstar", "flexeval.cli_common"} <= set(files)
    outside = [n for n, f in files.items() if not Path(f).resolve().is_relative_to(site.resolve())]
    assert outside == []
    bench_dir = work / "results" / "tiny" / "vstar"
    records = [json.loads(x) for x in (bench_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["subset"] for r in records} == {"direct_attributes", "relative_position"}
    assert (bench_dir / "accuracy.csv").read_text().splitlines()[-1].startswith("vstar,overall,2,")
