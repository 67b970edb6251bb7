"""Loading checkpoints: the FlexAttention release, original LLaVA-1.5, and llava-hf (spec section 1).

`load_pretrained(path_or_hub_id)` takes a local folder or a hub id (downloaded when a network
exists). Config values this implementation does not support are errors, never ignored.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError
from flexeval.hub import snapshot

from .checks import header_problems, non_finite_problems, raise_problems, shape_problems, tokenizer_problems
from .config import FlexConfig, RunOptions
from .config_check import check_config_types
from .flex_llava import FlexLlava
from .kinds import MODEL_KINDS, RECIPES, resolve_kind_and_recipe  # noqa: F401  (their home before issue 24)
from .llama import LlavaLM
from .tokenizer import LlavaTokenizer
from .vision import VisionTower

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
# `extra` keys of the release config; warmup only blends low/high-res during training (a = 1 at eval).
KNOWN_EXTRA = {"zoom_ratio", "highres_size", "lowres_size", "threshold", "warmup"}


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):  # the release runs fp16 (as trained and evaluated); CPUs get fp32
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise FlexEvalError(f"unknown dtype '{dtype}'; choose float32, bfloat16 or float16")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:  # --device nosuch was torch's traceback
        raise FlexEvalError(f"--device {device!r} is not a device; choose auto, cpu, cuda or cuda:N") from e
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise FlexEvalError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    return device


def looks_local(path_or_id: str) -> bool:
    """A path, not a hub id: './x', '/x', '~/x', 'x/', 'a/b/c', or 'a/b' where the folder a/ exists here."""
    p = Path(path_or_id).expanduser()
    return (p.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.endswith("/")
            or path_or_id.count("/") != 1 or p.parent.is_dir())


def _did_you_mean(p: Path) -> str:
    import difflib

    parent = p.parent if str(p.parent) else Path(".")
    try:
        names = [c.name for c in parent.iterdir() if c.is_dir()]
    except OSError:
        return ""
    match = difflib.get_close_matches(p.name, names, n=1, cutoff=0.6)
    return f"; did you mean {parent / match[0] if str(p.parent) != '.' else match[0]}?" if match else ""


def local_folder(path_or_id: str, patterns=("*.json", "*.safetensors", "*.model", "*.bin")) -> Path:
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if looks_local(path_or_id):  # a mistyped local path is not looked up on the hub
        raise FlexEvalError(f"model folder {path_or_id} not found{_did_you_mean(p)} (give a checkpoint folder, or "
                            "a hub id like senfu/llava-v1.5-7b-flexattn)")
    return snapshot(path_or_id, allow_patterns=list(patterns),
                    hint=f"offline, download it elsewhere (huggingface-cli download {path_or_id}) and pass its "
                         "folder with --model")


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        raise_problems(header_problems(files), f"checkpoint {folder}")
        sd = {}
        for f in files:
            try:
                sd.update(load_file(str(f)))
            except Exception as e:  # safetensors raises its own types; the header check caught the usual ones
                raise FlexEvalError(f"{f}: cannot be read as safetensors ({type(e).__name__}: {e}); re-download it") from e
        return sd
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise FlexEvalError(f"no weights in {folder} (expected *.safetensors or pytorch_model*.bin)")
    sd = {}
    for f in bins:
        try:
            sd.update(torch.load(str(f), map_location="cpu", weights_only=True))
        except Exception as e:  # zip/pickle errors of a damaged file
            raise FlexEvalError(f"{f}: cannot be read ({type(e).__name__}: {e}); re-download it") from e
    return sd


def _unsupported(folder: Path, key: str, value, fix: str) -> FlexEvalError:
    return FlexEvalError(f"{folder / 'config.json'}: {key} = {value!r} is not supported by flexeval; {fix}")


def parse_config(folder: Path, raw: dict) -> FlexConfig:
    """FlexConfig from a config.json of any of the three formats; unsupported values raise."""
    check_config_types(folder, raw)  # "4096", [2], 1.5: an error naming the field (model/config_check.py)
    archs = raw.get("architectures") or []
    if "LlavaForConditionalGeneration" in archs or "text_config" in raw:
        return _parse_llava_hf(folder, raw)
    text = raw
    checks = {
        "mm_use_im_start_end": (False, "LLaVA-1.5 checkpoints use no image start/end tokens"),
        "mm_use_im_patch_token": (False, "LLaVA-1.5 checkpoints use no image patch token"),
        "image_aspect_ratio": ("pad", "only LLaVA-1.5's pad-to-square is implemented"),
        "mm_vision_select_feature": ("patch", "only 'patch' (CLS dropped) is implemented"),
        "mm_patch_merge_type": ("flat", "only 'flat' (LLaVA-1.5) is implemented"),
    }
    for key, (want, fix) in checks.items():
        if key in raw and raw[key] not in (want, None):
            raise _unsupported(folder, key, raw[key], fix)
    cfg = _llama_fields(folder, text)
    cfg.mm_hidden_size = int(raw.get("mm_hidden_size", 1024))
    cfg.projector_type = raw.get("mm_projector_type", "linear")
    if cfg.projector_type not in ("linear", "mlp2x_gelu"):
        raise _unsupported(folder, "mm_projector_type", cfg.projector_type, "use linear or mlp2x_gelu")
    cfg.vision_tower = raw.get("mm_vision_tower") or raw.get("vision_tower") or cfg.vision_tower
    cfg.vision_select_layer = int(raw.get("mm_vision_select_layer", -2))
    extra = raw.get("extra") or {}
    unknown = set(extra) - KNOWN_EXTRA
    if unknown:
        raise _unsupported(folder, "extra", sorted(unknown), f"known keys are {sorted(KNOWN_EXTRA)}")
    if "zoom_ratio" in extra:
        cfg.has_hd, cfg.format = True, "release"
        cfg.zoom_ratio = _extra_int(folder, extra, "zoom_ratio", None, (2, 3, 4))
        cfg.lowres_size = _extra_int(folder, extra, "lowres_size", 336)
        cfg.highres_size = _extra_int(folder, extra, "highres_size", cfg.lowres_size * cfg.zoom_ratio)
        cfg.threshold = float(_extra_int(folder, extra, "threshold", 64, range(0, 255)))  # release default: 64
        if cfg.highres_size != cfg.lowres_size * cfg.zoom_ratio:
            raise _unsupported(folder, "extra.highres_size", cfg.highres_size, "it must be lowres_size * zoom_ratio")
    else:
        cfg.format = "llava"
    return cfg


def _extra_int(folder: Path, extra: dict, key: str, default, allowed=None) -> int:
    """An integer `extra` value. The release config stores them as strings ("3") and reads them with
    int(): "3.5", 3.5 or "x" would be a traceback or a silent truncation there, an error here."""
    value = extra.get(key, default)
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not text.isdigit() or (
            allowed is None and int(text) == 0):
        raise _unsupported(folder, f"extra.{key}", value, "it must be a positive integer (the release writes "
                           '"3" / "336" / "48")')
    number = int(text)
    if allowed is not None and number not in allowed:
        shown = f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range) else " or ".join(map(str, allowed))
        raise _unsupported(folder, f"extra.{key}", value, f"choose {shown} (the release uses zoom_ratio 3 and "
                           "threshold 48)")
    return number


def _llama_fields(folder: Path, text: dict) -> FlexConfig:
    if text.get("hidden_act", "silu") != "silu":
        raise _unsupported(folder, "hidden_act", text["hidden_act"], "LLaMA uses silu")
    if text.get("rope_scaling"):
        raise _unsupported(folder, "rope_scaling", text["rope_scaling"], "RoPE scaling is not implemented")
    if text.get("attention_bias") or text.get("mlp_bias"):
        raise _unsupported(folder, "attention_bias/mlp_bias", True, "LLaMA-1/2 layers have no biases")
    if text.get("tie_word_embeddings"):
        raise _unsupported(folder, "tie_word_embeddings", True, "LLaVA-1.5 has a separate lm_head")
    heads = int(text.get("num_attention_heads", 32))
    return FlexConfig(
        hidden_size=int(text.get("hidden_size", 4096)), num_layers=int(text.get("num_hidden_layers", 32)),
        num_heads=heads, num_kv_heads=int(text.get("num_key_value_heads") or heads),
        intermediate_size=int(text.get("intermediate_size", 11008)), vocab_size=int(text.get("vocab_size", 32000)),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-5)), rope_theta=float(text.get("rope_theta", 10000.0)),
        bos_token_id=int(text.get("bos_token_id", 1) or 1), eos_token_id=int(text.get("eos_token_id", 2) or 2),
    )


def _parse_llava_hf(folder: Path, raw: dict) -> FlexConfig:
    text = dict(raw.get("text_config") or {})
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise _unsupported(folder, "vision_feature_select_strategy", strategy, "only 'default' (CLS dropped)")
    if raw.get("projector_hidden_act", "gelu") != "gelu":
        raise _unsupported(folder, "projector_hidden_act", raw["projector_hidden_act"], "LLaVA-1.5 uses gelu")
    layer = raw.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise _unsupported(folder, "vision_feature_layer", layer, "a single layer index is supported")
    cfg = _llama_fields(folder, text)
    cfg.format = "llava-hf"
    vision = raw.get("vision_config") or {}
    cfg.mm_hidden_size = int(vision.get("hidden_size", 1024))
    cfg.projector_type = "mlp2x_gelu"
    cfg.vision_select_layer = layer
    cfg.vision_tower = "<embedded>"
    return cfg


_HF_RULES = [
    (r"^(model\.)?language_model\.model\.", "model."),
    (r"^(model\.)?language_model\.lm_head\.", "lm_head."),
    (r"^model\.language_model\.", "model."),
    (r"^(model\.)?multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^(model\.)?multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
]


def split_llava_hf(sd: dict) -> tuple[dict, dict]:
    """llava-hf names (old `language_model.model.*` or new `model.language_model.*`) -> (ours, CLIP's)."""
    lm, vision = {}, {}
    for k, v in sd.items():
        m = re.match(r"^(model\.)?vision_tower\.(.*)$", k)
        if m:
            vision[m.group(2)] = v
            continue
        for pat, rep in _HF_RULES:
            if re.match(pat, k):
                lm[re.sub(pat, rep, k)] = v
                break
        else:
            lm[k] = v
    return lm, vision


def _fit_clip_keys(clip, sd: dict) -> dict:
    """Match `vision_model.`-prefixed or flat CLIP key names to this transformers version's module."""
    own = set(clip.state_dict())
    prefixed = any(k.startswith("vision_model.") for k in own)
    out = {}
    for k, v in sd.items():
        flat = k[len("vision_model."):] if k.startswith("vision_model.") else k
        out["vision_model." + flat if prefixed else flat] = v
    return out


def load_clip(cfg: FlexConfig, folder: Path, embedded: dict | None, raw: dict):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if embedded is not None:
        clip = CLIPVisionModel(CLIPVisionConfig(**(raw.get("vision_config") or {})))
        return _fill_clip(clip, embedded, f"{folder}: vision tower weights")
    name = cfg.vision_tower
    path = local_clip_folder(folder, name)
    if path is not None:
        return _load_clip_folder(CLIPVisionModel, CLIPVisionConfig, path)
    try:
        found = local_folder(name)
    except FlexEvalError as e:  # --model is the LLaVA checkpoint: the fix for a missing tower is elsewhere
        why = str(e).split(";")[0].split(" (give")[0]
        hub = "" if looks_local(name) else (f"download it where a network exists (`huggingface-cli download "
                                             f"{name}`, into the hub cache this machine reads), or ")
        raise FlexEvalError(
            f"the vision tower {name} (mm_vision_tower in {folder / 'config.json'}) is not here ({why}): {hub}copy "
            f"its folder (config.json + weights) to {folder / Path(name).name}, where it is looked for first"
        ) from e
    return _load_clip_folder(CLIPVisionModel, CLIPVisionConfig, found)


def local_clip_folder(folder: Path, name: str) -> Path | None:
    """The vision tower's folder when it is on disk (as given, inside the checkpoint, or beside it)."""
    candidates = [Path(name), folder / name, folder / Path(name).name]
    return next((c for c in candidates if (c / "config.json").is_file()), None)


def _load_clip_folder(model_cls, config_cls, path: Path):
    config = config_cls.from_pretrained(str(path))  # takes a CLIPModel config's vision part as well
    clip = model_cls(config)
    sd = {}
    for k, v in read_state_dict(path).items():
        if k.startswith("text_model.") or k in ("logit_scale",) or k.startswith(("visual_projection", "text_projection")):
            continue
        sd[k] = v
    return _fill_clip(clip, sd, f"{path}: CLIP weights", "; is mm_vision_tower a CLIP ViT checkpoint?")


def _fill_clip(clip, sd: dict, what: str, hint: str = ""):
    """clip with the weights of sd (keys fitted to it); a weight it lacks is an error naming `what`."""
    missing, _ = clip.load_state_dict(_fit_clip_keys(clip, sd), strict=False)
    if missing:
        raise FlexEvalError(f"{what} missing: {missing[:5]}{hint}")
    return clip


def read_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FlexEvalError(f"{cfg_path} not found; a checkpoint folder holds config.json, weights and tokenizer.model")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise FlexEvalError(f"{cfg_path} is not valid JSON ({e})") from e


def load_pretrained(path_or_id: str | os.PathLike, dtype="auto", device: str = "auto",
                    options: RunOptions | None = None) -> FlexLlava:
    """Load a checkpoint folder or hub id into a FlexLlava ready for inference."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    folder = local_folder(str(path_or_id))
    raw = read_config(folder)
    cfg = parse_config(folder, raw)
    sd = read_state_dict(folder)
    embedded = None
    if cfg.format == "llava-hf":
        sd, embedded = split_llava_hf(sd)
    lm = LlavaLM(cfg)
    # A release checkpoint may carry unused tensors (e.g. rotary inv_freq); everything we need must be there.
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    own = {k: tuple(v.shape) for k, v in lm.state_dict().items()}
    raise_problems(shape_problems({k: (str(v.dtype), tuple(v.shape)) for k, v in sd.items()}, own, str(folder)),
                   f"checkpoint {folder}")
    missing, unexpected = lm.load_state_dict(sd, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("model.vision_tower")]
    if missing or unexpected:
        raise FlexEvalError(f"{folder}: weights do not match the {cfg.format} format: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    clip = load_clip(cfg, folder, embedded, raw)
    vision = VisionTower(clip, cfg.vision_select_layer)
    tok = LlavaTokenizer.from_folder(folder)
    raise_problems(tokenizer_problems(tok.path, tok.sp.vocab_size(), lm.model.embed_tokens.weight.shape[0],
                                      str(folder)), f"checkpoint {folder}")
    lm.to(device=device, dtype=torch_dtype).eval()
    vision.to(device=device, dtype=torch_dtype).eval()
    named = list(lm.named_parameters()) + [(f"vision.{k}", v) for k, v in vision.named_parameters()]
    raise_problems(non_finite_problems(named, str(folder), torch_dtype), f"checkpoint {folder}")
    # folder: where the files are (a hub snapshot for a hub id)
    return FlexLlava(lm, vision, tok, cfg, options, device=device, dtype=torch_dtype, source=str(path_or_id),
                     folder=folder)


# ---------------------------------------------------------------- issue 13/15: which implementation serves a checkpoint
# FlexLlava serves the LLaVA-1.5 formats under the release recipe (pad to square, v1 template, chunked
# tokenisation); a transformers vision-language checkpoint is served by HFVisionModel under its own
# recipe ("native": its processor, its chat template, its tokenizer on the whole string). Which one,
# and why not: model/kinds.py resolve_kind_and_recipe.

def load_model(path_or_id: str | os.PathLike, dtype="auto", device: str = "auto", options: RunOptions | None = None,
               model_kind: str = "auto", recipe: str | None = None, trust_remote_code: bool = False,
               min_pixels: int | None = None, max_pixels: int | None = None, image_options=()):
    """The runner's entry point: a FlexLlava (release recipe) or an HFVisionModel (native recipe)."""
    folder = local_folder(str(path_or_id), patterns=("*.json", "*.jinja", "*.safetensors", "*.model", "*.bin",
                                                     "*.txt", "*.py"))
    raw = read_config(folder)
    kind, recipe = resolve_kind_and_recipe(folder, raw, model_kind, recipe)
    if kind == "flexattention":
        if min_pixels is not None or max_pixels is not None or image_options:
            raise FlexEvalError("--min-pixels/--max-pixels/--image-option set a transformers image processor; "
                                "FlexLlava's resolution is the checkpoint's (336 px, FlexAttention: --zoom)")
        return load_pretrained(path_or_id, dtype=dtype, device=device, options=options)
    from .hf_checks import check_hf_files, check_hf_weights
    from .hf_processor import parse_image_options
    from .hf_vlm import HFVisionModel

    device = resolve_device(device)
    if dtype in (None, "auto") and device.startswith("cuda"):
        # the checkpoint's own half precision (Qwen2-VL is bfloat16: float16 overflows in it); else bfloat16
        saved = raw.get("torch_dtype") or raw.get("dtype") or (raw.get("text_config") or {}).get("torch_dtype")
        dtype = saved if saved in ("float16", "bfloat16") else "bfloat16"
    check_hf_files(folder)  # FlexLlava's checkpoint checks, same messages (model/hf_checks.py)
    model = HFVisionModel(folder, str(path_or_id), device, resolve_dtype(dtype, device),
                          trust_remote_code=trust_remote_code, min_pixels=min_pixels, max_pixels=max_pixels,
                          recipe=recipe, image_options=parse_image_options(image_options))
    check_hf_weights(model.model, folder, model.dtype)
    return model
