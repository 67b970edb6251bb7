"""The model's position limit, checked per request before it runs (issue 24): a question or an option
longer than the model's positions (max_position_embeddings: 4096 for the 7B) was accepted; RoPE has
no table to run out of, so the positions past the limit were silently wrong, and a megabyte of
question grew the process to 13 GB while Ctrl-C waited for the forward.

`length_problem(model, request)` is None or a sentence naming the count and the limit. A text over
16 characters per position (sentencepiece pieces are at most 16 characters) is refused without
tokenising it, so the check itself stays fast and interruptible on any input.

FlexLlava: the prompt's tokens with `<image>` replaced by its (lowres/14)^2 image positions (the
high-res keys take the low-res positions: no extra ones), plus max_new_tokens (Generate) or the
longest option's tokens (Choice). A transformers model: the question's and options' tokens and
max_new_tokens only (its image tokens depend on its processor and the image: a lower bound).
"""

from __future__ import annotations

import json
from pathlib import Path

from flexeval.requests import Choice, Generate

from .tokenizer import IMAGE_TOKEN_ID

MAX_CHARS_PER_POSITION = 16


def max_positions(model) -> int | None:
    """max_position_embeddings of the checkpoint (its text model's), or None where the config has none."""
    config = getattr(getattr(model, "model", None), "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        n = getattr(config.get_text_config(), "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None
    try:
        raw = json.loads((Path(model.folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    n = raw.get("max_position_embeddings") or (raw.get("text_config") or {}).get("max_position_embeddings")
    return n if isinstance(n, int) and n > 0 else None


def _texts(request, text: str | None) -> list[str]:
    return [text or "", request.question, *(request.options if isinstance(request, Choice) else ())]


def _positions(model, request, text: str | None) -> tuple[int, str]:
    """(positions the request needs, how they add up); text: the finished prompt, else the model's rendering."""
    new = request.max_new_tokens if isinstance(request, Generate) else 0
    tok = model.tokenizer
    if hasattr(tok, "encode_prompt"):  # FlexLlava: the exact prompt as it runs (its v1 template around the question)
        text = text or model.prompt_text(request)
        image = (model.cfg.lowres_size // 14) ** 2
        ids = tok.encode_prompt(text)
        prompt = len(ids) - 1 + image if IMAGE_TOKEN_ID in ids else len(ids)
        if isinstance(request, Choice):
            new = max(len(tok.encode_option(text, o, request.append_eos)[1]) for o in request.options)
        return prompt + new, f"{prompt} prompt (with {image} image) + {new} answer"
    prompt = len(tok(request.question, add_special_tokens=False)["input_ids"])
    if isinstance(request, Choice):
        new = max(len(tok(" " + o, add_special_tokens=False)["input_ids"]) for o in request.options)
    return prompt + new, f"{prompt} question (without the image) + {new} answer"


def length_problem(model, request, limit: int | None, text: str | None = None) -> str | None:
    """None, or why `request` cannot run within `limit` positions (the skipped row's text); text: the
    finished prompt where the caller has one (`inspect --raw`), else the model renders the request."""
    if limit is None:
        return None
    longest = max(len(t or "") for t in _texts(request, text))
    if longest > MAX_CHARS_PER_POSITION * limit:
        return (f"a text of the item is {longest} characters, over the model's {limit} positions at any "
                f"tokenisation; it cannot run (shorten the question or option in the data)")
    n, how = _positions(model, request, text)
    if n > limit:
        return (f"the item needs {n} positions ({how}), over the model's max_position_embeddings {limit}; positions "
                f"past it are untrained (shorten the question or option, or lower --max-new-tokens)")
    return None


def check_request_length(model, request, text: str | None = None) -> None:
    """`inspect` and `attention` (one prompt the user typed): an overlong one is an error, not a run."""
    from flexeval.errors import FlexEvalError

    why = length_problem(model, request, max_positions(model), text)
    if why:
        raise FlexEvalError(f"--prompt: {why.replace('shorten the question or option in the data', 'shorten it')}")
