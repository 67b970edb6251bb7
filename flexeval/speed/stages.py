"""The stage rows of `flexeval speed` (section d): JPEG decode + preprocess, CLIP, prefill and one
decode step, the last two timed inside one generate call from the starts of the layer-loop calls."""

from __future__ import annotations

import contextlib
import statistics

import torch

from flexeval.speed.device import Timer, elapsed_between, mark
from flexeval.speed.flops import (
    clip_flops,
    clip_shape,
    decode_step_bytes,
    generate_flops,
    highres_flops,
    llm_flops,
)
from flexeval.speed.measure import call_model, request_shape
from flexeval.speed.report import speed_row


@contextlib.contextmanager
def layer_call_marks(device):
    """Marks the start of every call of the fast path's layer loop (`Backbone.forward`, the model's
    `lm.model(...)`) on the device's timeline, and the end of the block."""
    from flexeval.model.llama import Backbone

    inner, marks = Backbone.forward, []

    def marked(self, *args, **kwargs):
        marks.append(mark(device))
        return inner(self, *args, **kwargs)

    Backbone.forward = marked
    try:
        yield marks
    finally:
        Backbone.forward = inner
        marks.append(mark(device))


def cpu_stage_rows(model, work, repeat: int) -> list[dict]:
    """JPEG decode + preprocess of each image size on one CPU thread, as in a data worker."""
    cpu = Timer(torch.device("cpu"), repeat)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch gives each DataLoader worker one thread
    try:
        return [speed_row("d", f"decode + preprocess {w}x{h} JPEG (CPU, 1 core)", "-", 1,
                     cpu(lambda k=k: work.decode_preprocess(model, k))) for k, ((w, h), _) in enumerate(work.jpegs)]
    finally:
        torch.set_num_threads(threads)


def stage_rows(model, work, timer, batch: int, new_tokens: int, ceilings: dict) -> list[dict]:
    """CLIP, prefill and one decode step of `model`'s selection at `batch`. Prefill and decode
    step are the intervals between the starts of the layer-loop calls inside one generate call
    (each interval: the layers, the lm_head, the argmax and the step's host work)."""
    rows = []
    sel = model.options.selection
    images = work.images_for(model, batch)
    n_crops = 1 + model.zoom ** 2 if model.use_hd else 1
    clip_s = timer(lambda: model.encode_images(images))
    rows.append(speed_row("d", f"CLIP ({n_crops} crops) + projector", sel, batch, clip_s,
                     clip_flops(clip_shape(model.vision), model.cfg, n_crops)))
    call_model(model, "generate", work, batch, new_tokens)  # warm-up
    prefills, steps, results = [], [], None
    for _ in range(timer.repeat):
        with layer_call_marks(model.device) as marks:
            results = call_model(model, "generate", work, batch, new_tokens)
        gaps = elapsed_between(marks)  # [prefill, step, ..., last step + building the results]
        prefills.append(gaps[0])
        steps += gaps[1:-1] or gaps[1:]
    shape = request_shape(model, results[0])
    clip = clip_shape(model.vision)
    prefill_flops = llm_flops(model.cfg, shape.prompt_tokens, 0, 1) + highres_flops(
        model.cfg, shape.hd_layers, 1, shape.selected, shape.selected)
    prefill = speed_row("d", "prefill (LLM layers + lm_head)", sel, batch, statistics.median(prefills), prefill_flops,
                   shape.selected / (model.grid * model.zoom) ** 2 if model.use_hd else None)
    prefill["note"] = f"{prefill['tflops'] / ceilings['matmul_tflops']:.0%} of the matmul ceiling"
    rows.append(prefill)
    if steps:
        step_s = statistics.median(steps)
        n = max(len(r.token_ids) for r in results)
        step_flops = (generate_flops(model.cfg, clip, shape, n) - generate_flops(model.cfg, clip, shape, 1)) / (n - 1)
        nbytes = decode_step_bytes(model.cfg, batch, shape.prompt_tokens + n, model.lm.lm_head.weight.element_size(),
                                   shape.hd_layers, shape.selected)
        floor_s = nbytes / (ceilings["copy_gb_per_s"] * 1e9)
        step = speed_row("d", "decode step", sel, batch, step_s, step_flops)
        step["note"] = (f"{1000 * step_s:.3g} ms a step for the batch; memory floor {1000 * floor_s:.3g} ms "
                        f"({nbytes / 1e9:.3g} GB at the copy bandwidth): {step_s / floor_s:.2f}x the floor")
        rows.append(step)
    return rows
