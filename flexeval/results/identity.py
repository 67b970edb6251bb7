"""A model's identity for resume: what its files hold, not where they are or how --model was spelled.

`demo/x`, `./demo/x`, `demo/x/`, the absolute path and a copy of the folder elsewhere are one
model; the same folder with other weights is another. Each checkpoint file (weights, tokenizer,
JSON configs, also in subfolders such as a vision tower kept inside the checkpoint) counts by its
relative path, size and sha256. A hub snapshot's files are links to blobs named by their git/LFS
object id (the sha256 of an LFS file's content): that name is used, nothing is read. A local 7B
checkpoint is read once (~10 s from the page cache right after loading it): digests are cached on
disk by (path, size, mtime) (flexeval/results/digests.py), and in a multi-process run rank 0 alone
reads the files and hands the digests to the others (flexeval/distributed.py share_digests).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from flexeval.results.store import file_sha256, fingerprint

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".model", ".json", ".jinja")  # .jinja: chat templates
_OBJECT_ID = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


def is_hub_blob(path: Path) -> bool:
    """A hub cache blob, named by its object id: its digest is its name."""
    real = Path(os.path.realpath(path))
    return real.parent.name == "blobs" and bool(_OBJECT_ID.match(real.name))


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or a hub blob's object id when it is one (nothing read then)."""
    real = Path(os.path.realpath(path))
    return real.name if is_hub_blob(real) else file_sha256(real)


def checkpoint_files(folder: Path) -> list[Path]:
    """Every checkpoint file under `folder` (hidden ones skipped), sorted by relative path."""
    folder = Path(folder)
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES
            and not any(x.startswith(".") for x in p.relative_to(folder).parts)]


def files_to_read(folder: Path) -> list[Path]:
    """The checkpoint files whose digest means reading them (hub blobs are named by theirs)."""
    return [p for p in checkpoint_files(folder) if not is_hub_blob(p)]


def checkpoint_content(folder: Path) -> list[list]:
    """[relative path, size, digest] of every checkpoint file under `folder`, sorted by path."""
    folder = Path(folder)
    return [[p.relative_to(folder).as_posix(), p.stat().st_size, file_digest(p)] for p in checkpoint_files(folder)]


def local_model_name(spelling: str) -> str | None:
    """The folder name a local --model points at however it is spelled ('.', './x/', ...); None for a hub id."""
    p = Path(str(spelling)).expanduser()
    return p.resolve().name if p.is_dir() else None


# ---------------------------------------------------------------- a loaded model's tag and identity

def model_tag(cfg, model) -> str:
    """Results folder name (cfg: a flexeval.evaluate.RunConfig): the checkpoint's name plus every non-default knob."""
    if cfg.tag:
        return cfg.tag
    name = local_model_name(cfg.model) or Path(str(cfg.model).rstrip("/")).name or "model"
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "-", name)]
    if model.cfg.has_hd:
        r = model.options
        if r.selection != "attention":  # a random selection's seed is part of its folder (issue 24)
            parts.append(f"sel-{r.selection}" + (f"-seed{r.seed}" if r.selection == "random" and r.seed else ""))
        if r.threshold != model.cfg.threshold:
            parts.append(f"thr{r.threshold:g}")
        if r.select_layer != model.cfg.first_select_layer:
            parts.append(f"first{r.select_layer + 1}")
        if r.zoom != model.cfg.zoom_ratio:
            parts.append(f"zoom{r.zoom}")
    parts.extend(model.tag_parts() if hasattr(model, "tag_parts") else [])  # hf_vlm: recipe, pixel budget
    if cfg.dtype not in ("auto", None):
        parts.append(str(cfg.dtype))
    if cfg.question_style not in (None, "release"):  # other prompts, other folder
        parts.append(f"qs-{cfg.question_style}")
    return "-".join(parts)


def model_identity(model) -> dict:
    """What makes two runs' predictions comparable: the checkpoint's content (not its place or the
    spelling of --model: flexeval/results/identity.py), config, knobs, dtype."""
    if hasattr(model, "identity"):  # a model plugin (flexeval/plugins.py) says what identifies it
        return model.identity()
    folder = Path(model.folder)
    config_text = (folder / "config.json").read_text()
    return {"files": checkpoint_content(folder), "config_sha": fingerprint(config_text), "format": model.cfg.format,
            "options": model.options.to_dict() if hasattr(model, "options") else model.resolved,
            "dtype": str(model.dtype).replace("torch.", "")}
