"""Work counted while the model runs: torch's FlopCounterMode and the rows through the high-res projections."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def count_work(model):
    """with count_work(model) as counted: ... -> counted["total"] (FLOPs the counter saw, with the math SDPA
    backend so attention runs as matmuls it sees) and counted["hires_projected_tokens"] (rows that went
    through a k_proj_hd; v_proj_hd sees the same rows), filled when the block ends."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    rows = [0]

    def add(_module, inputs, _output):
        rows[0] += inputs[0].shape[:-1].numel()

    layers = getattr(getattr(getattr(model, "lm", None), "model", None), "layers", ())  # FlexLlava's
    hooks = [layer.self_attn.k_proj_hd.register_forward_hook(add) for layer in layers
             if hasattr(layer.self_attn, "k_proj_hd")]
    counted: dict = {}
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            yield counted
    finally:
        for h in hooks:
            h.remove()
    counted["total"] = counter.get_total_flops()
    counted["hires_projected_tokens"] = rows[0]
