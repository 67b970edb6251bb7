"""Which code can serve a checkpoint's format, and why not (issue 24): a LLaVA-1.5 original-format or
FlexAttention release checkpoint (LlavaLlamaForCausalLM, `mm_*` keys, FlexAttention's `extra`) is read
by FlexLlava only. Transformers has no class for it (its `llava` type is the llava-hf layout with
`text_config`/`vision_config`), no processor or chat template comes with it, and its weights use
LLaVA's own names. So under `--model-kind auto` a value FlexLlava cannot parse is that value's error,
never a fall-through to transformers (which then failed on a missing processor_class), and
`--recipe native` / `--model-kind hf` on it say that it cannot run natively, and why.
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
