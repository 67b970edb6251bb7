"""The package boundaries, read from the source: model/ never imports the benchmarks, benchmarks/
never import the model (the runner is the only place that knows both), and the tiny model's
template text is the model's template around the benchmarks' wording."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"flexeval.model": ROOT / "model", "flexeval.benchmarks": ROOT / "benchmarks"}
FORBIDDEN = {"flexeval.model": "flexeval.benchmarks", "flexeval.benchmarks": "flexeval.model"}


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` imports (top level, in functions, relative or not)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from flexeval import benchmarks`
    return names


def crossing_edges() -> list[str]:
    edges = []
    for package, folder in PACKAGE_DIRS.items():
        banned = FORBIDDEN[package]
        for path in sorted(folder.rglob("*.py")):
            for name in sorted(imported_modules(path, package)):
                if name == banned or name.startswith(banned + "."):
                    edges.append(f"{path.relative_to(ROOT)} imports {name}")
    return edges


def test_model_and_benchmarks_never_import_each_other():
    assert crossing_edges() == []


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """The parser catches plain, from-, relative and function-level imports across the line."""
    f = tmp_path / "x.py"
    f.write_text("import flexeval.benchmarks.base\n"
                 "def g():\n    from flexeval import benchmarks\n"
                 "from ..benchmarks.vstar import VStar\n"
                 "from .fast import KVCache\n")
    names = imported_modules(f, "flexeval.model")
    assert {"flexeval.benchmarks.base", "flexeval.benchmarks", "flexeval.benchmarks.vstar",
            "flexeval.model.fast"} <= names


def test_tiny_tokenizer_corpus_holds_the_model_template_with_the_benchmark_wording():
    from flexeval.benchmarks.wording import SHORT_ANSWER_SUFFIX, VSTAR_OFFICIAL_SYSTEM
    from flexeval.model.conversation import llava_v1_prompt
    from flexeval.model.tiny import TEMPLATE_LINES

    first = llava_v1_prompt("What is the color of the cup?" + SHORT_ANSWER_SUFFIX, with_image=False) + " red"
    second = llava_v1_prompt("Is the flag on the left?", system=VSTAR_OFFICIAL_SYSTEM, with_image=False) + " yes</s>"
    assert TEMPLATE_LINES == (first, second)


def test_the_model_image_token_is_the_template_one():
    from flexeval.model.conversation import IMAGE_TOKEN as TEMPLATE_IMAGE_TOKEN
    from flexeval.model.tokenizer import IMAGE_TOKEN

    assert IMAGE_TOKEN == TEMPLATE_IMAGE_TOKEN == "<image>"
