"""The decode step on its own: no host sync inside it, and what capturing it buys (issue 22).

    python -m flexeval.speed.decode_check --arch llava-1.5-7b --device cuda --batch 16 --compile

Random weights of --arch, centre selection (the static path), the bench's TextVQA-like prompt.
It runs generate() with every decode step guarded against host syncs (on CUDA with
torch.cuda.set_sync_debug_mode("error"); elsewhere by refusing Tensor.item/tolist/bool/int/float
inside the step), then times eager generation and, with --compile, the step compiled with
torch.compile(mode="reduce-overhead"), and says whether the tokens are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

GUARDED = ("item", "tolist", "__bool__", "__int__", "__float__")


class HostSync(RuntimeError):
    """A decode step read a tensor back on the host."""


@contextlib.contextmanager
def refuse_host_reads(device: torch.device):
    """Inside the block, a host read of a tensor raises (HostSync on the CPU, RuntimeError on CUDA)."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return
    saved = {n: getattr(torch.Tensor, n) for n in GUARDED}

    def refuse(*_a, **_k):
        raise HostSync("a host sync inside a decode step")

    try:
        for n in GUARDED:
            setattr(torch.Tensor, n, refuse)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@contextlib.contextmanager
def guarded_steps(device: torch.device):
    """While active, every decode step of model/decode.py runs inside refuse_host_reads."""
    import flexeval.model.decode as decode

    inner = decode.step_function

    def guarded(model, trace_cls):
        step = inner(model, trace_cls)

        def run(*args):
            with refuse_host_reads(device):
                return step(*args)
        return run

    decode.step_function = guarded
    try:
        yield
    finally:
        decode.step_function = inner


def check(arch: str, device: str, dtype: str, batch: int, new_tokens: int, compile_step: bool, repeat: int) -> dict:
    from flexeval.model.loading import resolve_device, resolve_dtype
    from flexeval.model.random_weights import random_model
    from flexeval.speed.device import Timer
    from flexeval.speed.measure import Workload, generate_requests

    dev = torch.device(resolve_device(device))
    model = random_model(arch, dev, resolve_dtype(dtype, dev))
    work = Workload(model)
    images, prompts = work.images_for(model, batch), work.generate_prompts(batch)
    model.sync_free_decode = True

    def run():
        return [r.token_ids for r in generate_requests(model, prompts, images, new_tokens)]

    out = {"arch": arch, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "dtype": str(model.dtype)[6:], "batch": batch, "new_tokens": new_tokens}
    try:
        with guarded_steps(dev):
            tokens = run()
        out["host_sync_in_step"] = None
    except (HostSync, RuntimeError) as e:
        tokens, out["host_sync_in_step"] = run(), str(e).splitlines()[0]
    timer = Timer(dev, repeat)
    out["eager_ms_per_call"] = 1000 * timer(run)
    if compile_step:
        model.compile_decode = True
        compiled = run()  # compiles (and captures) the step
        out["compiled_same_tokens"] = compiled == tokens
        out["compiled_ms_per_call"] = 1000 * timer(run)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args(argv)
    res = check(a.arch, a.device, a.dtype, a.batch, a.max_new_tokens, a.compile, a.repeat)
    print(json.dumps(res))
    return res


if __name__ == "__main__":  # pragma: no cover
    main()
