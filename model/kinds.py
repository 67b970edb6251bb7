"""Which code can serve a checkpoint's format, and why not (issue 24): a LLaVA-1.5 original-format or
FlexAttention release checkpoint (LlavaLlamaForCausalLM, `mm_*` keys, FlexAttention's `extra`) is read
by FlexLlava only. Transformers has no class for it (its `llava` type is the llava-hf layout with
`text_config`/`vision_config`), no processor or chat template comes with it, and its weights use
LLaVA's own names. So under `--model-kind auto` a value FlexLlava cannot parse is that value's error,
never a fall-through to transformers (which then failed on a missing processor_class), and
`--recipe native` / `--model-kind hf` on it say that it cannot run natively, and why.

`resolve_kind_and_recipe` (which code serves a checkpoint, under which recipe) lives here too; it is
still importable from model/loading.py, its home before.
"""

from __future__ import annotations

from pathlib import Path

from flexeval.errors import FlexEvalError


def is_original_llava(raw: dict) -> bool:
    """LLaVA-1.5's own layout (the release and liuhaotian/llava-v1.5-*), not llava-hf's."""
    archs = raw.get("architectures") or []
    if "text_config" in raw or "LlavaForConditionalGeneration" in archs:
        return False
    return "LlavaLlamaForCausalLM" in archs or "mm_vision_tower" in raw or raw.get("model_type") in (
        "llava", "llava_llama")


def not_native(folder: Path, raw: dict, asked: str) -> FlexEvalError:
    """The error for `asked` (--recipe native / --model-kind hf) on an original-format checkpoint."""
    what = ("a FlexAttention release checkpoint" if "extra" in raw else "a LLaVA-1.5 checkpoint in its original "
            "format")
    return FlexEvalError(
        f"{asked}: {Path(folder) / 'config.json'} is {what} (architectures "
        f"{raw.get('architectures') or '?'}, mm_* keys{', extra: the high-res view' if 'extra' in raw else ''}), "
        "which cannot run natively: transformers has no model class for this layout (its 'llava' is the llava-hf "
        "layout), the checkpoint has no processor or chat template of its own, and its weights use LLaVA's names. "
        "It runs with FlexLlava under LLaVA-1.5's release recipe: leave out --recipe and --model-kind (or give "
        "--recipe release); for transformers' own recipe, evaluate the llava-hf conversion (llava-hf/llava-1.5-7b-hf)")


# ---- moved from model/loading.py (issue 13/15): which implementation serves a checkpoint

MODEL_KINDS = ("auto", "flexattention", "hf")
RECIPES = ("release", "native")


def _llava15_format(raw: dict) -> bool:
    """A config FlexLlava reads: the release / original LLaVA-1.5 (LlavaLlamaForCausalLM) or llava-hf."""
    archs = raw.get("architectures") or []
    return ("LlavaLlamaForCausalLM" in archs or "mm_vision_tower" in raw or "LlavaForConditionalGeneration" in archs
            or (raw.get("model_type") == "llava" and "text_config" not in raw))


def _parses(folder: Path, raw: dict) -> bool:
    from .loading import parse_config

    try:
        parse_config(folder, raw)
        return True
    except FlexEvalError:  # e.g. a llava-hf checkpoint on a Qwen or Mistral LLM: transformers serves it
        return False


def resolve_kind_and_recipe(folder: Path, raw: dict, model_kind: str, recipe: str | None) -> tuple[str, str]:
    """("flexattention" | "hf", "release" | "native") for a checkpoint, or a FlexEvalError saying what to pass."""
    from .hf_vlm import is_hf_vlm_config

    if model_kind not in MODEL_KINDS:
        raise FlexEvalError(f"unknown --model-kind '{model_kind}'; choose {', '.join(MODEL_KINDS)}")
    if recipe not in (None, *RECIPES):
        raise FlexEvalError(f"unknown --recipe '{recipe}'; choose release (LLaVA-1.5's eval recipe) or native "
                            "(the checkpoint's own processor, chat template and tokenizer)")
    ours = _llava15_format(raw)
    hf = is_hf_vlm_config(raw) or "auto_map" in raw
    if is_original_llava(raw):  # FlexLlava or nothing: its parse errors are the errors (model/kinds.py)
        if recipe == "native" or model_kind == "hf":
            raise not_native(folder, raw, "--recipe native" if recipe == "native" else "--model-kind hf")
        hf = False
    if model_kind == "auto":
        model_kind = "flexattention" if ours and recipe != "native" and (not hf or _parses(folder, raw)) else "hf"
    if model_kind == "flexattention":
        if not ours:
            raise FlexEvalError(f"{folder / 'config.json'}: not a LLaVA-1.5 / FlexAttention / llava-hf checkpoint, so "
                                "FlexLlava cannot serve it; use --model-kind hf (or auto)")
        if recipe == "native":
            raise FlexEvalError("--recipe native with --model-kind flexattention: FlexLlava implements LLaVA-1.5's "
                                "release recipe; a llava-hf checkpoint's native recipe is served by --model-kind hf")
        return "flexattention", "release"
    if not hf:
        raise FlexEvalError(f"{folder / 'config.json'}: model_type {raw.get('model_type')!r} is not a transformers "
                            "image-text-to-text model (AutoModelForImageTextToText) nor a LLaVA-1.5 format")
    if recipe == "release":
        raise FlexEvalError(f"--recipe release is LLaVA-1.5's recipe (pad to square, v1 template, chunked "
                            f"tokenisation), served by FlexLlava for LLaVA-1.5 formats only; {folder} is served "
                            "with its own processor and chat template: use --recipe native")
    return "hf", "native"
