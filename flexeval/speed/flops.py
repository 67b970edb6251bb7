"""FLOP and byte accounting for `flexeval speed`: one small function per stage.

Counted FLOPs are the matmul work the algorithm needs (2 FLOPs per multiply-add), not what a
kernel happens to execute: padding rows, masked-out scores and elementwise ops (norms, RoPE,
softmax, SiLU) are not counted. Achieved TFLOP/s = counted FLOPs / measured time, so it is a
lower bound of the hardware's real throughput on the same work.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexeval.model.config import FlexConfig


@dataclass(frozen=True)
class ClipShape:
    """What the CLIP FLOPs depend on (read from the loaded transformers config)."""

    hidden: int
    intermediate: int
    layers: int  # layers actually run (VisionTower drops the ones after the selected feature)
    image_size: int = 336
    patch: int = 14


def clip_shape(vision) -> ClipShape:
    c = vision.clip.config
    encoder = vision.clip.vision_model.encoder if hasattr(vision.clip, "vision_model") else vision.clip.encoder
    return ClipShape(c.hidden_size, c.intermediate_size, len(encoder.layers), c.image_size, c.patch_size)


def clip_flops(shape: ClipShape, cfg: FlexConfig, n_crops: int) -> float:
    """CLIP ViT over `n_crops` 336 px views plus the mm_projector on their patch tokens."""
    grid = shape.image_size // shape.patch
    tokens = grid * grid + 1  # + CLS
    d, f = shape.hidden, shape.intermediate
    patch_embed = 2 * grid * grid * (3 * shape.patch * shape.patch) * d
    per_layer = 2 * tokens * (4 * d * d + 2 * d * f) + 2 * 2 * tokens * tokens * d  # qkvo + mlp, QK^T + PV
    projector = 2 * grid * grid * (cfg.mm_hidden_size * cfg.hidden_size
                                   + (cfg.hidden_size * cfg.hidden_size if cfg.projector_type != "linear" else 0))
    return n_crops * (patch_embed + shape.layers * per_layer + projector)


def llm_flops(cfg: FlexConfig, new_tokens: int, past_tokens: int, logit_rows: int) -> float:
    """One forward call of the LLM over `new_tokens` rows after `past_tokens` cached ones (causal),
    with the lm_head on `logit_rows` rows."""
    d, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    weights = 2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size  # q, o, k, v, gate/up/down
    # row i sees past + i + 1 keys: sum over rows = new * past + new * (new + 1) / 2
    keys = new_tokens * past_tokens + new_tokens * (new_tokens + 1) / 2
    attention = 2 * 2 * keys * d  # QK^T and PV over all heads
    return cfg.num_layers * (2 * new_tokens * weights + attention) + 2 * logit_rows * d * cfg.vocab_size


def highres_flops(cfg: FlexConfig, hd_layers: int, hd_rows: int, projected: float, seen_per_row: float) -> float:
    """The high-res part of one call: k/v_proj_hd of the `projected` selected tokens and the
    `hd_rows` high-res rows attending to `seen_per_row` of them, in each of `hd_layers` layers."""
    d, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    return hd_layers * (2 * 2 * projected * d * kv + 2 * 2 * hd_rows * seen_per_row * d)


def decode_step_bytes(cfg: FlexConfig, batch: int, n_keys: int, dtype_bytes: int, hd_layers: int,
                      projected: float) -> float:
    """Bytes one decode step must move at least: every LLM weight once (lm_head included, the
    embedding is a lookup), the KV cache of every sample, and in the high-res layers the cached
    high-res keys/values of the `projected` tokens (model/hires_cache.py: a step projects nothing
    new with center/all, so neither k/v_proj_hd nor the features are read)."""
    d, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    layer_weights = 2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size
    weights = cfg.num_layers * layer_weights + d * cfg.vocab_size
    kv_cache = batch * cfg.num_layers * 2 * kv * n_keys
    hd_kv = batch * hd_layers * 2 * kv * projected
    return dtype_bytes * (weights + kv_cache + hd_kv)


@dataclass(frozen=True)
class RequestShape:
    """The measured shape of one sample's request, from which its FLOPs are counted."""

    prompt_tokens: int  # text + 576 image tokens
    n_crops: int  # 1 (low-res only) or 1 + zoom^2
    hd_layers: int  # layers that use high-res keys (0 with selection none)
    selected: float  # mean high-res tokens selected per row (measured ratio x N)
    projected: float | None = None  # high-res tokens projected per layer over the whole request (None: selected)


def generate_flops(cfg: FlexConfig, clip: ClipShape, r: RequestShape, new_tokens: int) -> float:
    """Greedy generation of `new_tokens`: CLIP, the prefill (last row high-res), then one call per
    further token (its single row high-res). The high-res K/V are cached across the calls
    (model/hires_cache.py): each token is projected once per layer (`r.projected`, by default one
    row's selection: exact for center/all, a lower bound for attention/random), while every call's
    row attends to its `r.selected` tokens."""
    projected = r.selected if r.projected is None else r.projected
    total = clip_flops(clip, cfg, r.n_crops) + highres_flops(cfg, r.hd_layers, 0, projected, 0)
    total += llm_flops(cfg, r.prompt_tokens, 0, 1) + highres_flops(cfg, r.hd_layers, 1, 0, r.selected)
    for step in range(1, new_tokens):
        total += llm_flops(cfg, 1, r.prompt_tokens + step - 1, 1)
        total += highres_flops(cfg, r.hd_layers, 1, 0, r.selected)
    return total


def choice_flops(cfg: FlexConfig, clip: ClipShape, r: RequestShape, option_tokens: list[int]) -> float:
    """Likelihood scoring: CLIP, the shared prompt prefix once, then every option's rows (all
    high-res), as blocks of one call; each option block sees the prefix and its own rows. The
    projected high-res tokens are counted as one row's selection (exact for center/all; a lower
    bound for attention, where the rows' union can be larger)."""
    prefix = r.prompt_tokens - 1
    total = clip_flops(clip, cfg, r.n_crops) + llm_flops(cfg, prefix, 0, 0)
    rows = sum(option_tokens)  # the last prompt token + each option's tokens but its last
    for n in option_tokens:
        total += llm_flops(cfg, n, prefix, n)
    total += highres_flops(cfg, r.hd_layers, rows, r.selected, r.selected)
    return total
