"""Checks that run BEFORE the model loads (minutes for a 7B checkpoint): options, data folders and
the data itself, so a typo fails in a second with a message that says what to run instead."""

from __future__ import annotations

import json
from pathlib import Path

from flexeval.errors import FlexEvalError


def check_run_options(cfg) -> None:
    """Numbers that must be in range, checked before anything is read."""
    if cfg.limit is not None and cfg.limit < 0:
        raise FlexEvalError(f"--limit must be 0 or more, not {cfg.limit}")
    if cfg.workers is not None and cfg.workers < 0:
        raise FlexEvalError(f"--workers must be 0 (decode in the main process) or more, not {cfg.workers}")
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
