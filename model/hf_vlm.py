"""Any transformers vision-language model as a baseline, behind the same two request kinds.

`HFVisionModel` wraps a checkpoint that `AutoModelForImageTextToText` (or the older
`AutoModelForVision2Seq`) loads, with its own processor and chat template: the "native" recipe.
A benchmark's request carries `question` (the user turn as the benchmark words it); the prompt is
the checkpoint's chat template applied to [image, question] with the generation prompt, tokenised
as one string the way `processor.apply_chat_template(..., tokenize=True)` does it. A request's
`system` (official V*'s variant of LLaVA's system line) is not applied: the template has its own.

- `generate([(Generate, image), ...])`: greedy, batched with left padding, stops at the
  checkpoint's EOS ids; a row's tokens end at its first EOS (kept) or its own max_new_tokens.
- `choose([(Choice, image), ...])`: mean NLL of each option's tokens. An option's text is what the
  chat template writes for an assistant reply holding that option (e.g. " red" after "ASSISTANT:",
  "red" after "<|im_start|>assistant\\n"), cut where the option ends; its ids are the tail of the
  whole string's tokens. The prompt runs once per question and its KV cache is shared by all the
  options (one batched forward over the options); a model that returns no cache gets one full
  forward per option.

Images reach the model as RGB PIL images: the processor owns resizing, cropping and tiling, so
the benchmark's `image_mode` (the release's pad/crop) does not apply. Nothing is kept between calls.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from flexeval.errors import FlexEvalError

from .flex_llava import ChoiceResult, GenerationResult
from .hf_checks import check_pixel_budget
from .hf_processor import load_processor, processor_knobs, resolution_settings


@dataclass(frozen=True)
class RGBImage:
    """Picklable preprocessor for data workers: the decoded image, RGB, untouched (the processor resizes)."""

    def __call__(self, img, mode: str = "pad"):
        from .image import to_rgb8

        return to_rgb8(img)  # 16-bit / float / alpha images by the one rule (model/image.py)


@dataclass
class HFModelConfig:
    """What run.json records of a transformers checkpoint (FlexLlava's FlexConfig counterpart)."""

    model_type: str
    architectures: list[str]
    model_class: str
    format: str = ""
    has_hd: bool = False  # no FlexAttention high-res path
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.format = self.format or f"hf:{self.model_type}"

    def to_dict(self) -> dict:
        return asdict(self)


def _auto_model_class():
    import transformers

    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise FlexEvalError("this transformers has neither AutoModelForImageTextToText nor AutoModelForVision2Seq; "
                        "install transformers>=5.17")


class HFVisionModel:
    def __init__(self, folder: Path, source: str, device: str, dtype: torch.dtype, trust_remote_code: bool = False,
                 min_pixels: int | None = None, max_pixels: int | None = None, recipe: str = "native",
                 image_options: dict | None = None):
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.folder, self.source, self.recipe = Path(folder), source, recipe
        self.device, self.dtype = torch.device(device), dtype
        try:
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except ValueError as e:  # unknown model_type, or remote code not trusted
            raise FlexEvalError(f"{folder / 'config.json'}: transformers cannot read this config ({e}); "
                                "if it is code in the checkpoint, pass --trust-remote-code") from e
        overrides = dict(image_options or {})
        overrides.update({k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None})
        self.processor, template = load_processor(self.folder, trust_remote_code, overrides)
        if not template:
            raise FlexEvalError(
                f"{folder}: the checkpoint has no chat template (no chat_template.jinja, chat_template.json or "
                "tokenizer_config.json chat_template); flexeval builds an HF model's prompt with the model's own "
                "template: save one with processor.save_pretrained, or evaluate it with --model-kind flexattention "
                "if it is a LLaVA-1.5 checkpoint")
        self.chat_template = template
        self._check_overrides(overrides)
        try:
            self.model = _auto_model_class().from_pretrained(str(folder), dtype=dtype,
                                                             trust_remote_code=trust_remote_code)
        except ValueError as e:
            raise FlexEvalError(f"{folder}: not a vision-language checkpoint that AutoModelForImageTextToText "
                                f"loads ({e})") from e
        self.model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation batches: prompts end at the same column
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()
        self.resolution = resolution_settings(self.processor.image_processor)
        self.overrides = overrides
        self.cfg = HFModelConfig(model_type=config.model_type, architectures=list(config.architectures or []),
                                 model_class=type(self.model).__name__)
        self.kind = self.cfg.format

    def _check_overrides(self, overrides: dict) -> None:
        ip = self.processor.image_processor
        for k in overrides:
            if k not in processor_knobs(ip):
                flag = f"--{k.replace('_', '-')}" if k in ("min_pixels", "max_pixels") else f"--image-option {k}"
                raise FlexEvalError(f"{flag}: the image processor {type(ip).__name__} of {self.folder} has no "
                                    f"setting '{k}'; its resolution is set by {resolution_settings(ip)}")
        check_pixel_budget(ip, overrides, self.folder)  # below its smallest image, min > max (model/hf_checks.py)

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            raise FlexEvalError(f"{self.folder}: neither generation_config.json nor the tokenizer defines an EOS "
                                "token; generation could not stop")
        return [eos] if isinstance(eos, int) else list(eos)

    # ---- identity (run.json, model tag) ----
    @property
    def resolved(self) -> dict:
        return {"recipe": self.recipe, "resolution": self.resolution, "resolution_overrides": self.overrides,
                "chat_template_sha": hashlib.sha256(self.chat_template.encode()).hexdigest()[:16],
                "eos_ids": self.eos_ids, "model_class": self.cfg.model_class}

    def tag_parts(self) -> list[str]:
        """Model-tag parts: the recipe, then each resolution override (a default resolution adds none)."""
        parts = [self.recipe]
        for k, v in sorted(self.overrides.items()):
            parts.append(re.sub(r"[^A-Za-z0-9._]+", "", f"{k.replace('_pixels', 'px')}{json.dumps(v)}"))
        return parts

    @property
    def preprocessor(self) -> RGBImage:
        return RGBImage()

    # ---- prompts ----
    def prompt_text(self, question: str) -> str:
        if not question:
            raise FlexEvalError("the request has no `question` text: a transformers model builds its prompt from it "
                                "with its own chat template (the benchmark's request() must fill Request.question)")
        return self._render([_user(question)], add_generation_prompt=True)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _adds_special(self, text: str) -> bool:
        # as processor.apply_chat_template(tokenize=True): a template that writes BOS itself gets no second one
        bos = self.tokenizer.bos_token
        return not (bos is not None and text.startswith(bos))

    def _inputs(self, texts: list[str], images: list):
        enc = self.processor(text=texts, images=images, return_tensors="pt", padding=True,
                             add_special_tokens=self._adds_special(texts[0]))
        enc = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in enc.items()}
        for k, v in enc.items():
            if torch.is_tensor(v) and v.is_floating_point():
                enc[k] = v.to(self.dtype)
        return enc

    def option_text(self, question: str, prompt: str, option: str) -> str:
        """What follows the generation prompt when the template writes `option` as the assistant's reply."""
        full = self._render([_user(question), {"role": "assistant", "content": [{"type": "text", "text": option}]}],
                            add_generation_prompt=False)
        end = full.find(option, len(prompt))
        if not full.startswith(prompt) or end < 0:
            raise FlexEvalError(f"the chat template of {self.folder} does not write an assistant reply after its "
                                f"generation prompt ({prompt[-40:]!r}), so an option's tokens cannot be located")
        return full[len(prompt): end + len(option)]

    def option_ids(self, question: str, prompt: str, option: str, append_eos: bool) -> list[int]:
        special = self._adds_special(prompt)
        head = self.tokenizer(prompt, add_special_tokens=special)["input_ids"]
        full = self.tokenizer(prompt + self.option_text(question, prompt, option), add_special_tokens=special)["input_ids"]
        if full[: len(head)] != head or len(full) == len(head):
            raise FlexEvalError(f"option {option!r} does not tokenise as a suffix of its prompt under the tokenizer "
                                f"of {self.folder}")
        return full[len(head):] + ([self.eos_ids[0]] if append_eos else [])

    # ---- generation ----
    @torch.no_grad()
    def generate(self, items: list) -> list[GenerationResult]:
        """items: (Generate, RGB image) pairs -> one GenerationResult each, in order."""
        from transformers import GenerationConfig

        texts = [self.prompt_text(req.question) for req, _ in items]
        enc = self._inputs(texts, [im for _, im in items])
        max_new = max(req.max_new_tokens for req, _ in items)
        gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new, eos_token_id=self.eos_ids,
                               pad_token_id=self.tokenizer.pad_token_id)
        out = self.model.generate(**enc, generation_config=gen)
        t = enc["input_ids"].shape[1]
        results = []
        for i, (req, _) in enumerate(items):
            toks = out[i, t:].tolist()[: req.max_new_tokens]
            stop = next((k for k, x in enumerate(toks) if x in self.eos_ids), None)
            toks = toks if stop is None else toks[: stop + 1]
            ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
            results.append(GenerationResult(
                token_ids=toks, text=self.tokenizer.decode(toks, skip_special_tokens=True).strip(),
                n_prompt_tokens=len(ids), prompt=texts[i], prompt_ids=ids))
        return results

    # ---- likelihood scoring ----
    @torch.no_grad()
    def choose(self, items: list, share_prefix: bool = True) -> list[ChoiceResult]:
        """items: (Choice, RGB image) pairs -> per-option mean NLL; share_prefix=False: one forward per option."""
        return [self._choose_one(req, image, share_prefix) for req, image in items]

    def _choose_one(self, req, image, share_prefix: bool) -> ChoiceResult:
        prompt = self.prompt_text(req.question)
        suffixes = [self.option_ids(req.question, prompt, o, req.append_eos) for o in req.options]
        enc = self._inputs([prompt], [image])
        ids = enc["input_ids"][0].tolist()
        out = self.model(**enc, use_cache=share_prefix) if share_prefix else None
        if out is not None and _cache_of(out) is not None:
            nll = self._shared_prefix_nll(enc, out, suffixes)
        else:
            nll = [self._full_forward_nll(enc, s) for s in suffixes]
        return ChoiceResult(option_nll=nll, n_prompt_tokens=len(ids), prompt=prompt, prompt_ids=ids)

    def _shared_prefix_nll(self, enc, out, suffixes: list[list[int]]) -> list[float]:
        """Options as one batch of continuations of the prompt's cache, right-padded. No attention mask:
        the prompt has no padding and a real token never sees the padding after it (causal), so every
        family derives its positions from the cache length alone (Qwen2-VL's M-RoPE adds its deltas)."""
        first = F.log_softmax(out.logits[0, -1].float(), -1)
        n, rest = len(suffixes), max(len(s) for s in suffixes) - 1
        if rest == 0:
            return [-float(first[s[0]]) for s in suffixes]
        cache = _cache_of(out)
        cache.batch_repeat_interleave(n)
        pad = self.tokenizer.pad_token_id
        tok = torch.tensor([s[:-1] + [pad] * (rest - len(s) + 1) for s in suffixes], device=self.device)
        logits = self.model(input_ids=tok, use_cache=True, **{self._cache_kwarg: cache}).logits
        logp = F.log_softmax(logits.float(), -1)
        nll = []
        for i, s in enumerate(suffixes):
            terms = [-first[s[0]]] + [-logp[i, k - 1, s[k]] for k in range(1, len(s))]
            nll.append(float(torch.stack(terms).mean()))
        return nll

    @property
    def _cache_kwarg(self) -> str:
        # transformers renamed forward's `past_key_values` to `cache` (5.2x); the old name warns there
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _full_forward_nll(self, enc, suffix: list[int]) -> float:
        t = enc["input_ids"].shape[1]
        extra = torch.tensor([suffix[:-1]], device=self.device, dtype=enc["input_ids"].dtype)
        batch = dict(enc)
        for k, v in enc.items():  # per-token tensors grow with the option (ids, mask, token-type ids)
            if torch.is_tensor(v) and v.dim() == 2 and v.shape == (1, t):
                fill = extra if k == "input_ids" else torch.full_like(extra, 1 if k == "attention_mask" else 0)
                batch[k] = torch.cat([v, fill.to(v.dtype)], 1)
        logp = F.log_softmax(self.model(**batch, use_cache=False).logits[0, t - 1:].float(), -1)
        return float(torch.stack([-logp[k, x] for k, x in enumerate(suffix)]).mean())


def _cache_of(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _user(question: str) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}


def is_hf_vlm_config(raw: dict) -> bool:
    """A config.json whose model_type transformers maps to an image-text-to-text (or vision-to-text) model."""
    from transformers.models.auto import modeling_auto

    mt = raw.get("model_type")
    return any(mt in getattr(modeling_auto, name, {}) for name in (
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"))


@torch.no_grad()
def inspect_hf(model: HFVisionModel, image, question: str, options: list[str] | None, max_new_tokens: int) -> dict:
    """`flexeval inspect` for a transformers model: the exact prompt, ids, pixels' hash, reply, option NLLs."""
    from types import SimpleNamespace

    from .image import pixels_sha256

    enc = model._inputs([model.prompt_text(question)], [image.convert("RGB")])
    res = model.generate([(SimpleNamespace(question=question, max_new_tokens=max_new_tokens), image)])[0]
    out = {"recipe": model.recipe, "kind": model.kind, "prompt": res.prompt, "prompt_ids": res.prompt_ids,
           "n_prompt_tokens": res.n_prompt_tokens, "pixels_sha256": pixels_sha256(enc["pixel_values"]),
           "pixels_shape": list(enc["pixel_values"].shape), "generated_ids": res.token_ids,
           "generated_text": res.text, "resolution": model.resolution, "dtype": str(model.dtype).replace("torch.", ""),
           "device": str(model.device)}
    if options:
        req = SimpleNamespace(question=question, options=tuple(options), append_eos=False)
        nll = model.choose([(req, image)])[0].option_nll
        out["option_nll"] = dict(zip(options, nll))
        out["prediction"] = options[min(range(len(nll)), key=lambda i: nll[i])]
    return out
