"""`flexeval inspect`: one sample through the model, everything a user needs to check it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from flexeval.benchmarks.base import open_image
from flexeval.errors import FlexEvalError
from flexeval.model.conversation import IMAGE_TOKEN
from flexeval.model.image import pixels_sha256
from flexeval.requests import Choice, Generate
from flexeval.speed.counting import count_work


def inspect_sample(model: str, image: Path, prompt: str, options: list[str] | None = None,
                   max_new_tokens: int = 16, dtype: str = "float32", device: str = "cpu",
                   dump_logits: Path | None = None, raw: bool = False, selection: str | None = None,
                   model_kind: str = "auto", recipe: str | None = None, min_pixels: int | None = None,
                   max_pixels: int | None = None, trust_remote_code: bool = False, image_options=(),
                   count_flops: bool = False) -> dict:
    from flexeval.model import RunOptions, load_model

    if raw and IMAGE_TOKEN not in prompt:
        raise FlexEvalError(f"--raw prompt must contain {IMAGE_TOKEN} where the image goes")
    if not Path(image).is_file():
        raise FlexEvalError(f"image {image} not found")
    m = load_model(model, dtype=dtype, device=device, options=RunOptions(selection=selection), model_kind=model_kind,
                   recipe=recipe, min_pixels=min_pixels, max_pixels=max_pixels, trust_remote_code=trust_remote_code,
                   image_options=image_options)
    if m.recipe == "native":  # a transformers model: its own template and processor
        if raw:
            raise FlexEvalError("--raw gives FlexLlava a finished LLaVA prompt; a transformers model builds its "
                                "prompt from the question with its chat template (drop --raw)")
        from flexeval.model.hf_vlm import inspect_hf

        with count_work(m) if count_flops else contextlib.nullcontext({}) as flops:
            out = inspect_hf(m, open_image(str(image)), prompt, options, max_new_tokens)
        return out | ({"flops": flops} if count_flops else {})
    text = prompt if raw else m.prompt_text(Generate(question=prompt))  # the model's template (LLaVA v1)
    if not raw:
        m.tokenizer.check_template(text)
    from flexeval.model.length import check_request_length

    processed = m.preprocess(open_image(str(image)))
    request = Generate(question=prompt, max_new_tokens=max_new_tokens)
    check_request_length(m, request if not options else Choice(question=prompt, options=tuple(options)), text)
    results, logits, nll, flops = _run(m, text, options, processed, max_new_tokens, count_flops)
    res = results[0]
    out = {
        "recipe": "release",
        "prompt": text,
        "prompt_ids": m.tokenizer.encode_prompt(text),
        "pixels_sha256": pixels_sha256(processed.pixels),
        "n_prompt_tokens": res.n_prompt_tokens,
        "generated_ids": res.token_ids,
        "generated_text": res.text,
        "selected_per_layer": res.selected_per_layer,
        "hd_tokens": (m.grid * m.zoom) ** 2 if m.use_hd else 0,
        "selection": m.options.selection,
        "dtype": str(m.dtype).replace("torch.", ""),
        "device": str(m.device),
    }
    if count_flops:
        out["flops"] = flops
    if options:
        out["option_nll"] = dict(zip(options, nll))
        out["prediction"] = options[min(range(len(nll)), key=lambda i: nll[i])]
    if dump_logits:
        from safetensors.torch import save_file

        Path(dump_logits).parent.mkdir(parents=True, exist_ok=True)
        save_file({"logits": logits[:1].float().contiguous().cpu()}, str(dump_logits))
        out["logits_file"] = str(dump_logits)
    return out


def _run(m, text: str, options, processed, max_new_tokens: int, count_flops: bool):
    """Generation (and the options' scoring) of the sample -> (results, prefill logits, option NLLs, flops).
    count_flops: flops = {"total": FLOPs torch's FlopCounterMode saw (math SDPA), "hires_projected_tokens":
    rows through the k_proj_hd projections} of everything the model ran for the sample, counted while it ran."""
    nll = None
    with count_work(m) if count_flops else contextlib.nullcontext({}) as flops:
        results, logits = m.generate_prompts([text], [processed], [max_new_tokens], return_prefill_logits=True)
        if options:
            nll = m.choose_prompts([text], [processed], [tuple(options)], [False])[0].option_nll
    return results, logits, nll, flops
