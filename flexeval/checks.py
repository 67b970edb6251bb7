"""Checks before any work: the loaded items, the results tag, and `flexeval run --check`, which
validates the data, the model folder and the output folder without running the model and lists
every problem at once (a user fixing one error at a time on a 62k-item run loses a day).
The checkpoint's own checks live with the loader, in flexeval/model/checks.py (one module the loader
raises from and `run --check` collects from).
"""

from __future__ import annotations

import json
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


def repeated_ids(samples: list) -> list[tuple[str, int, int]]:
    """(id, its first item, a later item) for every item whose id an earlier item has, in item order."""
    first: dict[str, int] = {}
    repeats = []
    for k, s in enumerate(samples):
        if s.id in first:
            repeats.append((s.id, first[s.id], k))
        first.setdefault(s.id, k)
    return repeats


def check_samples(bench_name: str, samples: list, data_dir: Path) -> None:
    """Refuse what would be scored wrongly or crash the store: no items, or an id used twice."""
    if not samples:
        raise FlexEvalError(f"{bench_name}: 0 items found in {data_dir}; the folder holds no items in the release "
                            f"layout: check --data-dir (`flexeval list` shows what each benchmark expects)")
    repeats = [f"{i!r} (items {a} and {b})" for i, a, b in repeated_ids(samples)]
    if repeats:
        raise FlexEvalError(f"{bench_name} data in {data_dir}: {len(repeats)} item id(s) appear twice: "
                            f"{', '.join(repeats[:10])}{' ...' if len(repeats) > 10 else ''}; every item must be "
                            f"unique (results and resume are keyed by it): remove the repeats")


def writable_problem(out: Path, option: str = "--out") -> str | None:
    """None if a file can be created under `out` (or its nearest existing parent)."""
    probe = Path(out)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{option} {out}: {probe} is not a folder; choose another {option} (a regular file is in the way)"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".flexeval-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"{option} {out}: cannot write in {probe} ({e.strerror}); fix its permissions or choose another {option}"
    return None


def check_writable(out: Path, option: str = "--out") -> Path:
    """The folder `out` (or a file's folder) can be made and written: else an error naming the option."""
    problem = writable_problem(out, option)
    if problem:
        raise FlexEvalError(problem)
    return Path(out)


def check_at_least(value: int | None, option: str, least: int = 1) -> None:
    """An integer option with a lower bound (--max-new-tokens -3 generated nothing or crashed; --n 0 wrote
    an empty benchmark folder that the run then refused)."""
    if value is not None and value < least:
        raise FlexEvalError(f"{option} must be at least {least}, not {value}")


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
    from flexeval.evaluate import plan_benchmarks
    from flexeval.model.config import RunOptions
    from flexeval.model.loading import resolve_device

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
    plugin = _model_plugin(cfg.model_kind, problems)
    model_problems = [] if plugin else model_folder_problems(cfg, device, options)
    problems += model_problems
    if plugin:
        notes.append(f"model {cfg.model}: served by the model plugin {plugin.name} ({plugin.source}), not checked")
    elif not model_problems:
        notes.append(f"model {cfg.model}: config, weights (headers, shapes, finite), tokenizer fine")
    out_problem = writable_problem(Path(cfg.out))
    if out_problem:
        problems.append(out_problem)
    return problems, notes


def _model_plugin(kind: str, problems: list[str]):
    """The `flexeval.models` plugin --model-kind names, or None; an unknown kind is a problem."""
    from flexeval.plugins import model_plugin

    try:
        return model_plugin(kind)
    except FlexEvalError as e:
        problems.append(str(e))
        return None


def model_folder_problems(cfg, device: str, options) -> list[str]:
    """The model part of `run --check`: the kind and recipe the run would resolve (the same errors as the run's,
    model/kinds.py), then the checks of the code that serves it: FlexLlava's or the transformers path's."""
    from flexeval.model.checks import check_model_folder
    from flexeval.model.hf_checks import hf_folder_problems
    from flexeval.model.loading import local_folder, read_config, resolve_dtype, resolve_kind_and_recipe

    try:
        folder = local_folder(str(cfg.model))
        kind, _ = resolve_kind_and_recipe(folder, read_config(folder), cfg.model_kind, cfg.recipe)
    except FlexEvalError as e:
        return [str(e)]
    if kind == "hf":
        return hf_folder_problems(folder, resolve_dtype(cfg.dtype, device))
    return check_model_folder(cfg.model, cfg.dtype, device, options)


def format_check(problems: list[str], notes: list[str]) -> str:
    lines = [f"ok: {n}" for n in notes]
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines += [f"{k}. {p}" for k, p in enumerate(problems, start=1)]
    else:
        lines.append("no problems found: `flexeval run` with the same options will start")
    return "\n".join(lines)


# ----------------------------------------------------------------
# Checks that run BEFORE the model loads (minutes for a 7B checkpoint): options, data folders and
# the data itself, so a typo fails in a second with a message that says what to run instead.

def check_run_options(cfg) -> None:
    """Numbers that must be in range, checked before anything is read."""
    if cfg.limit is not None and cfg.limit < 0:
        raise FlexEvalError(f"--limit must be 0 or more, not {cfg.limit}")
    if cfg.workers is not None and cfg.workers < 0:
        raise FlexEvalError(f"--workers must be 0 (decode in the main process) or more, not {cfg.workers}")
    if (problem := writable_problem(Path(cfg.out))) is not None:  # before the model loads (minutes for a 7B)
        raise FlexEvalError(f"cannot write the results folder: {problem}")
    if cfg.device not in (None, "auto"):
        from flexeval.model.loading import resolve_device

        resolve_device(cfg.device)  # --device nosuch: an error naming the choices, before the model loads
    if cfg.max_new_tokens is not None and cfg.max_new_tokens < 1:
        raise FlexEvalError(f"--max-new-tokens must be at least 1, not {cfg.max_new_tokens}")
    if str(cfg.batch_size) != "auto":
        try:
            ok = int(cfg.batch_size) >= 1
        except ValueError:
            ok = False
        if not ok:
            raise FlexEvalError(f"--batch-size must be a positive integer or 'auto', not {cfg.batch_size!r}")


def check_model_options(model: str, options, model_kind: str = "auto", recipe: str | None = None) -> None:
    """The run options against a local checkpoint's config.json (weights are not read). A hub id is
    checked when it is loaded; a transformers model (--model-kind hf) by its own loader."""
    from flexeval.model.loading import local_folder, looks_local, parse_config, resolve_kind_and_recipe

    folder = Path(str(model)).expanduser()
    if not folder.is_dir() and looks_local(str(model)):
        local_folder(str(model))  # raises: not found, with the closest folder name
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise FlexEvalError(f"{cfg_path} is not valid JSON ({e})") from e
    kind, _ = resolve_kind_and_recipe(cfg_path.parent, raw, model_kind, recipe)  # raises on a bad combination
    if kind == "flexattention":
        options.resolve(parse_config(cfg_path.parent, raw))  # raises on a value the checkpoint cannot take


def split_for(bench, split: str | None, several: bool) -> str | None:
    """The benchmark's resolved split; with --bench all a --split only concerns the benchmarks that have splits."""
    if split and not bench.splits and several:
        return None
    return bench.check_split(split)


def _looks_like_data_root(folder: Path, bench_names: list[str]) -> bool:
    return folder.name == "data" or any((folder / name).is_dir() for name in bench_names)


def load_samples(bench, data_dir: Path, split: str | None, explicit_dir: bool, protocol: str | None = None) -> list:
    """bench.load, with a message that fits when the folder given is the data root, not the benchmark's."""
    from flexeval.benchmarks import list_benchmarks

    data_dir = Path(data_dir)
    try:
        return bench.load(data_dir, split=split, protocol=protocol)
    except FlexEvalError as e:
        names = [b.name for b in list_benchmarks()]
        if not explicit_dir or data_dir.name == bench.name or not _looks_like_data_root(data_dir, names):
            raise
        target = data_dir / bench.name
        if target.is_dir():
            fix = f"give --data-dir {target}"
        else:
            fix = (f"put the data in {target} (`flexeval data fetch --bench {bench.name} --out {target}` where a "
                   f"network exists, or `flexeval data make-sample --bench {bench.name} --out {target}` for "
                   f"generated sample items), then give --data-dir {target}")
        raise FlexEvalError(f"--data-dir {data_dir} looks like the data root (one folder per benchmark), not the "
                            f"{bench.name} folder: {fix}; or run every benchmark with --bench all --data-dir "
                            f"{data_dir}") from e


def count_sentence(bench_name: str, counts: dict) -> str:
    """The loaded-vs-published item counts as a sentence (None-safe for benchmarks without counts)."""
    loaded, expected, mismatch = counts["loaded"], counts.get("expected") or {}, counts["mismatch"]
    total = expected.get("overall")
    parts = [f"{k} {v['loaded']} of {v['expected']}" for k, v in mismatch.items() if k != "overall"]
    head = f"[{bench_name}] loaded {loaded.get('overall', 0)} items"
    head += f"; the published release has {total}" if total is not None else "; the published counts differ"
    return (head + (f" ({', '.join(parts)})" if parts else "")
            + ": a sample, a partial copy or another release, so the numbers are not the paper's")


# ---------------------------------------------------------------- issue 24: settings, folders, keys

def effective_seed(cfg) -> int:
    """--seed matters to the random selection only; elsewhere it is 0, so it neither splits a cache
    (the config fingerprint holds the resolved options) nor names a folder for nothing."""
    return int(cfg.seed) if cfg.selection == "random" else 0


def replaced_results_note(out_dir: Path, config_fp: str, identity: dict) -> str | None:
    """A line saying that `out_dir` holds another configuration's results, which this run replaces
    (what differs, and that their shards stay): a replacement is never silent."""
    try:
        old = json.loads((Path(out_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or old.get("config_fingerprint") in (None, config_fp):
        return None
    before = old.get("model") if isinstance(old.get("model"), dict) else {}
    identity = json.loads(json.dumps(identity, default=str))  # tuples as lists, Paths as strings: as run.json
    changed = [k for k in ("files", "config_sha", "format", "options", "dtype") if before.get(k) != identity.get(k)]
    return (f"{out_dir} holds the results of another configuration (config {old['config_fingerprint']}; differs in "
            f"{', '.join(changed) or 'the benchmark config'}); this run replaces them. Its predictions stay in "
            f"shards/ (rerun that configuration to get its files back); use --tag to keep both side by side")


DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
               "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16", "auto": "auto"}


def canonical_dtype(dtype: str | None) -> str:
    """One spelling per dtype (bf16 -> bfloat16): the dtype names the results folder, so two spellings
    of one dtype must not make two folders; an unknown name is an error before anything loads."""
    name = DTYPE_NAMES.get(str(dtype if dtype is not None else "auto").strip().lower())
    if name is None:
        raise FlexEvalError(f"--dtype {dtype!r} is not a dtype; choose auto, float32, bfloat16 or float16")
    return name


def check_protocol_exists(benches: list, protocol: str | None) -> None:
    """With several benchmarks a protocol one of them lacks falls back to its default; a protocol none
    of them has is a typo (it ran everything and recorded the typo)."""
    if protocol and not any(protocol in b.protocols for b in benches):
        choices = sorted({p for b in benches for p in b.protocols})
        raise FlexEvalError(f"--protocol {protocol!r}: no benchmark of this run has it; choose one of "
                            f"{', '.join(choices)}")


def generation_override(bench, samples: list, protocol: str, max_new_tokens: int | None,
                        question_style: str = "release") -> int | None:
    """--max-new-tokens as it names a variant folder: None where nothing generates or where it is every
    generating request's own default (max_new_tokens=16 on RSVQA is the default run, not a variant)."""
    if not max_new_tokens:
        return None
    from flexeval.benchmarks.question_style import styled_sample
    from flexeval.requests import Generate

    requests = (bench.request(styled_sample(bench.name, s, question_style), protocol) for s in samples)
    defaults = {r.max_new_tokens for r in requests if isinstance(r, Generate)}
    return None if defaults in (set(), {max_new_tokens}) else max_new_tokens
