"""Issue 24, class 8: `torchrun -m flexeval` / `python -m flexeval` started from the folder that holds a
checkout named `flexeval` (with an editable install, the package is found by a meta-path finder, after
the folder on sys.path: the checkout became a namespace package `flexeval`)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import flexeval
import flexeval.benchmarks
import flexeval.model

# An editable install's finder (setuptools' __editable__ finder, reduced): the package is found after
# sys.path's folders, by name.
FINDER = """
import sys
from importlib.machinery import PathFinder
from importlib.util import spec_from_file_location
MAPPING = {mapping!r}
class Finder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname in MAPPING:
            return spec_from_file_location(fullname, MAPPING[fullname] + "/__init__.py",
                                           submodule_search_locations=[MAPPING[fullname]])
        parent = fullname.rpartition(".")[0]
        if parent in MAPPING:
            return PathFinder.find_spec(fullname, path=[MAPPING[parent]])
        return None
sys.meta_path.insert(sys.meta_path.index(PathFinder) + 1, Finder)  # before any other install's finder
import runpy
sys.argv = ["flexeval"] + {args!r}
runpy.run_module("flexeval", run_name="__main__", alter_sys=True)
"""


def test_started_beside_a_checkout_named_flexeval_the_installed_package_runs(tmp_path, release_dir):
    checkout = tmp_path / "flexeval"  # a clone: no __init__.py at its root, a results/ folder of outputs
    for sub in ("results", "flexeval", "model", "benchmarks"):
        (checkout / sub).mkdir(parents=True)
    mapping = {name: str(Path(mod.__file__).parent) for name, mod in
               (("flexeval", flexeval), ("flexeval.benchmarks", flexeval.benchmarks), ("flexeval.model", flexeval.model))}
    args = ["run", "-b", "vstar", "-m", str(release_dir), "-d", str(tmp_path / "nodata"), "--check"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", FINDER.format(mapping=mapping, args=args)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "__version__" not in out, out
    assert res.returncode == 1 and "nodata" in out  # the real CLI ran --check and found the missing data folder


def test_unshadow_drops_only_folders_holding_a_flexeval_without_init(tmp_path):
    from flexeval.__main__ import unshadow

    (tmp_path / "clone" / "flexeval").mkdir(parents=True)
    (tmp_path / "real" / "flexeval").mkdir(parents=True)
    (tmp_path / "real" / "flexeval" / "__init__.py").write_text("")
    path = [str(tmp_path / "clone"), str(tmp_path / "real"), str(tmp_path)]
    namespace = types.ModuleType("flexeval")  # no __file__: a namespace package
    modules = {"flexeval": namespace, "flexeval.results": types.ModuleType("x"), "os": os}
    assert unshadow(path, modules) == [str(tmp_path / "clone")]
    assert path == [str(tmp_path / "real"), str(tmp_path)] and set(modules) == {"os"}
    regular = {"flexeval": flexeval}  # the real package: nothing changes
    assert unshadow(path, regular) == [] and regular == {"flexeval": flexeval}
