"""A transformers checkpoint's processor, built from its pieces so torchvision is never imported.

`AutoProcessor.from_pretrained` would also build a video processor (Qwen2-VL and others), and
picks the torchvision image backend when the package is present: PyPI's torchvision is a CUDA
build that fails to import on many machines. Here the processor class named in the checkpoint is
given its tokenizer, its image processor on the PIL backend, and its chat template; the video /
audio parts are left out (flexeval feeds one image per prompt).

The image-resolution knobs (`--min-pixels/--max-pixels`) are applied to the image processor, and
`resolution_settings` lists what decides the input resolution, for run.json and the model tag.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

from flexeval.errors import FlexEvalError

# Image-processor fields that decide how many pixels (and so image tokens) the model sees.
RESOLUTION_FIELDS = ("size", "crop_size", "min_pixels", "max_pixels", "patch_size", "merge_size",
                     "image_grid_pinpoints", "do_pad", "do_center_crop", "do_resize", "resample",
                     "max_image_tiles", "max_patches", "min_patches", "max_dynamic_patch", "do_image_splitting")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise FlexEvalError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from e


def chat_template_of(folder: Path, tokenizer) -> str | None:
    """The checkpoint's chat template: chat_template.jinja, chat_template.json, or the tokenizer's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    from_json = _read_json(folder / "chat_template.json").get("chat_template")
    return from_json or getattr(tokenizer, "chat_template", None)


def _image_processor(folder: Path, trust_remote_code: bool, overrides: dict):
    from transformers import AutoImageProcessor

    kw = {"trust_remote_code": trust_remote_code, **overrides}
    try:
        return AutoImageProcessor.from_pretrained(str(folder), backend="pil", **kw)
    except TypeError:  # a transformers 5 release before `backend`: use_fast=False is the PIL one
        return AutoImageProcessor.from_pretrained(str(folder), use_fast=False, **kw)


def image_only(cls):
    """`cls` accepting None for its video/audio sub-processors (its __init__ type-checks every one)."""

    class ImageOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name not in ("image_processor", "tokenizer"):
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly


def check_torchvision() -> None:
    """transformers imports torchvision whenever it is installed (image_utils): a broken one breaks every
    processor. Absent is fine (flexeval never needs it); present but failing is a clear error."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as e:
        raise FlexEvalError(f"torchvision is installed but cannot be imported ({type(e).__name__}: {e}); transformers "
                            "imports it whenever it is installed, so its processors fail. flexeval does not need it: "
                            "pip uninstall torchvision (or install the build matching your torch)") from e


def load_processor(folder: Path, trust_remote_code: bool = False, image_overrides: dict | None = None):
    """(processor, chat template) of a checkpoint folder; errors name the file to fix."""
    check_torchvision()
    import transformers
    from transformers import AutoTokenizer

    proc_cfg = _read_json(folder / "processor_config.json")
    name = (proc_cfg.get("processor_class") or _read_json(folder / "preprocessor_config.json").get("processor_class")
            or _read_json(folder / "tokenizer_config.json").get("processor_class"))
    remote = "AutoProcessor" in (proc_cfg.get("auto_map") or {})
    if remote or (name and not hasattr(transformers, name)):
        if not trust_remote_code:
            raise FlexEvalError(f"{folder}: the processor {name or '(auto_map)'} is code in the checkpoint, not in "
                                "transformers; pass --trust-remote-code if you trust it")
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True, **(image_overrides or {}))
        return processor, chat_template_of(folder, processor.tokenizer) or getattr(processor, "chat_template", None)
    if not name:
        raise FlexEvalError(f"{folder}: no processor_class in processor_config.json, preprocessor_config.json or "
                            "tokenizer_config.json; save the checkpoint's processor with save_pretrained")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    image_processor = _image_processor(folder, trust_remote_code, dict(image_overrides or {}))
    template = chat_template_of(folder, tokenizer)
    extra = {k: v for k, v in proc_cfg.items()
             if k not in ("processor_class", "auto_map") and not isinstance(v, dict)}
    cls = image_only(getattr(transformers, name))
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        extra = {k: v for k, v in extra.items() if k in params}
    subs = {"image_processor": image_processor, "tokenizer": tokenizer}
    for attr in cls.get_attributes():
        subs.setdefault(attr, None)
    processor = cls(**subs, chat_template=template, **extra)
    return processor, template


def parse_image_options(pairs) -> dict:
    """["max_patches=6", "do_image_splitting=false"] -> {"max_patches": 6, "do_image_splitting": False}
    (values read as JSON, else kept as text)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise FlexEvalError(f"--image-option {pair!r}: write KEY=VALUE, e.g. --image-option max_patches=6")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def processor_knobs(image_processor) -> set[str]:
    """The keyword arguments an image processor declares (its `valid_kwargs` TypedDict and bases)."""
    declared = getattr(image_processor, "valid_kwargs", None)
    if declared is None:  # a processor without the declaration: its attributes
        return {k for k in vars(image_processor) if not k.startswith("_")}
    return {k for c in declared.__mro__ for k in getattr(c, "__annotations__", {})}


def resolution_settings(image_processor) -> dict:
    """The image processor's resolution-deciding fields (JSON-ready), for run.json."""
    out = {"image_processor": type(image_processor).__name__}
    for f in RESOLUTION_FIELDS:
        v = getattr(image_processor, f, None)
        if v is None:
            continue
        if dataclasses.is_dataclass(v) or hasattr(v, "items"):  # SizeDict and plain dicts
            v = {k: x for k, x in (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v).items()
                 if x is not None}
        out[f] = v if isinstance(v, (int, float, str, bool, list, dict)) else str(v)
    return out
