"""`flexeval run --check` for a checkpoint folder: every problem the loader would raise one at a time,
collected, without building the model on a device or running it.

Shapes are compared with a LlavaLM built on the meta device (no memory); tensors are read one at a
time for the finite check, so memory stays at one tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError

from .loading import local_clip_folder, local_folder, parse_config, resolve_dtype
from .validate import non_finite_problems, safetensors_header, shape_problems, tokenizer_problems


def check_model_folder(path_or_id: str, dtype: str = "auto", device: str = "cpu", options=None) -> list[str]:
    """All problems found in the checkpoint folder (empty: it would load); `options` (RunOptions) are
    validated against its config too."""
    try:
        folder = local_folder(str(path_or_id))
    except FlexEvalError as e:
        return [str(e)]
    cfg, problems = _config_problems(folder, options)
    torch_dtype = resolve_dtype(dtype, device)
    found, bad = _weight_problems(folder, cfg, torch_dtype)
    problems += bad
    if cfg is not None:
        problems += _tokenizer(folder, cfg, found)
    clip = _local_vision_tower(folder, cfg)
    if clip is not None:  # a CLIP folder beside the checkpoint (a hub CLIP is checked when downloaded)
        problems += _headers_and_finite(clip, torch_dtype)[1]
    return problems


def _config_problems(folder: Path, options) -> tuple:
    """(FlexConfig or None, problems) of config.json, and of the run options against it."""
    cfg_path = folder / "config.json"
    try:
        cfg = parse_config(folder, json.loads(cfg_path.read_text()))
    except FileNotFoundError:
        return None, [f"{cfg_path} not found; a checkpoint folder holds config.json, weights and tokenizer.model"]
    except json.JSONDecodeError as e:
        return None, [f"{cfg_path} is not valid JSON ({e})"]
    except FlexEvalError as e:
        return None, [str(e)]
    if options is not None:
        try:
            options.resolve(cfg)
        except FlexEvalError as e:
            return cfg, [str(e)]
    return cfg, []


def _headers_and_finite(folder: Path, dtype) -> tuple[dict, list[str]]:
    """(tensor name -> (dtype, shape) from the safetensors headers, problems: headers, NaN/inf)."""
    files = sorted(folder.glob("*.safetensors"))
    found: dict[str, tuple[str, list[int]]] = {}
    where: dict[str, Path] = {}
    problems: list[str] = []
    for f in files:
        tensors, bad = safetensors_header(f)
        problems += bad
        if not bad:
            found.update(tensors)
            where.update({k: f for k in tensors})
    return found, problems + _finite(folder, files, where, dtype)


def _weight_problems(folder: Path, cfg, dtype) -> tuple[dict, list[str]]:
    found, problems = _headers_and_finite(folder, dtype)
    if not list(folder.glob("*.safetensors")) and not list(folder.glob("pytorch_model*.bin")):
        problems.append(f"no weights in {folder} (expected *.safetensors or pytorch_model*.bin)")
    if cfg is not None and cfg.format != "llava-hf" and found:
        from .llama import LlavaLM

        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in LlavaLM(cfg).state_dict().items()}
        problems += shape_problems(found, expected, str(folder))
        missing = sorted(set(expected) - set(found))
        if missing:
            problems.append(f"{folder}: weights missing for the {cfg.format} format: {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}; the checkpoint is incomplete or of another format")
    return found, problems


def _local_vision_tower(folder: Path, cfg) -> Path | None:
    return None if cfg is None or cfg.format == "llava-hf" else local_clip_folder(folder, cfg.vision_tower)


def _tokenizer(folder: Path, cfg, found: dict) -> list[str]:
    path = folder / "tokenizer.model"
    if not path.is_file():
        return [f"tokenizer file {path} not found; the checkpoint folder needs its tokenizer.model"]
    try:
        import sentencepiece as spm

        n = spm.SentencePieceProcessor(model_file=str(path)).vocab_size()
    except Exception as e:  # sentencepiece raises RuntimeError/OSError on a damaged file
        return [f"{path}: cannot be read as a sentencepiece model ({e}); copy the checkpoint's tokenizer.model again"]
    emb = found.get("model.embed_tokens.weight")
    rows = emb[1][0] if emb else cfg.vocab_size
    return tokenizer_problems(path, n, rows, str(folder))


def _finite(folder: Path, files: list[Path], where: dict[str, Path], dtype: torch.dtype) -> list[str]:
    from safetensors import safe_open

    problems = []
    for f in files:
        names = [k for k, p in where.items() if p == f]
        if not names:
            continue
        try:
            with safe_open(str(f), framework="pt") as st:
                tensors = ((k, st.get_tensor(k)) for k in names)
                problems += non_finite_problems(((k, t.to(dtype)) for k, t in tensors if t.is_floating_point()),
                                                str(f), dtype)
        except Exception as e:  # the header looked fine but the data did not read
            problems.append(f"{f}: cannot be read as safetensors ({type(e).__name__}: {e}); re-download it")
    return problems


def weights_finite_problems(folder: Path, dtype) -> list[str]:
    """Headers and NaN/inf of every *.safetensors file of `folder` (any format: the transformers path too)."""
    return _headers_and_finite(folder, dtype)[1]
