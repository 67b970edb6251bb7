"""`flexeval model speed`: time the fast path against the literal reference, same run, same device.

Builds a LLaVA-1.5-7B-shaped FlexAttention model with random (normal, never zero) weights on the
device, checks the fast path against the reference on it, and prints per-sample times and ratios
for: image preprocessing (CPU), generation (prefill + 8 decode steps) and V*-style 4-option
likelihood scoring. The reference is the release's algorithm (batch 1, eager attention, every
high-res key projected at every step, no prefix sharing); selection is `center` (11% of the
high-res tokens, like the release's ~10% random ablation) so both do the same work.
"""

from __future__ import annotations

import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "7b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, intermediate_size=11008,
               vocab_size=32000, mm_hidden_size=1024),
    "tiny": dict(hidden_size=64, num_layers=12, num_heads=4, num_kv_heads=4, intermediate_size=128,
                 vocab_size=400, mm_hidden_size=32),
}
CLIPS = {
    "7b": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
               num_attention_heads=16),
    "tiny": dict(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=2),
}


def random_model(size: str, device: str, dtype: torch.dtype, selection: str = "center"):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from .config import FlexConfig, RunOptions
    from .flex_llava import FlexLlava
    from .llama import LlavaLM
    from .tiny import train_tokenizer
    from .tokenizer import LlavaTokenizer
    from .vision import VisionTower

    torch.manual_seed(0)
    cfg = FlexConfig(**SHAPES[size], has_hd=True)
    with torch.device("meta"):
        lm = LlavaLM(cfg)
    lm = lm.to_empty(device=device)
    for name, p in lm.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 1.0 if "embed_tokens" in name else p.shape[-1] ** -0.5)
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIPS[size])).to(device)
    tok_dir = Path(tempfile.mkdtemp())
    tok = LlavaTokenizer(train_tokenizer(tok_dir))
    lm.to(dtype).eval()
    vision = VisionTower(clip, -2).to(dtype).eval()
    return FlexLlava(lm, vision, tok, cfg, RunOptions(selection=selection), device=device, dtype=dtype,
                     source=f"random-{size}", folder=tok_dir)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, device, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_speed(draw_scene, prompt, size: str = "7b", device: str = "cuda", dtype: str = "float16", batch: int = 8,
              new_tokens: int = 8, repeat: int = 5, out: Path | None = None) -> dict:
    """draw_scene(rng, w, h, n) -> (PIL image, _) and prompt(question) -> conversation text come from
    the caller (the benchmarks' sample drawer and template: the model does not import benchmarks)."""
    from flexeval.requests import Choice, Generate

    from . import reference
    from .config import RunOptions
    from .image import Preprocessor
    from .loading import resolve_dtype

    torch_dtype = resolve_dtype(dtype, device)
    rng = random.Random(0)
    img, _ = draw_scene(rng, 2000, 1500, 6)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    res: dict = {"size": size, "device": device, "dtype": dtype, "batch": batch, "new_tokens": new_tokens}
    if str(device).startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    res["torch"] = torch.__version__

    from PIL import Image

    pre = Preprocessor(336 * 3)
    res["preprocess_ms_per_image"] = 1000 * timeit(lambda: pre(Image.open(io.BytesIO(jpeg)).convert("RGB")), "cpu")

    t = time.perf_counter()
    model = random_model(size, device, torch_dtype)
    res["build_s"] = round(time.perf_counter() - t, 1)
    questions = ["What is the color of the woman's umbrella?", "Is the red car on the left or right side of the dog?",
                 "What is the material of the glove?", "What is the breed of the dog?",
                 "What is the color of the clock?", "Is the cup on the left or right side of the bottle?",
                 "What animal is drawn on the flag?", "What is the color of the bag?"]
    prompts = [prompt(q) for q in questions][:batch]
    sizes = [(2246, 1582), (1600, 1200), (1200, 1800), (2000, 900), (1024, 1024), (1500, 2000), (1800, 1350),
             (2400, 1600)]
    images = [pre(draw_scene(rng, w, h, 4)[0]) for w, h in sizes][:batch]
    options = [["red", "blue", "green", "white"]] * batch
    gen = [(Generate(p, p, new_tokens), im) for p, im in zip(prompts, images)]
    cho = [(Choice(p, p, tuple(o)), im) for p, o, im in zip(prompts, options, images)]

    # correctness on this device and dtype: fast vs reference, one sample
    ids_ref, pre_ref = reference.generate(model, prompts[0], images[0], new_tokens)
    (fast,), logits = model.generate(gen[:1], return_prefill_logits=True)
    rel = float((logits[0, -pre_ref.logits.shape[0]:].float() - pre_ref.logits.float()).abs().max()
                / pre_ref.logits.float().abs().max())
    nll_ref = [reference.option_nll(model, prompts[0], images[0], o)[0] for o in options[0]]
    nll_fast = model.choose(cho[:1])[0].option_nll
    res["check"] = {"prefill_logits_max_rel_diff": rel, "same_tokens": ids_ref == fast.token_ids,
                    "nll_ref": nll_ref, "nll_fast": nll_fast, "hd_selected_ratio": fast.hd_selected_ratio}

    def ms(fn, n):
        return 1000 * timeit(fn, device, repeat) / n

    res["encode_images_ms_per_image"] = ms(lambda: model.encode_images(images), len(images))
    res["fast_generate_b1_ms"] = ms(lambda: model.generate(gen[:1]), 1)
    res[f"fast_generate_b{batch}_ms_per_sample"] = ms(lambda: model.generate(gen), batch)
    res["fast_choice_b1_ms"] = ms(lambda: model.choose(cho[:1]), 1)
    res[f"fast_choice_b{batch}_ms_per_question"] = ms(lambda: model.choose(cho), batch)
    r = max(1, repeat // 2)
    res["reference_generate_b1_ms"] = 1000 * timeit(
        lambda: reference.generate(model, prompts[0], images[0], new_tokens), device, r)
    res["reference_choice_b1_ms"] = 1000 * timeit(
        lambda: [reference.option_nll(model, prompts[0], images[0], o) for o in options[0]], device, r)
    lowres = model.with_options(RunOptions(selection="none"))  # the plain low-res LLaVA-1.5 computation: the floor
    res[f"lowres_generate_b{batch}_ms_per_sample"] = ms(lambda: lowres.generate(gen), batch)
    res["speedup_generate_b1"] = res["reference_generate_b1_ms"] / res["fast_generate_b1_ms"]
    res[f"speedup_generate_b{batch}"] = res["reference_generate_b1_ms"] / res[f"fast_generate_b{batch}_ms_per_sample"]
    res["speedup_choice_b1"] = res["reference_choice_b1_ms"] / res["fast_choice_b1_ms"]
    res[f"speedup_choice_b{batch}"] = res["reference_choice_b1_ms"] / res[f"fast_choice_b{batch}_ms_per_question"]
    if out:
        Path(out).write_text(json.dumps(res, indent=2))
    return res


def format_speed(res: dict) -> str:
    lines = [f"device {res.get('gpu', res['device'])}, torch {res['torch']}, {res['size']} shape, {res['dtype']}, "
             f"batch {res['batch']}, {res['new_tokens']} new tokens"]
    for k, v in res.items():
        if isinstance(v, float):
            lines.append(f"  {k:42s} {v:10.2f}")
    c = res["check"]
    lines.append(f"  check: prefill logits max rel diff {c['prefill_logits_max_rel_diff']:.2e}, same greedy tokens "
                 f"{c['same_tokens']}, hd selected ratio {c['hd_selected_ratio']}")
    lines.append(f"         option NLL fast {[round(x, 4) for x in c['nll_fast']]} ref {[round(x, 4) for x in c['nll_ref']]}")
    return "\n".join(lines)
