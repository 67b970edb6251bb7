"""The checkpoint checks of the transformers path (issue 24): the same files are checked, with the same
messages, as for FlexLlava (model/checks.py): safetensors headers (zero-length, truncated, corrupt),
the tokenizer's and the image processor's files, and NaN/inf in the weights as held in the run's
dtype. `flexeval run --check` lists them all (`hf_folder_problems`); the loader raises them before
transformers reads a byte (`check_hf_files`) and after the weights are on the device
(`check_hf_weights`), where transformers itself gave a traceback or nothing at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from flexeval.errors import FlexEvalError

from .checks import REFETCH, header_problems, non_finite_problems, raise_problems

# One of these holds the vocabulary (fast tokenizer, sentencepiece, BPE, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "qwen.tiktoken", "tokenizer.tiktoken")
JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
              "special_tokens_map.json", "generation_config.json", "chat_template.json")


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return f"{path}: not valid JSON ({e}); the file is damaged: {REFETCH}"
    return None


def hf_file_problems(folder: Path) -> list[str]:
    """Weights' headers, the tokenizer's files and the image processor's settings of a transformers checkpoint."""
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    problems = header_problems(weights)
    if not weights and not list(folder.glob("pytorch_model*.bin")):
        problems.append(f"no weights in {folder} (expected *.safetensors or pytorch_model*.bin)")
    problems += [p for name in JSON_FILES if (folder / name).is_file() and (p := _json_problem(folder / name))]
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"tokenizer files of {folder} not found (one of {', '.join(TOKENIZER_FILES)}); the "
                        f"checkpoint folder needs its tokenizer: {REFETCH}, or save it with tokenizer.save_pretrained")
    if not (folder / "tokenizer_config.json").is_file():
        problems.append(f"{folder / 'tokenizer_config.json'} not found; without it transformers guesses the tokenizer "
                        f"(a run went on with the wrong one): {REFETCH}")
    if not _has_image_processor(folder):
        problems.append(f"image processor settings of {folder} not found (preprocessor_config.json, or an "
                        f"image_processor entry in processor_config.json); {REFETCH}, or save them with "
                        "processor.save_pretrained")
    return problems


def _has_image_processor(folder: Path) -> bool:
    if (folder / "preprocessor_config.json").is_file():
        return True
    try:
        return "image_processor" in json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def check_hf_files(folder: Path) -> None:
    raise_problems(hf_file_problems(folder), f"checkpoint {folder}")


def check_hf_weights(model, folder: Path, dtype) -> None:
    """NaN/inf in the loaded weights, as held in `dtype`: FlexLlava's load check, same message."""
    named = ((k, v) for k, v in model.named_parameters() if v.is_floating_point())
    raise_problems(non_finite_problems(named, str(folder), dtype), f"checkpoint {folder}")


def hf_folder_problems(folder: Path, dtype) -> list[str]:
    """`run --check` for a transformers checkpoint: its files, then its weights read one tensor at a time."""
    from .checks import weights_finite_problems

    problems = hf_file_problems(folder)
    return problems if problems else weights_finite_problems(Path(folder), dtype)


def _budget(ip) -> tuple[int | None, int | None]:
    """(min, max) pixels the image processor will use: its own attributes, or Qwen-VL's size dict."""
    size = getattr(ip, "size", None)

    def get(key: str):
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    lo = getattr(ip, "min_pixels", None) or get("shortest_edge")
    hi = getattr(ip, "max_pixels", None) or get("longest_edge")
    return lo, hi


def check_pixel_budget(ip, overrides: dict, folder: Path) -> None:
    """--min-pixels / --max-pixels that the processor cannot honour (issue 24: below its smallest image, a
    minimum above the maximum, not positive) are errors naming the numbers, not a silently clamped run."""
    name = f"the image processor {type(ip).__name__} of {folder}"
    for key in ("min_pixels", "max_pixels"):
        v = overrides.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise FlexEvalError(f"--{key.replace('_', '-')} {v!r} must be a positive number of pixels")
    if "min_pixels" not in overrides and "max_pixels" not in overrides:
        return
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None) or 1
    tile = patch * merge if isinstance(patch, int) and isinstance(merge, int) else None
    lo, hi = _budget(ip)
    if tile and hi is not None and hi < tile * tile:
        raise FlexEvalError(f"--max-pixels {hi} is below the smallest image {name} makes: one {tile}x{tile} tile "
                            f"= {tile * tile} pixels (patch_size {patch} x merge_size {merge}); give --max-pixels "
                            f"{max(tile * tile, lo or 0)} or more")
    if lo is not None and hi is not None and lo > hi:
        raise FlexEvalError(f"the pixel budget of {name} is min {lo} > max {hi} (from --min-pixels/--max-pixels and "
                            f"its own settings); give --min-pixels {min(lo, hi)} or a --max-pixels of {lo} or more")
