"""Checks before any work: the loaded items, the results tag, and `flexeval run --check`, which
validates the data, the model folder and the output folder without running the model and lists
every problem at once (a user fixing one error at a time on a 62k-item run loses a day).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from flexeval.errors import FlexEvalError

TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_tag(tag: str) -> str:
    """A --tag is one folder name under --out: no separators, no '..', nothing that escapes --out."""
    if not TAG_RE.fullmatch(tag or "") or len(tag) > 200:
        raise FlexEvalError(f"--tag {tag!r} is not a plain folder name; use letters, digits and . _ + = - "
                            f"(no '/', no leading '.'), e.g. --tag my-model-fp16")
    return tag


def check_samples(bench_name: str, samples: list, data_dir: Path) -> None:
    """Refuse what would be scored wrongly or crash the store: no items, or an id used twice."""
    if not samples:
        raise FlexEvalError(f"{bench_name}: 0 items found in {data_dir}; the folder holds no items in the release "
                            f"layout: check --data-dir (`flexeval list` shows what each benchmark expects)")
    first: dict[str, int] = {}
    repeats = []
    for k, s in enumerate(samples):
        if s.id in first:
            repeats.append(f"{s.id!r} (items {first[s.id]} and {k})")
        first.setdefault(s.id, k)
    if repeats:
        raise FlexEvalError(f"{bench_name} data in {data_dir}: {len(repeats)} item id(s) appear twice: "
                            f"{', '.join(repeats[:10])}{' ...' if len(repeats) > 10 else ''}; every item must be "
                            f"unique (results and resume are keyed by it): remove the repeats")


def writable_problem(out: Path) -> str | None:
    """None if a file can be created under `out` (or its nearest existing parent)."""
    probe = Path(out)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"--out {out}: {probe} is not a folder; choose another --out"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".flexeval-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"--out {out}: cannot write in {probe} ({e.strerror}); fix its permissions or choose another --out"
    return None


def image_problems(samples: list, max_pixels: int) -> list[str]:
    """Headers only (size and format): a full decode of every image would take minutes."""
    from flexeval.benchmarks.base import image_header_problem

    problems = []
    for s in samples:
        if s.image is not None:
            p = image_header_problem(s.image, s.id, max_pixels)
            if p:
                problems.append(p)
    return problems


def check_run(cfg) -> tuple[list[str], list[str]]:
    """(problems, notes) for a RunConfig: data, model folder and output folder; nothing is run."""
    from flexeval.model.check import check_model_folder
    from flexeval.model.config import RunOptions
    from flexeval.model.loading import resolve_device
    from flexeval.runner import plan_benchmarks

    problems, notes = [], []
    if cfg.tag:
        try:
            check_tag(cfg.tag)
        except FlexEvalError as e:
            problems.append(str(e))
    try:
        plan = plan_benchmarks(cfg)
    except FlexEvalError as e:
        plan = []
        problems.append(str(e))
    for bench, data_dir, _protocol in plan:
        try:
            samples = bench.load(data_dir, split=cfg.split)
            check_samples(bench.name, samples, data_dir)
        except FlexEvalError as e:
            problems.append(str(e))
            continue
        problems += image_problems(samples, cfg.max_image_pixels)
        mismatch = bench.count_report(samples)["mismatch"]
        notes.append(f"{bench.name}: {len(samples)} items in {data_dir}"
                     + (f" (published counts differ: {mismatch})" if mismatch else ""))
    options = RunOptions(selection=cfg.selection, threshold=cfg.threshold, first_hd_layer=cfg.first_layer,
                         zoom=cfg.zoom, seed=cfg.seed)
    try:
        device = resolve_device(cfg.device)
    except FlexEvalError as e:
        problems.append(str(e))
        device = "cpu"
    model_problems = check_model_folder(cfg.model, cfg.dtype, device, options)
    problems += model_problems
    if not model_problems:
        notes.append(f"model {cfg.model}: config, weights (headers, shapes, finite), tokenizer fine")
    out_problem = writable_problem(Path(cfg.out))
    if out_problem:
        problems.append(out_problem)
    return problems, notes


def format_check(problems: list[str], notes: list[str]) -> str:
    lines = [f"ok: {n}" for n in notes]
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines += [f"{k}. {p}" for k, p in enumerate(problems, start=1)]
    else:
        lines.append("no problems found: `flexeval run` with the same options will start")
    return "\n".join(lines)
