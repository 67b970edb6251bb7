"""Types of a checkpoint's config.json values, checked before they are used (issue 24): a size written
as "4096", a list or 1.5 was int()'s or float()'s traceback, or a model silently built one row wide.
Every message names the file, the field, the value and what it must be."""

from __future__ import annotations

from pathlib import Path

from flexeval.errors import FlexEvalError

POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "vocab_size", "mm_hidden_size", "max_position_embeddings")
INTS = ("bos_token_id", "eos_token_id", "mm_vision_select_layer")
POSITIVE_NUMBERS = ("rms_norm_eps", "rope_theta")
OBJECTS = ("extra", "text_config", "vision_config")
LISTS = ("architectures",)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _problem(key: str, value) -> str | None:
    if value is None:
        return None
    if key in POSITIVE_INTS and not (_is_int(value) and value > 0):
        return "a positive integer (e.g. 4096)"
    if key in INTS and not _is_int(value):
        return "an integer"
    if key in POSITIVE_NUMBERS and not ((_is_int(value) or isinstance(value, float)) and value > 0):
        return "a positive number (e.g. 1e-05)"
    if key in OBJECTS and not isinstance(value, dict):
        return "a JSON object {...}"
    if key in LISTS and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
        return 'a list of class names (e.g. ["LlavaLlamaForCausalLM"])'
    return None


def check_config_types(folder: Path, raw) -> None:
    """Raise a FlexEvalError for the first config value of the wrong type (also inside text_config)."""
    path = Path(folder) / "config.json"
    if not isinstance(raw, dict):
        raise FlexEvalError(f"{path}: not a JSON object; re-download the checkpoint's config.json")
    for prefix, section in (("", raw), ("text_config.", raw.get("text_config"))):
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            want = _problem(key, value)
            if want:
                raise FlexEvalError(f"{path}: {prefix}{key} = {value!r} must be {want}; restore the checkpoint's "
                                    "config.json (re-download it) or correct the value")
