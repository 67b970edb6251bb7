"""The literal reference: spec sections 2-7 line by line, one sample at a time, eager attention.

Slow on purpose and written to mirror the release's code paths: every high-res key of every
layer is projected, full attention matrices are formed, hidden rows are masked with -inf. The
fast path (fast.py / flex_llava.py) is tested against this. It shares only the weights (and the
CLIP tower, a transformers module) with the fast path; no maths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .flex_llava import FlexLlava
from .image import ProcessedImage
from .tokenizer import IMAGE_TOKEN_ID


@dataclass
class RefOutput:
    logits: torch.Tensor  # [T, V] for the rows of the (last) forward call
    selections: dict = field(default_factory=dict)  # layer -> [rows, N] bool masks made at that layer
    maps: dict = field(default_factory=dict)  # layer -> [rows, 576] head-summed low-res attention over the image


def _clip_project(model: FlexLlava, pixels: torch.Tensor) -> torch.Tensor:
    return model.lm.model.mm_projector(model.vision(pixels).to(model.dtype))


def image_features(model: FlexLlava, image: ProcessedImage):
    """(low-res [576, D], high-res [N, D]) following section 2 literally."""
    px = image.pixels[None].to(model.device)
    low_px = px if px.shape[-1] == 336 else F.interpolate(px, size=336, mode="bilinear", antialias=True)
    low = _clip_project(model, low_px)[0]
    if not model.use_hd:
        return low, None
    z = model.zoom
    grid = torch.zeros(24 * z, 24 * z, low.shape[-1], dtype=low.dtype, device=low.device)
    for i in range(z):  # crop rows
        for j in range(z):  # crop columns
            crop = px[:, :, i * 336:(i + 1) * 336, j * 336:(j + 1) * 336]
            grid[i * 24:(i + 1) * 24, j * 24:(j + 1) * 24] = _clip_project(model, crop)[0].reshape(24, 24, -1)
    return low, grid.reshape(-1, low.shape[-1])


def _rope(positions: torch.Tensor, head_dim: int, theta: float):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float().to(positions.device) / head_dim))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _select(model: FlexLlava, attn_probs: torch.Tensor, rows: list[int], img_begin: int, image: ProcessedImage,
            hd_grid: int) -> torch.Tensor:
    """The release's selection for each row in `rows` (attn_probs: [H, T, K] low-res-only softmax)."""
    mode = model.options.selection
    if mode == "all":
        return torch.ones(len(rows), hd_grid * hd_grid, dtype=torch.bool, device=attn_probs.device)
    if mode == "center":
        cells = torch.zeros(len(rows), 1, 9, 9, device=attn_probs.device)
        cells[..., 3:6, 3:6] = 1
        return F.interpolate(cells, size=hd_grid, mode="nearest").bool().flatten(1)
    if mode != "attention":
        raise NotImplementedError(f"the reference implements attention/all/center selection, not {mode}")
    avg = attn_probs[:, rows, img_begin:img_begin + 576].to(model.dtype).sum(0).reshape(-1, 24, 24).clone()
    if image.padded:
        w, h = image.orig_size
        margin = abs(w - h) // 2
        n = int(margin / max(w, h) * 24)
        if n != 0:
            if w > h:
                avg[:, :n, :] = 0.0
                avg[:, -n:, :] = 0.0
            else:
                avg[:, :, :n] = 0.0
                avg[:, :, -n:] = 0.0
    avg = avg.flatten(1)
    lo = avg.min(1, keepdim=True).values
    hi = avg.max(1, keepdim=True).values
    avg = ((avg - lo) / (hi - lo)).reshape(-1, 1, 24, 24)
    avg = ((avg * 255) > model.options.threshold).float()
    avg = F.adaptive_max_pool2d(avg, (9, 9))
    return F.interpolate(avg, size=hd_grid, mode="nearest").bool().flatten(1)


def _forward(model: FlexLlava, embeds: torch.Tensor, positions: torch.Tensor, cache: list, hd_rows: list[int],
             hd_feats, hd_cos, hd_sin, img_begin: int, image: ProcessedImage,
             map_rows: list[int] = ()) -> RefOutput:
    """One forward call over `embeds` [T, D] with a growing cache (list of (k, v) per layer)."""
    lm, cfg = model.lm, model.cfg
    hdim, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    s_layer = model.options.select_layer
    hd_grid = 24 * model.zoom
    cos, sin = (t.to(model.dtype) for t in _rope(positions, hdim, cfg.rope_theta))
    x = embeds
    t = x.shape[0]
    selections, maps, prev = {}, {}, None
    for i, layer in enumerate(lm.model.layers):
        a = layer.self_attn
        h = layer.input_layernorm(x)
        q = _rotate(a.q_proj(h).view(t, nh, hdim).transpose(0, 1), cos, sin)
        k = _rotate(a.k_proj(h).view(t, nkv, hdim).transpose(0, 1), cos, sin)
        v = a.v_proj(h).view(t, nkv, hdim).transpose(0, 1)
        if cache[i] is not None:
            k, v = torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)
        cache[i] = (k, v)
        k_all, v_all = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        past = k_all.shape[1] - t
        causal = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
        scores = ((q @ k_all.transpose(1, 2)) / math.sqrt(hdim)).float()  # the release: dtype matmul, fp32 softmax
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, -1)  # low-res-only attention of every row
        out = probs.to(model.dtype) @ v_all
        if map_rows:
            maps[i] = probs[:, list(map_rows), img_begin:img_begin + 576].to(model.dtype).sum(0)
        if hd_feats is not None and i > s_layer and hd_rows:
            # every high-res key of this layer; rows see only their own selection
            k_hd = _rotate(a.k_proj_hd(hd_feats).view(-1, nkv, hdim).transpose(0, 1), hd_cos, hd_sin)
            v_hd = a.v_proj_hd(hd_feats).view(-1, nkv, hdim).transpose(0, 1)
            k_hd, v_hd = k_hd.repeat_interleave(nh // nkv, 0), v_hd.repeat_interleave(nh // nkv, 0)
            s_hd = ((q @ k_hd.transpose(1, 2)) / math.sqrt(hdim)).float()
            for j, row in enumerate(hd_rows):
                union = torch.cat([scores[:, row], s_hd[:, row].masked_fill(~prev[j], float("-inf"))], -1)
                p = torch.softmax(union, -1).to(model.dtype)
                n_keys = k_all.shape[1]
                out[:, row] = (p[:, None, :n_keys] @ v_all)[:, 0] + (p[:, None, n_keys:] @ v_hd)[:, 0]
        if hd_feats is not None and i >= s_layer and hd_rows:
            prev = _select(model, probs, hd_rows, img_begin, image, hd_grid)
            selections[i] = prev
        x = x + a.o_proj(out.transpose(0, 1).reshape(t, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return RefOutput(logits=lm.lm_head(lm.model.norm(x)), selections=selections, maps=maps)


def _prepare(model: FlexLlava, ids: list[int], image: ProcessedImage):
    low, hd = image_features(model, image)
    p0 = ids.index(IMAGE_TOKEN_ID)
    emb = model.lm.model.embed_tokens
    dev = model.device
    embeds = torch.cat([emb(torch.tensor(ids[:p0], device=dev)), low.to(model.dtype),
                        emb(torch.tensor(ids[p0 + 1:], device=dev))])
    hd_cos = hd_sin = None
    if hd is not None:
        cos, sin = (t.to(model.dtype) for t in _rope(torch.arange(embeds.shape[0], device=dev), model.cfg.head_dim,
                                                     model.cfg.rope_theta))
        g = 24 * model.zoom
        tabs = []
        for tab in (cos, sin):
            grid = tab[p0:p0 + 576].reshape(24, 24, -1).permute(2, 0, 1)[None].float()
            grid = F.interpolate(grid, size=g, mode="bicubic", align_corners=False)
            tabs.append(grid[0].flatten(1).transpose(0, 1).to(model.dtype))
        hd_cos, hd_sin = tabs
    return embeds, hd, hd_cos, hd_sin, p0


def _decoder(model: FlexLlava, prompt: str, image: ProcessedImage, maps: bool = False):
    """The prefill call of the prompt (its last row high-res, with its maps if `maps`) and
    decode(token, step, maps=False): the next call on the same cache, one row, high-res."""
    ids = model.tokenizer.encode_prompt(prompt)
    embeds, hd, hd_cos, hd_sin, p0 = _prepare(model, ids, image)
    cache = [None] * model.cfg.num_layers
    t = embeds.shape[0]
    prefill = _forward(model, embeds, torch.arange(t, device=model.device), cache, [t - 1], hd, hd_cos, hd_sin,
                       p0, image, map_rows=[t - 1] if maps else ())

    def decode(token: int, step: int, maps: bool = False) -> RefOutput:
        e = model.lm.model.embed_tokens(torch.tensor([token], device=model.device))
        return _forward(model, e, torch.tensor([t + step], device=model.device), cache, [0], hd, hd_cos, hd_sin,
                        p0, image, map_rows=[0] if maps else ())

    return prefill, decode


@torch.no_grad()
def generate(model: FlexLlava, prompt: str, image: ProcessedImage, max_new_tokens: int,
             calls: list | None = None):
    """Greedy decoding; the last row of each forward call uses high-res. Returns (ids, prefill RefOutput);
    `calls`, if given, receives every forward call's RefOutput (prefill first)."""
    prefill, decode = _decoder(model, prompt, image)
    calls = [] if calls is None else calls
    calls.append(prefill)
    logits, out = prefill.logits[-1], []
    for step in range(max_new_tokens):
        nxt = int(logits.argmax())
        out.append(nxt)
        if nxt == model.tokenizer.eos_id or step == max_new_tokens - 1:
            break
        calls.append(decode(nxt, step))
        logits = calls[-1].logits[-1]
    return out, prefill


@torch.no_grad()
def attention_maps(model: FlexLlava, prompt: str, image: ProcessedImage, continuation: list[int]) -> RefOutput:
    """Generation's calls literally (prefill, then one call per token, each of its last row high-res),
    fed `continuation` instead of argmax; the last call's output, with the maps of its (only) last row."""
    out, decode = _decoder(model, prompt, image, maps=True)
    for step, tok in enumerate(continuation):
        out = decode(tok, step, maps=True)
    return out


@torch.no_grad()
def option_nll(model: FlexLlava, prompt: str, image: ProcessedImage, option: str, append_eos: bool = False):
    """Mean NLL of the option's tokens: one full-sequence pass, the release's train()-path rows
    (last prompt token .. second-to-last option token) use high-res, each with its own selection."""
    prompt_ids, suffix = model.tokenizer.encode_option(prompt, option, append_eos)
    ids = prompt_ids + suffix
    embeds, hd, hd_cos, hd_sin, p0 = _prepare(model, ids, image)
    t = embeds.shape[0]
    n_suffix = len(suffix)
    first = t - n_suffix - 1  # the last prompt token's row
    rows = list(range(first, t - 1))
    out = _forward(model, embeds, torch.arange(t, device=model.device), [None] * model.cfg.num_layers, rows, hd,
                   hd_cos, hd_sin, p0, image)
    logits = out.logits[first:t - 1].float()
    nll = F.cross_entropy(logits, torch.tensor(suffix, device=model.device))
    return float(nll), out
