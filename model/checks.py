"""Checks of a checkpoint before the model runs: one module for the loader and for `flexeval run --check`.

The file checks cost seconds: safetensors headers, shapes, dtypes, finite weights, tokenizer size.
Each returns a list of problems (strings naming the file, the tensor and the fix): the loader
(loading.py) raises them as one FlexEvalError; `check_model_folder` collects every problem of a
checkpoint folder at once for `flexeval run --check` (flexeval/checks.py), without building the
model on a device or running it: shapes are compared with a LlavaLM built on the meta device (no
memory), and tensors are read one at a time for the finite check, so memory stays at one tensor.

Why here and not in safetensors: a zero-length, truncated or header-corrupt file makes
`safetensors.load_file` raise its own exception type (or read garbage offsets) without naming the
fix; the header is 8 bytes of length plus JSON, cheap to check before the tensors are read.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError

# safetensors dtype names -> bytes per element
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# A tokenizer may have fewer ids than the embedding (llava-hf: 32000 tokens, 32064 rows, padded to a
# multiple of 64), never more; a smaller one by more than that is another model's tokenizer.
TOKENIZER_SLACK = 64
REFETCH = "re-download the checkpoint (huggingface-cli download <id>) or copy the file again"


def safetensors_header(path: Path) -> tuple[dict[str, tuple[str, list[int]]], list[str]]:
    """(tensor name -> (dtype, shape), problems) from the file's header, without reading tensors."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return {}, [f"{path}: {size} bytes, too short for a safetensors file (empty or cut off); {REFETCH}"]
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                return {}, [f"{path}: header length {n} exceeds the file ({size} bytes): header corrupt or file "
                            f"cut off; {REFETCH}"]
            raw = f.read(n)
    except OSError as e:
        return {}, [f"{path}: cannot be read ({e}); {REFETCH}"]
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        return {}, [f"{path}: header is not valid JSON ({e}); the file is corrupt; {REFETCH}"]
    data_len = size - 8 - n
    tensors, problems, beyond = {}, [], []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(x) for x in info["shape"]], info["data_offsets"]
            itemsize = SAFETENSORS_ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"{path}: tensor {name}: header entry {info!r:.100} is malformed ({e}); {REFETCH}")
            continue
        if end > data_len or begin > end:
            beyond.append(name)
        elif end - begin != math.prod(shape) * itemsize:
            problems.append(f"{path}: tensor {name}: {end - begin} bytes for shape {shape} {dtype}; header corrupt; "
                            f"{REFETCH}")
        tensors[name] = (dtype, shape)
    if beyond:
        problems.append(f"{path}: {len(beyond)} tensor(s) lie beyond the file's {data_len} data bytes (e.g. "
                        f"{beyond[0]}): the file is cut off; {REFETCH}")
    return tensors, problems


def header_problems(files: list[Path]) -> list[str]:
    return [p for f in files for p in safetensors_header(f)[1]]


def raise_problems(problems: list[str], what: str) -> None:
    if problems:
        raise FlexEvalError(f"{what}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


def shape_problems(found: dict[str, tuple[str, tuple]], expected: dict[str, tuple], where: str) -> list[str]:
    """Weights whose shape differs from what the config builds, or whose dtype is not floating point.

    `found`: name -> (dtype name, shape) as stored; `expected`: name -> shape of the module's tensor.
    """
    problems = []
    for name, want in expected.items():
        if name not in found:
            continue  # missing keys are the loader's message (it knows the format)
        dtype, shape = found[name]
        if tuple(shape) != tuple(want):
            problems.append(f"{where}: tensor {name} has shape {list(shape)}, the config needs {list(want)}; "
                            f"the weights belong to another model size or config.json was edited")
        if dtype.upper().replace("TORCH.", "") not in FLOAT_DTYPES | {"FLOAT16", "BFLOAT16", "FLOAT32", "FLOAT64"}:
            problems.append(f"{where}: tensor {name} is stored as {dtype}, not floating point; {REFETCH}")
    return problems


def non_finite_problems(named, where: str, dtype: torch.dtype) -> list[str]:
    """NaN/inf in weights, checked as held in `dtype` (a cast to float16 can overflow to inf).

    `named`: an iterable of (name, tensor), consumed one at a time (a generator keeps memory at one
    tensor). One isfinite reduction per tensor and a single device sync: seconds for a 7B model.
    """
    names, flags = [], []
    for name, t in named:
        names.append(name)
        flags.append(torch.isfinite(t).all())
    if not flags:
        return []
    flags = torch.stack(flags).cpu().tolist()
    bad = [name for name, ok in zip(names, flags) if not ok]
    if not bad:
        return []
    shown = ", ".join(bad[:5]) + (f" ... ({len(bad)} in all)" if len(bad) > 5 else "")
    dt = str(dtype).replace("torch.", "")
    fix = ("the values overflow float16: load with --dtype bfloat16 or float32"
           if dtype == torch.float16 else "the weights are damaged: " + REFETCH)
    return [f"{where}: {len(bad)} tensor(s) hold NaN or inf as {dt}: {shown}; {fix}"]


def tokenizer_problems(tokenizer_path: Path, n_tokens: int, embedding_rows: int, where: str) -> list[str]:
    if n_tokens > embedding_rows or embedding_rows - n_tokens > TOKENIZER_SLACK:
        return [f"{tokenizer_path}: {n_tokens} tokens, but {where} has {embedding_rows} embedding rows; the "
                f"tokenizer belongs to another model: put the checkpoint's own tokenizer.model beside it"]
    return []


# ---------------------------------------------------------------- `flexeval run --check`: a whole folder

def check_model_folder(path_or_id: str, dtype: str = "auto", device: str = "cpu", options=None) -> list[str]:
    """All problems found in the checkpoint folder (empty: it would load); `options` (RunOptions) are
    validated against its config too."""
    from .loading import local_folder, resolve_dtype

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
    from .loading import parse_config  # loading.py imports this module: a lazy import, no cycle

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
    from .loading import local_clip_folder

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
