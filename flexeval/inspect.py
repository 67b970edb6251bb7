"""`flexeval inspect`: one sample through the model, everything a user needs to check it."""

from __future__ import annotations

from pathlib import Path

from flexeval.benchmarks.base import open_image
from flexeval.benchmarks.conversation import IMAGE_TOKEN, llava_v1_prompt
from flexeval.errors import FlexEvalError
from flexeval.requests import Choice, Generate


def inspect_sample(model: str, image: Path, prompt: str, options: list[str] | None = None,
                   max_new_tokens: int = 16, dtype: str = "float32", device: str = "cpu",
                   dump_logits: Path | None = None, raw: bool = False, selection: str | None = None) -> dict:
    from flexeval.model import RunOptions, load_pretrained

    if raw:
        if IMAGE_TOKEN not in prompt:
            raise FlexEvalError(f"--raw prompt must contain {IMAGE_TOKEN} where the image goes")
        text = prompt
    else:
        text = llava_v1_prompt(prompt, with_image=IMAGE_TOKEN not in prompt)
    if not Path(image).is_file():
        raise FlexEvalError(f"image {image} not found")
    m = load_pretrained(model, dtype=dtype, device=device, options=RunOptions(selection=selection))
    if not raw:
        m.tokenizer.check_template(text)
    processed = m.preprocess(open_image(str(image)))
    request = Generate(prompt=text, question=prompt, max_new_tokens=max_new_tokens)
    results, logits = m.generate([(request, processed)], return_prefill_logits=True)
    res = results[0]
    out = {
        "prompt": text,
        "prompt_ids": m.tokenizer.encode_prompt(text),
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
