"""A benchmark run's counted cost beside its accuracy (run.json `cost`, summary.md's compute table).

TFLOP per sample is counted (flops.py: the algorithm's matmul work) from each record's real token
counts and selection: its prompt tokens, its generated tokens, its mean selected ratio, and for
likelihood scoring its options' token counts. The high-res K/V are counted as projected once per
request (the cache of model/hires_cache.py): exact for center/all, a lower bound for attention
and random, whose rows' union can be larger. Seconds are measured: the model calls' time and the
whole command's wall time of the items run by this invocation (a resumed run times only its part).
"""

from __future__ import annotations

COUNTED_BY = ("flexeval/speed/flops.py from each record's prompt/new/option tokens and selected ratio; "
              "high-res K/V projected once per request (a lower bound for attention/random)")


def record_flops(model, request, record: dict, clip) -> float | None:
    """The counted FLOPs of one record of a FlexLlava run (None: skipped, or a kind not counted)."""
    from flexeval.speed.flops import RequestShape, choice_flops, generate_flops

    if record.get("skipped") or record.get("n_prompt_tokens") is None:
        return None
    use_hd = model.use_hd
    n_hd = (model.grid * model.zoom) ** 2
    shape = RequestShape(prompt_tokens=record["n_prompt_tokens"], n_crops=1 + model.zoom ** 2 if use_hd else 1,
                         hd_layers=model.cfg.num_layers - model.options.select_layer - 1 if use_hd else 0,
                         selected=(record.get("hd_selected_ratio") or 0.0) * n_hd)
    if "n_new_tokens" in record:
        return generate_flops(model.cfg, clip, shape, max(1, record["n_new_tokens"]))
    if "option_nll" in record:
        prompt = model.prompt_text(request)  # the text the model ran: its template around the question
        suffixes = [len(model.tokenizer.encode_option(prompt, o, getattr(request, "append_eos", False))[1])
                    for o in request.options]
        return choice_flops(model.cfg, clip, shape, suffixes)
    return None


def run_cost(model, requests: list, records: list[dict], timing: dict) -> dict:
    """run.json `cost`: counted TFLOP per sample (mean over the counted records), model and wall seconds."""
    tflop = None
    counted = 0
    if getattr(model, "recipe", None) == "release" and hasattr(model, "vision"):  # FlexLlava: FLOPs we can count
        from flexeval.speed.flops import clip_shape

        clip = clip_shape(model.vision)
        flops = [record_flops(model, q, r, clip) for q, r in zip(requests, records, strict=True)]
        flops = [f for f in flops if f is not None]
        counted = len(flops)
        tflop = float(f"{sum(flops) / len(flops) / 1e12:.6g}") if flops else None
    ran = timing.get("ran")
    return {"tflop_per_sample": tflop, "counted_items": counted, "counted_by": COUNTED_BY if tflop else
            "not counted: a transformers model (only FlexLlava's FLOPs are accounted)",
            "model_s": timing.get("model_s"), "wall_s": timing.get("wall_s"), "timed_items": ran,
            "samples_per_s": timing.get("samples_per_s"),  # this rank's items / its model seconds
            "hardware": hardware(getattr(model, "device", None)),
            "dtype": str(getattr(model, "dtype", "")).replace("torch.", "")}


def hardware(device) -> str:
    """The device in words: the GPU's name, or the CPU."""
    import platform

    import torch

    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"
