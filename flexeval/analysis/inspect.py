"""`flexeval inspect`: one sample through the model, everything a user needs to check it."""

from __future__ import annotations

from pathlib import Path

from flexeval.benchmarks.base import open_image
from flexeval.benchmarks.conversation import IMAGE_TOKEN, llava_v1_prompt
from flexeval.errors import FlexEvalError
from flexeval.model.image import pixels_sha256
from flexeval.requests import Choice, Generate


def inspect_sample(model: str, image: Path, prompt: str, options: list[str] | None = None,
                   max_new_tokens: int = 16, dtype: str = "float32", device: str = "cpu",
                   dump_logits: Path | None = None, raw: bool = False, selection: str | None = None,
                   model_kind: str = "auto", recipe: str | None = None, min_pixels: int | None = None,
                   max_pixels: int | None = None, trust_remote_code: bool = False, image_options=()) -> dict:
    from flexeval.model import RunOptions, load_model

    if raw:
        if IMAGE_TOKEN not in prompt:
            raise FlexEvalError(f"--raw prompt must contain {IMAGE_TOKEN} where the image goes")
        text = prompt
    else:
        text = llava_v1_prompt(prompt, with_image=IMAGE_TOKEN not in prompt)
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

        return inspect_hf(m, open_image(str(image)), prompt, options, max_new_tokens)
    if not raw:
        m.tokenizer.check_template(text)
    from flexeval.model.length import check_request_length

    processed = m.preprocess(open_image(str(image)))
    request = Generate(prompt=text, question=prompt, max_new_tokens=max_new_tokens)
    check_request_length(m, request if not options else Choice(prompt=text, question=prompt, options=tuple(options)))
    results, logits = m.generate([(request, processed)], return_prefill_logits=True)
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
    if options:
        nll = m.choose([(Choice(prompt=text, question=prompt, options=tuple(options)), processed)])[0].option_nll
        out["option_nll"] = dict(zip(options, nll))
        out["prediction"] = options[min(range(len(nll)), key=lambda i: nll[i])]
    if dump_logits:
        from safetensors.torch import save_file

        Path(dump_logits).parent.mkdir(parents=True, exist_ok=True)
        save_file({"logits": logits[:1].float().contiguous().cpu()}, str(dump_logits))
        out["logits_file"] = str(dump_logits)
    return out
