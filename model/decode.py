"""The greedy decode loop of `FlexLlava.generate` (issue 22): static shapes, no host sync in a step.

- The KV cache is written at a device-side column (`KVCache.write_at`) and every step attends over
  its whole capacity with a `key_valid` mask: each step has the same shapes.
- `done` stays on the device and the tokens are cut at EOS (and at each request's own limit) after
  the loop, the same output as stopping at once. The loop asks whether every row is done only
  between steps: every step on the CPU (free there), every 8th on an accelerator
  (`done_check_every`), never with `sync_free_decode`.
- High-res K/V live in a `HiResKVCache` for the whole call (center/all: projected once per sample).
- Optional: the step (embedding -> layers -> lm_head -> argmax) compiled with
  torch.compile(mode="reduce-overhead") on CUDA (`FlexLlava.compile_decode`).
"""

from __future__ import annotations

import torch

from .fast import HiResContext, KVCache, Trace
from .hires_cache import BLOCK_MODES, DEFAULT_BUDGET_BYTES, STATIC_MODES, HiResKVCache
from .rope import rope_cos_sin


def new_hires_cache(model, b: int, static_only: bool = False) -> HiResKVCache | None:
    """The high-res K/V cache of one call of `model` over b samples, or None without high-res (static_only:
    only for center/all, where it saves a call's host sync; blocks pay off only across calls)."""
    opts = model.options
    modes = STATIC_MODES if static_only else STATIC_MODES + BLOCK_MODES
    if not model.use_hd or opts.selection not in modes or not getattr(model, "use_hires_cache", True):
        return None
    c = model.cfg
    hd_layers = max(0, c.num_layers - opts.select_layer - 1)
    budget = getattr(model, "hires_cache_bytes", DEFAULT_BUDGET_BYTES)
    return HiResKVCache(opts.selection, b, model.grid * model.zoom, hd_layers, c.num_kv_heads * c.head_dim,
                        torch.finfo(model.dtype).bits // 8, budget)


DONE_CHECK_EVERY = 8  # on an accelerator: between steps, every 8th, the loop asks whether all rows are done


def done_check_every(model) -> int:
    """How often the loop reads `done` back (0: never; it then runs max(max_new_tokens) - 1 steps): every
    step on the CPU, where it costs nothing; every DONE_CHECK_EVERY steps elsewhere, between steps and never
    inside one, so that a 64-token limit with 3-token answers does not run 63 steps;
    `model.sync_free_decode = True`: never."""
    if getattr(model, "sync_free_decode", False):
        return 0
    return 1 if model.device.type == "cpu" else DONE_CHECK_EVERY


def step_function(model, trace_cls):
    """One decode step: (tokens [B], positions [B], cache, key_valid [B, K], hires of the call) -> logits, trace."""
    def step(nxt, pos, cache: KVCache, key_valid, images, kv_cache):
        hires = None
        if images is not None:
            hires = HiResContext(images, model.options, 1, pos[:, None], trace_cls(), kv_cache=kv_cache)
        cos, sin = rope_cos_sin(pos[:, None], model.cfg.head_dim, model.cfg.rope_theta, model.dtype)
        hidden = model.lm.model(model.lm.model.embed_tokens(nxt)[:, None], cos, sin, cache, key_valid[:, None], hires)
        return model.lm.lm_head(hidden[:, -1]), (hires.trace if hires else None)
    if getattr(model, "compile_decode", False) and model.device.type == "cuda":
        return torch.compile(step, mode="reduce-overhead", dynamic=False)
    return step


def greedy_decode(model, logits, hires: HiResContext | None, cache: KVCache, valid: torch.Tensor, pos, max_new,
                  trace_cls=Trace):
    """The loop after the prefill (see FlexLlava._decode for what it returns)."""
    b, t = valid.shape
    dev = model.device
    limit = torch.tensor(max_new, device=dev)
    key_valid = torch.zeros(b, t + max(max_new), dtype=torch.bool, device=dev)
    key_valid[:, :t] = valid
    cache.write_at = torch.full((1,), t, dtype=torch.long, device=dev)
    counts = {k: v[:, 0].clone() for k, v in hires.trace.selected.items()} if hires else {}
    n_calls = torch.ones(b, dtype=torch.long, device=dev)
    tokens = torch.zeros(b, max(max_new), dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    non_finite = ~torch.isfinite(logits).all(-1)  # read once at the end
    every = done_check_every(model)
    step_fn = step_function(model, trace_cls)
    images, kv_cache = (hires.images, hires.kv_cache) if hires else (None, None)
    for step in range(max(max_new)):
        nxt = logits.argmax(-1)
        tokens[:, step] = nxt
        done |= (nxt == model.tokenizer.eos_id) | (limit <= step + 1)
        if step == max(max_new) - 1 or (every and (step + 1) % every == 0 and bool(done.all())):
            break
        pos, active = pos + 1, ~done
        key_valid.index_fill_(1, cache.write_at, True)
        logits, trace = step_fn(nxt, pos, cache, key_valid, images, kv_cache)
        cache.write_at += 1
        for k, v in (trace.selected.items() if trace else ()):
            counts[k] = counts[k] + v[:, 0] * active
        n_calls = n_calls + active.long()
        non_finite |= active & ~torch.isfinite(logits).all(-1)
    cache.write_at = None
    return tokens.tolist(), counts, n_calls, non_finite.tolist()
