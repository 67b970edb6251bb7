"""`flexeval speed --count-only`: the counted TFLOP per sample of every generate/choice row of a run,
for any --arch, from the FLOP accounting alone (flops.py): no model is built or run.

The request is the bench's own (its prompt and options sized in the tokenizer the random-weight
models use). Selection `attention` depends on the weights and the image, so it is counted at the
paper's ~10% ratio (`ATTENTION_RATIO`), each row's selection projected once (a lower bound: the
rows' union of a real run can be larger). Every other figure is exact arithmetic.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

from flexeval.errors import FlexEvalError
from flexeval.speed.flops import ClipShape, RequestShape, choice_flops, generate_flops

ATTENTION_RATIO = 0.1
SELECTIONS = ("none", "attention", "center", "all")


def arch_shapes(arch: str):
    """(FlexConfig, ClipShape) of a named --arch."""
    from flexeval.model.config import FlexConfig
    from flexeval.model.random_weights import ARCHS, CLIP_ARCHS

    if arch not in ARCHS:
        raise FlexEvalError(f"unknown --arch '{arch}'; choose one of {', '.join(ARCHS)}")
    cfg = FlexConfig(**ARCHS[arch], has_hd=True)
    c = CLIP_ARCHS[arch]
    layers = c["num_hidden_layers"] + cfg.vision_select_layer + 1  # the tower stops at the selected layer
    return cfg, ClipShape(c["hidden_size"], c["intermediate_size"], layers, c["image_size"], c["patch_size"])


def bench_request() -> tuple[int, list[int]]:
    """(prompt tokens with the 576 image tokens, option tokens) of the bench's request."""
    from flexeval.model.tiny import train_tokenizer
    from flexeval.model.tokenizer import LlavaTokenizer
    from flexeval.speed.measure import Workload

    with tempfile.TemporaryDirectory() as folder:
        tok = LlavaTokenizer(train_tokenizer(Path(folder)))
    work = Workload(SimpleNamespace(tokenizer=tok))
    prompt = len(tok.encode_prompt(work.prompt)) - 1 + 576
    return prompt, [len(tok.encode_option(work.prompt, o)[1]) for o in work.options]


def request_shape(cfg, selection: str, prompt_tokens: int, zoom: int = 3) -> RequestShape:
    n = (24 * zoom) ** 2
    if selection == "none":
        return RequestShape(prompt_tokens, 1, 0, 0.0)
    hd_layers = cfg.num_layers - cfg.first_select_layer - 1
    selected = {"all": n, "center": (3 * 8 * zoom // 3) ** 2, "attention": ATTENTION_RATIO * n}[selection]
    return RequestShape(prompt_tokens, 1 + zoom ** 2, hd_layers, float(selected))


def count_rows(arch: str, new_tokens: int = 8) -> dict:
    cfg, clip = arch_shapes(arch)
    prompt, options = bench_request()
    rows = []
    for kind in ("generate", "choice"):
        none = None
        for sel in SELECTIONS:
            shape = request_shape(cfg, sel, prompt)
            if kind == "generate":
                flops = generate_flops(cfg, clip, shape, new_tokens)
                uncached = generate_flops(cfg, clip, RequestShape(shape.prompt_tokens, shape.n_crops, shape.hd_layers,
                                                                  shape.selected, shape.selected * new_tokens),
                                          new_tokens)
            else:
                flops = uncached = choice_flops(cfg, clip, shape, options)
            none = flops if sel == "none" else none
            rows.append({"what": f"{kind} ({new_tokens} new tokens)" if kind == "generate"
                         else f"{kind} ({len(options)} options)", "selection": sel,
                         "selected_tokens": shape.selected, "tflop_per_sample": flops / 1e12,
                         "tflop_without_hires_cache": uncached / 1e12, "vs_none": flops / none})
    return {"arch": arch, "prompt_tokens": prompt, "option_tokens": options, "new_tokens": new_tokens, "rows": rows}


def format_counts(res: dict) -> str:
    from flexeval.results.accuracy import aligned

    head = (f"counted TFLOP per sample, --arch {res['arch']} (no model run): prompt {res['prompt_tokens']} tokens, "
            f"options {res['option_tokens']} tokens; attention counted at {ATTENTION_RATIO:.0%} selected (a lower bound)")
    cols = ["what", "selection", "selected_tokens", "tflop_per_sample", "tflop_without_hires_cache", "vs_none"]
    body = [[r["what"], r["selection"], f"{r['selected_tokens']:.0f}", f"{r['tflop_per_sample']:.4g}",
             f"{r['tflop_without_hires_cache']:.4g}", f"{r['vs_none']:.3f}x"] for r in res["rows"]]
    return head + "\n" + aligned([cols] + body)
