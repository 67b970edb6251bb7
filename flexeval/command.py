"""The `flexeval run` command line that reproduces one benchmark's run, for run.json and for
messages that tell the user to run it again (paths made absolute, so it works from any folder)."""

from __future__ import annotations

import shlex
from pathlib import Path

# RunConfig field -> option, for the options that change what is computed or where it goes.
_OPTIONS = [("limit", "--limit"), ("batch_size", "--batch-size"), ("dtype", "--dtype"), ("device", "--device"),
            ("selection", "--selection"), ("threshold", "--threshold"), ("first_layer", "--first-layer"),
            ("zoom", "--zoom"), ("tag", "--tag"), ("seed", "--seed"),
            ("max_new_tokens", "--max-new-tokens")]
_DEFAULTS = {"batch_size": "auto", "dtype": "auto", "device": "auto", "seed": 0}


def run_command(cfg, bench: str, data_dir: Path, protocol: str, split: str | None = None) -> str:
    """`flexeval run --bench <bench> ...` with this run's options (a hub id stays as spelled);
    `split`: the benchmark's resolved split (None for one without splits)."""
    model = str(cfg.model)
    if Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    args = ["flexeval", "run", "--bench", bench, "--model", model, "--data-dir", str(Path(data_dir).resolve()),
            "--out", str(Path(cfg.out).resolve()), "--protocol", protocol]
    if split:
        args += ["--split", split]
    for field, option in _OPTIONS:
        value = getattr(cfg, field)
        if value is not None and value != _DEFAULTS.get(field):
            args += [option, str(value)]
    return shlex.join(args)
