"""FlexLlava: a loaded checkpoint that answers the two request kinds (flexeval/requests.py).

- `generate(items)`: greedy decoding; in every forward call only the last row uses high-res keys.
  Each request's own `max_new_tokens` holds; a row that emitted EOS stops (and stops counting).
- `choose(items)`: mean next-token NLL of each option; every answer-predicting row uses high-res
  keys with its own selection. The prompt minus its last token uses no high-res, so it is run once
  per sample and its KV cache is shared by all of the sample's options, which run together as
  blocks of one suffix call (block-causal mask).

Both take `[(request, ProcessedImage), ...]`, put each request in LLaVA-1.5's v1 conversation
(`prompt_text`; `generate_prompts` / `choose_prompts` take finished prompts), run the batch longest
prompt first (as lm-evaluation-harness's Collator) and return results in input order. Nothing is
kept between calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError
from flexeval.requests import Choice, Generate

from .config import FlexConfig, ResolvedOptions, RunOptions
from .conversation import IMAGE_TOKEN, llava_v1_prompt
from .decode import greedy_decode, new_hires_cache
from .fast import HiResContext, HiResImages, KVCache, Trace
from .image import (
    Preprocessor,
    ProcessedImage,
    lowres_view,
    padding_patches,
    preprocess,
    split_crops,
    stitch_crops,
)
from .llama import LlavaLM
from .option_blocks import OptionBlocks
from .rope import hd_rope, rope_cos_sin
from .selection import padding_cell_mask
from .tokenizer import IMAGE_TOKEN_ID, LlavaTokenizer
from .vision import VisionTower


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    n_prompt_tokens: int
    hd_selected_ratio: float | None = None  # mean over this row's high-res forward rows and layers
    selected_per_layer: dict = field(default_factory=dict)  # prefill last row: layer -> count
    non_finite: bool = False  # NaN/inf in a logit row this sample decoded from: its text is meaningless
    prompt: str | None = None  # the exact prompt text and ids, where the model builds them (hf_vlm.py)
    prompt_ids: list[int] | None = None


@dataclass
class AttentionMaps:
    """One query row's maps (see `FlexLlava.attention_maps`), on the CPU in float32."""

    maps: dict  # layer -> [576] head-summed post-softmax low-res attention over the image tokens (row-major 24x24)
    masks: dict  # layer -> [(24*zoom)^2] bool high-res tokens selected at that layer (used by the next layer)
    n_hd_tokens: int  # (24*zoom)^2, or 0 without high-res


@dataclass
class ChoiceResult:
    option_nll: list[float]
    n_prompt_tokens: int
    hd_selected_ratio: float | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    selection: AttentionMaps | None = None  # with keep_selection: the prompt-end row's maps and masks


@dataclass
class _Embedded:
    """A left-padded batch of prompts with the low-res image features spliced in."""

    embeds: torch.Tensor  # [B, T, D]
    valid: torch.Tensor  # [B, T] real (not padding) tokens
    positions: torch.Tensor  # [B, T]
    img_cols: torch.Tensor  # [B, 576] where the image tokens sit


def _longest_first(lengths: list[int]) -> list[int]:
    """The order a batch runs in: longest prompt first, ties in input order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def _input_order(results: list, order: list[int]) -> list:
    out = [None] * len(order)
    for result, i in zip(results, order):
        out[i] = result
    return out


class FlexLlava:
    recipe = "release"  # LLaVA-1.5's eval recipe: pad to square, v1 template, chunked tokenisation
    keep_selection = False  # choose(): also return the prompt-end row's maps and masks (target coverage)

    def __init__(self, lm: LlavaLM, vision: VisionTower, tokenizer: LlavaTokenizer, cfg: FlexConfig,
                 options: RunOptions | None = None, device: str | torch.device = "cpu", dtype=torch.float32,
                 source: str = "", folder: str | Path | None = None):
        self.lm, self.vision, self.tokenizer, self.cfg = lm, vision, tokenizer, cfg
        self.run_options = options or RunOptions()
        self.options: ResolvedOptions = self.run_options.resolve(cfg)
        self.device, self.dtype = torch.device(device), dtype
        self.source, self.folder = source, folder  # what the user named; where the files are
        self.grid = vision.grid  # 24

    def with_options(self, options: RunOptions) -> FlexLlava:
        """The same weights under other run options (nothing is copied)."""
        return FlexLlava(self.lm, self.vision, self.tokenizer, self.cfg, options, self.device, self.dtype,
                         self.source, self.folder)

    @property
    def use_hd(self) -> bool:
        return self.cfg.has_hd and self.options.use_hd

    @property
    def zoom(self) -> int:
        return self.options.zoom

    @property
    def image_size(self) -> int:
        # FlexAttention checkpoints read a 1008 px view (low-res = its antialiased 336 downsample) even
        # with selection none; plain LLaVA-1.5 follows its own processor: the padded image at 336.
        return self.options.highres_size if self.cfg.has_hd else self.cfg.lowres_size

    @staticmethod
    def prompt_text(request: Generate | Choice) -> str:
        """The request in LLaVA-1.5's v1 conversation: its system text (or LLaVA's), the image first
        unless the question places `<image>` itself."""
        return llava_v1_prompt(request.question, request.system, with_image=IMAGE_TOKEN not in request.question)

    def batch_order(self, requests: list) -> list[int]:
        """The order `generate`/`choose` run a batch in (input indices, longest prompt first): the row
        order of the tensors inside the call, e.g. of a Trace's masks."""
        return _longest_first([len(self.tokenizer.encode_prompt(self.prompt_text(r))) for r in requests])

    # ---- images ----
    @property
    def preprocessor(self) -> Preprocessor:
        """The CPU half of the image path, picklable for data workers."""
        return Preprocessor(self.image_size)

    def preprocess(self, image, mode: str = "pad") -> ProcessedImage:
        """PIL image -> normalised tensor at the model's input size."""
        return preprocess(image, self.image_size, mode)

    @torch.no_grad()
    def encode_images(self, images: list[ProcessedImage]):
        """Low-res features [B, 576, D] and, with high-res on, the stitched grid [B, (24z)^2, D]."""
        pixels = torch.stack([im.pixels for im in images]).to(self.device)  # [B, 3, S, S]
        low = lowres_view(pixels, self.cfg.lowres_size)  # [B, 3, 336, 336]
        crops = split_crops(pixels, self.cfg.lowres_size) if self.use_hd else low[:0]  # [B * z^2, 3, 336, 336]
        feats = self.lm.model.mm_projector(self.vision(torch.cat([low, crops])).to(self.dtype))
        b = len(images)
        if not self.use_hd:
            return feats[:b], None
        return feats[:b], stitch_crops(feats[b:], self.zoom, self.grid)

    # ---- batching helpers ----
    def _embed(self, ids_list: list[list[int]], low_feats: torch.Tensor) -> _Embedded:
        n_img = low_feats.shape[1]
        lengths = [len(ids) - 1 + n_img for ids in ids_list]
        b, t = len(ids_list), max(lengths)
        tok = torch.zeros(b, t, dtype=torch.long)
        is_img = torch.zeros(b, t, dtype=torch.bool)
        valid = torch.zeros(b, t, dtype=torch.bool)
        img_start = []
        for i, ids in enumerate(ids_list):
            pad = t - lengths[i]
            if IMAGE_TOKEN_ID not in ids:
                raise FlexEvalError("a prompt has no <image>: FlexAttention LLaVA reads exactly one image per prompt")
            p = ids.index(IMAGE_TOKEN_ID)
            tok[i, pad:] = torch.tensor(ids[:p] + [0] * n_img + ids[p + 1:])
            is_img[i, pad + p: pad + p + n_img] = True
            valid[i, pad:] = True
            img_start.append(pad + p)
        tok, is_img, valid = tok.to(self.device), is_img.to(self.device), valid.to(self.device)
        embeds = self.lm.model.embed_tokens(tok)
        embeds[is_img] = low_feats.reshape(-1, low_feats.shape[-1]).to(embeds.dtype)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        img_cols = torch.tensor(img_start, device=self.device)[:, None] + torch.arange(n_img, device=self.device)
        return _Embedded(embeds, valid, positions, img_cols)

    def _hires_images(self, images, hd_feats, batch: _Embedded, ids_list) -> HiResImages | None:
        if hd_feats is None:
            return None
        hd_grid = self.grid * self.zoom
        cos, sin = hd_rope(batch.positions.gather(1, batch.img_cols), hd_grid, self.cfg.head_dim,
                           self.cfg.rope_theta, self.dtype)
        axis, n = [], []
        for im in images:
            a, k = padding_patches(im.orig_size, self.grid) if im.padded else ("rows", 0)
            axis.append(1 if a == "rows" else 2)
            n.append(k)
        pad_cells = padding_cell_mask(torch.tensor(axis, device=self.device), torch.tensor(n, device=self.device),
                                      self.grid)
        keys = [hashlib.sha256(str(ids).encode()).hexdigest()[:16] for ids in ids_list]
        return HiResImages(feats=hd_feats, cos=cos, sin=sin, img_cols=batch.img_cols, pad_cells=pad_cells,
                           hd_grid=hd_grid, sample_keys=keys)

    def _hires(self, images: HiResImages | None, n_rows: int, row_positions, trace=None,
               kv_cache=None) -> HiResContext | None:
        """The context of one forward call whose last n_rows rows use high-res keys."""
        if images is None:
            return None
        return HiResContext(images, self.options, n_rows, row_positions, trace or Trace(), kv_cache=kv_cache)

    def _new_cache(self, b: int, capacity: int) -> KVCache:
        c = self.cfg
        return KVCache(c.num_layers, b, c.num_kv_heads, c.head_dim, capacity, self.dtype, self.device)

    def _rope(self, positions: torch.Tensor):
        return rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, self.dtype)

    def _prefill_visible(self, valid: torch.Tensor) -> torch.Tensor:
        """[B, T, T] keys each row may see: causal over real tokens; a padding row sees itself (no NaN)."""
        t = valid.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=self.device)
        return (causal[None] & valid[:, None, :]) | eye[None]

    def _mean_fraction(self, per_layer_counts: list[torch.Tensor]) -> list[float]:
        """[B] mean over layers of the selected fraction of the high-res tokens, from per-layer [B] counts."""
        return (torch.stack([c.float() for c in per_layer_counts], dim=1).mean(1) / (self.grid * self.zoom) ** 2).tolist()

    # ---- generation ----
    @torch.no_grad()
    def generate(self, items: list[tuple[Generate, ProcessedImage]], return_prefill_logits: bool = False):
        """Greedy decoding for each (Generate, image); results (and prefill logits [B, T, V]) in input order."""
        return self.generate_prompts([self.prompt_text(req) for req, _ in items], [im for _, im in items],
                                     [req.max_new_tokens for req, _ in items], return_prefill_logits)

    @torch.no_grad()
    def generate_prompts(self, prompts: list[str], images: list[ProcessedImage], max_new_tokens: list[int],
                         return_prefill_logits: bool = False):
        """`generate` for finished prompts (each holding one `<image>`): `inspect --raw`, the maps' answers."""
        ids_list = [self.tokenizer.encode_prompt(p) for p in prompts]
        order = _longest_first([len(ids) for ids in ids_list])  # = batch_order
        results, prefill_logits = self._generate_batch(
            [ids_list[i] for i in order], [images[i] for i in order],
            [max_new_tokens[i] for i in order], return_prefill_logits)
        results = _input_order(results, order)
        if not return_prefill_logits:
            return results
        return results, prefill_logits[torch.tensor(_input_order(list(range(len(order))), order), device=self.device)]

    def _generate_batch(self, ids_list, images, max_new: list[int], return_prefill_logits: bool):
        low, hd_feats = self.encode_images(images)
        batch = self._embed(ids_list, low)
        b, t, _ = batch.embeds.shape
        hires_images = self._hires_images(images, hd_feats, batch, ids_list)
        cache = self._new_cache(b, t + max(max_new))
        hires = self._hires(hires_images, 1, batch.positions[:, -1:], kv_cache=new_hires_cache(self, b))
        hidden = self.lm.model(batch.embeds, *self._rope(batch.positions), cache,
                               self._prefill_visible(batch.valid), hires)
        prefill_logits = self.lm.lm_head(hidden) if return_prefill_logits else None
        selected_prefill = {k: v[:, 0].tolist() for k, v in hires.trace.selected.items()} if hires else {}
        tokens, counts, n_calls, non_finite = self._decode(self.lm.lm_head(hidden[:, -1]), hires, cache, batch, max_new)
        ratios = self._mean_fraction([c / n_calls for c in counts.values()]) if hires else [None] * b
        results = []
        for i in range(b):
            results.append(GenerationResult(
                token_ids=tokens[i], text=self.tokenizer.decode(tokens[i]).strip(),
                n_prompt_tokens=int(batch.valid[i].sum()), hd_selected_ratio=ratios[i], non_finite=non_finite[i],
                selected_per_layer={str(k): int(v[i]) for k, v in selected_prefill.items()}))
        return results, prefill_logits

    def _decode(self, logits, hires: HiResContext | None, cache: KVCache, batch: _Embedded, max_new: list[int]):
        """The greedy loop after the prefill (model/decode.py). Returns each row's tokens (through EOS), with
        high-res each row's selected-token counts summed over its forward calls (layer -> [B]) and the number
        of those calls, and whether a logit row the sample decoded from held NaN/inf: a row that has
        stopped (EOS or its own max_new_tokens) still rides along in the batch but no longer counts."""
        rows, counts, n_calls, non_finite = greedy_decode(self, logits, hires, cache, batch.valid,
                                                          batch.positions[:, -1], max_new, Trace)
        return [self._through_eos(row, n) for row, n in zip(rows, max_new)], counts, n_calls, non_finite

    def _through_eos(self, toks: list[int], max_new: int) -> list[int]:
        toks = toks[:max_new]
        return toks[: toks.index(self.tokenizer.eos_id) + 1] if self.tokenizer.eos_id in toks else toks

    # ---- attention maps (appendix A.2 / A.3) ----
    @torch.no_grad()
    def attention_maps(self, prompts: list[str], images: list[ProcessedImage], continuations: list[list[int]],
                       layers: list[int]) -> list[AttentionMaps]:
        """The maps of the row whose input is the last continuation token (the last prompt token when
        the continuations are empty), at `layers`.

        One teacher-forced call over prompt + continuation in which the last len(continuation) + 1 rows
        use high-res keys, each with its own selection: exactly the rows generation ran with high-res
        (the choose() suffix does the same), so the maps are generation's. All continuations of
        one call have the same length (the rows that use high-res must be the same for every sample).
        """
        if len({len(c) for c in continuations}) > 1:
            raise ValueError("attention_maps: all continuations of one call must have the same length")
        prompt_ids = [self.tokenizer.encode_prompt(p) for p in prompts]
        ids_list = [p + list(c) for p, c in zip(prompt_ids, continuations)]
        low, hd_feats = self.encode_images(images)
        batch = self._embed(ids_list, low)
        b, t, _ = batch.embeds.shape
        rows = len(continuations[0]) + 1
        # keyed by the prompt, as in generate(): the random ablation draws the same cells
        hires_images = self._hires_images(images, hd_feats, batch, prompt_ids)
        trace = Trace(keep_masks=True, map_layers=frozenset(layers), map_cols=batch.img_cols)
        hires = HiResContext(hires_images, self.options, rows, batch.positions[:, -rows:], trace)
        self.lm.model(batch.embeds, *self._rope(batch.positions), self._new_cache(b, t),
                      self._prefill_visible(batch.valid), hires)
        n_hd = (self.grid * self.zoom) ** 2 if self.use_hd else 0
        return [AttentionMaps(maps={k: v[i, -1].float().cpu() for k, v in sorted(trace.maps.items())},
                              masks={k: v[i, -1].cpu() for k, v in sorted(trace.masks.items())}, n_hd_tokens=n_hd)
                for i in range(b)]

    # ---- likelihood scoring ----
    @torch.no_grad()
    def choose(self, items: list[tuple[Choice, ProcessedImage]]) -> list[ChoiceResult]:
        """Mean NLL of each option's tokens given its prompt (the release's train()-path scoring)."""
        return self.choose_prompts([self.prompt_text(req) for req, _ in items], [im for _, im in items],
                                   [req.options for req, _ in items], [req.append_eos for req, _ in items])

    @torch.no_grad()
    def choose_prompts(self, prompts: list[str], images: list[ProcessedImage], options: list, append_eos: list[bool]):
        """`choose` for finished prompts: each prompt's options (and whether </s> follows each option)."""
        prompt_ids, option_ids = [], []
        for prompt, opts, eos in zip(prompts, options, append_eos, strict=True):
            pairs = [self.tokenizer.encode_option(prompt, o, eos) for o in opts]
            prompt_ids.append(pairs[0][0])
            option_ids.append([s for _, s in pairs])
        order = _longest_first([len(ids) for ids in prompt_ids])
        results = self._choose_batch([prompt_ids[i] for i in order], [option_ids[i] for i in order],
                                     [images[i] for i in order])
        return _input_order(results, order)

    def _choose_batch(self, prompt_ids, option_ids, images) -> list[ChoiceResult]:
        low, hd_feats = self.encode_images(images)
        # 1) the prompt minus its last token: no row uses high-res there, so run it once.
        prefix = self._embed([ids[:-1] for ids in prompt_ids], low)
        b, t, _ = prefix.embeds.shape
        blocks = OptionBlocks.build(prompt_ids, option_ids, self.device)
        cache = self._new_cache(b, t + blocks.rows)
        self.lm.model(prefix.embeds, *self._rope(prefix.positions), cache, self._prefill_visible(prefix.valid))
        # 2) every option as a block [last prompt token, option tokens but the last], all rows high-res.
        n_prefix = prefix.valid.sum(1)  # [B] the last prompt token's position
        positions = n_prefix[:, None] + blocks.offset  # [B, rows]
        # keep_selection: the selecting layers whose choice a later layer uses (S .. last - 1)
        trace = Trace(keep_masks=True, map_layers=frozenset(range(self.options.select_layer, self.cfg.num_layers - 1)),
                      map_cols=prefix.img_cols) if self.keep_selection else Trace()
        hires = self._hires(self._hires_images(images, hd_feats, prefix, prompt_ids), blocks.rows, positions, trace,
                            new_hires_cache(self, b, static_only=True))
        hidden = self.lm.model(self.lm.model.embed_tokens(blocks.tokens), *self._rope(positions), cache,
                               blocks.visible(prefix.valid), hires)
        logits = self.lm.lm_head(hidden).float()  # [B, rows, V]
        mean_nll = blocks.mean_nll(logits).tolist()
        ratios = self._row_ratios(hires.trace, blocks.row_valid) if hires else [None] * b
        maps, masks = trace.first_rows() if self.keep_selection and hires else ({}, {})  # the prompt-end row
        return [ChoiceResult(option_nll=mean_nll[i][: len(option_ids[i])], n_prompt_tokens=int(n_prefix[i]) + 1,
                             hd_selected_ratio=ratios[i], selection=AttentionMaps(
                                 {k: v[i] for k, v in maps.items()}, {k: v[i] for k, v in masks.items()},
                                 (self.grid * self.zoom) ** 2) if maps else None) for i in range(b)]

    def _row_ratios(self, trace: Trace, row_valid: torch.Tensor) -> list[float | None]:
        """Per sample: the selected fraction averaged over its real option rows and the layers."""
        n_tokens = (self.grid * self.zoom) ** 2
        sel = torch.stack(list(trace.selected.values()), 0).float()  # [layers, B, R]
        per_row = (sel * row_valid[None]).sum((0, 2)) / (row_valid.sum(1) * sel.shape[0])
        return (per_row / n_tokens).tolist()
