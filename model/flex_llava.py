"""FlexLlava: a loaded checkpoint plus the batched entry points the runner and `inspect` use.

Two request kinds (spec section 7):
- `generate`: greedy decoding; in every forward call only the last row uses high-res keys.
- `score_options`: mean next-token NLL of each option; every answer-predicting row uses high-res
  keys with its own selection. The prompt minus its last token uses no high-res, so it is run once
  per sample and its KV cache is shared by all of the sample's options, which run together as
  blocks of one suffix call (block-causal mask).
Nothing is kept between calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from flexeval.errors import FlexEvalError

from .config import FlexConfig, RunOptions
from .fast import HDState, KVCache, Trace, forward
from .image import (
    Preprocessor,
    ProcessedImage,
    lowres_view,
    padding_patches,
    preprocess,
    split_crops,
    stitch_crops,
)
from .llama import LlavaLM, hd_rope, rope_cos_sin
from .selection import padding_cell_mask
from .tokenizer import IMAGE_TOKEN_ID, LlavaTokenizer
from .vision import VisionTower


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    n_prompt_tokens: int
    hd_selected_ratio: float | None = None  # mean over high-res rows and layers
    selected_per_layer: dict = field(default_factory=dict)  # prefill last row: layer -> count
    prompt: str | None = None  # the exact prompt text and ids, where the model builds them (hf_vlm.py)
    prompt_ids: list[int] | None = None


@dataclass
class ChoiceResult:
    option_nll: list[float]
    n_prompt_tokens: int
    hd_selected_ratio: float | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None


class FlexLlava:
    def __init__(self, lm: LlavaLM, vision: VisionTower, tokenizer: LlavaTokenizer, cfg: FlexConfig,
                 options: RunOptions | None = None, device: str | torch.device = "cpu", dtype=torch.float32):
        self.lm, self.vision, self.tokenizer, self.cfg = lm, vision, tokenizer, cfg
        self.options = options or RunOptions(selection="attention" if cfg.has_hd else "none")
        self.options.validate(cfg)
        self.resolved = self.options.resolve(cfg)
        self.device, self.dtype = torch.device(device), dtype
        self.grid = vision.grid  # 24
        self.zoom = self.resolved["zoom"]
        self.use_hd = cfg.has_hd and self.resolved["selection"] != "none"
        # FlexAttention checkpoints read a 1008 px view (low-res = its antialiased 336 downsample) even
        # with selection none; plain LLaVA-1.5 follows its own processor: the padded image at 336.
        self.image_size = self.resolved["highres_size"] if cfg.has_hd else cfg.lowres_size

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
        pixels = torch.stack([im.pixels for im in images]).to(self.device)
        low = lowres_view(pixels, self.cfg.lowres_size)
        crops = split_crops(pixels, self.cfg.lowres_size) if self.use_hd else low[:0]
        feats = self.lm.model.mm_projector(self.vision(torch.cat([low, crops])).to(self.dtype))
        b = len(images)
        low_feats = feats[:b]
        if not self.use_hd:
            return low_feats, None
        hd = stitch_crops(feats[b:], self.zoom, self.grid)
        return low_feats, hd

    # ---- batching helpers ----
    def _embed(self, ids_list: list[list[int]], low_feats: torch.Tensor):
        """Left-padded embeddings with the image features spliced in.

        Returns embeds [B, T, D], valid [B, T], positions [B, T], image columns [B, 576].
        """
        n_img = low_feats.shape[1]
        lengths = [len(ids) - 1 + n_img for ids in ids_list]
        t = max(lengths)
        b = len(ids_list)
        tok = torch.zeros(b, t, dtype=torch.long)
        is_img = torch.zeros(b, t, dtype=torch.bool)
        valid = torch.zeros(b, t, dtype=torch.bool)
        img_start = []
        for i, ids in enumerate(ids_list):
            pad = t - lengths[i]
            if IMAGE_TOKEN_ID not in ids:
                raise FlexEvalError("a prompt has no <image>: FlexAttention LLaVA reads exactly one image per prompt")
            p = ids.index(IMAGE_TOKEN_ID)
            row = ids[:p] + [0] * n_img + ids[p + 1:]
            tok[i, pad:] = torch.tensor(row)
            is_img[i, pad + p: pad + p + n_img] = True
            valid[i, pad:] = True
            img_start.append(pad + p)
        tok, is_img, valid = tok.to(self.device), is_img.to(self.device), valid.to(self.device)
        embeds = self.lm.model.embed_tokens(tok)
        embeds[is_img] = low_feats.reshape(-1, low_feats.shape[-1]).to(embeds.dtype)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        img_cols = torch.tensor(img_start, device=self.device)[:, None] + torch.arange(n_img, device=self.device)
        return embeds, valid, positions, img_cols

    def _hd_state(self, images, hd_feats, img_cols, positions, sample_keys) -> HDState | None:
        if hd_feats is None:
            return None
        hd_grid = self.grid * self.zoom
        img_pos = positions.gather(1, img_cols)
        cos, sin = hd_rope(img_pos, hd_grid, self.cfg.head_dim, self.cfg.rope_theta, self.dtype)
        axis, n = [], []
        for im in images:
            a, k = padding_patches(im.orig_size, self.grid) if im.padded else ("rows", 0)
            axis.append(1 if a == "rows" else 2)
            n.append(k)
        pad_cells = padding_cell_mask(torch.tensor(axis, device=self.device), torch.tensor(n, device=self.device),
                                      self.grid)
        return HDState(feats=hd_feats, cos=cos, sin=sin, img_cols=img_cols, pad_cells=pad_cells,
                       select_layer=self.resolved["select_layer"], selection=self.resolved["selection"],
                       threshold=self.resolved["threshold"], hd_grid=hd_grid, sample_keys=sample_keys,
                       random_ratio=self.resolved["random_ratio"], seed=self.resolved["seed"])

    def _new_cache(self, b: int, capacity: int) -> KVCache:
        c = self.cfg
        return KVCache(c.num_layers, b, c.num_kv_heads, c.head_dim, capacity, self.dtype, self.device)

    @staticmethod
    def _sample_key(ids: list[int]) -> str:
        return hashlib.sha256(str(ids).encode()).hexdigest()[:16]

    def _prefill_visible(self, valid: torch.Tensor) -> torch.Tensor:
        """[B, T, T] keys each row may see: causal over real tokens; a padding row sees itself (no NaN)."""
        t = valid.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=self.device)
        return (causal[None] & valid[:, None, :]) | eye[None]

    def _hd_ratio(self, selected: dict, b: int) -> list[float | None]:
        """Mean over layers of the selected fraction; `selected`: layer -> [B] token counts."""
        if not selected:
            return [None] * b
        n_tokens = (self.grid * self.zoom) ** 2
        per_layer = torch.stack([v.float() for v in selected.values()], dim=1)  # [B, layers]
        return (per_layer.mean(1) / n_tokens).tolist()

    # ---- generation ----
    @torch.no_grad()
    def generate(self, prompts: list[str], images: list[ProcessedImage], max_new_tokens: int = 32,
                 return_prefill_logits: bool = False):
        ids_list = [self.tokenizer.encode_prompt(p) for p in prompts]
        low, hd_feats = self.encode_images(images)
        embeds, valid, positions, img_cols = self._embed(ids_list, low)
        b, t, _ = embeds.shape
        hd = self._hd_state(images, hd_feats, img_cols, positions, [self._sample_key(i) for i in ids_list])
        cache = self._new_cache(b, t + max_new_tokens)
        key_valid = torch.zeros(b, t + max_new_tokens, dtype=torch.bool, device=self.device)
        key_valid[:, :t] = valid
        visible = self._prefill_visible(valid)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, self.dtype)
        prefill_trace, trace = Trace(), Trace()
        hidden = forward(self.lm, embeds, cos, sin, cache, visible, hd, 1, positions[:, -1:], prefill_trace)
        prefill_logits = self.lm.lm_head(hidden) if return_prefill_logits else None
        logits = self.lm.lm_head(hidden[:, -1])
        selected_prefill = {k: v[:, 0].tolist() for k, v in prefill_trace.selected.items()}
        sums = {k: v.clone() for k, v in prefill_trace.selected.items()}
        steps = 1
        out = torch.zeros(b, 0, dtype=torch.long, device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        pos = positions[:, -1]
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == self.tokenizer.eos_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            pos = pos + 1
            key_valid[:, t + step] = True
            emb = self.lm.model.embed_tokens(nxt)[:, None]
            c, s = rope_cos_sin(pos[:, None], self.cfg.head_dim, self.cfg.rope_theta, self.dtype)
            vis = key_valid[:, None, : t + step + 1]
            trace = Trace()
            hidden = forward(self.lm, emb, c, s, cache, vis, hd, 1, pos[:, None], trace)
            for k, v in trace.selected.items():
                sums[k] = sums[k] + v
            steps += 1
            logits = self.lm.lm_head(hidden[:, -1])
        ratios = self._hd_ratio({k: v[:, 0] / steps for k, v in sums.items()}, b)
        results = []
        for i in range(b):
            toks = out[i].tolist()
            if self.tokenizer.eos_id in toks:
                toks = toks[: toks.index(self.tokenizer.eos_id) + 1]
            results.append(GenerationResult(
                token_ids=toks, text=self.tokenizer.decode(toks).strip(), n_prompt_tokens=int(valid[i].sum()),
                hd_selected_ratio=ratios[i],
                selected_per_layer={str(k): int(v[i]) for k, v in selected_prefill.items()}))
        if return_prefill_logits:
            return results, prefill_logits
        return results

    # ---- likelihood scoring ----
    @torch.no_grad()
    def score_options(self, prompts: list[str], images: list[ProcessedImage], options: list[list[str]],
                      append_eos: bool = False) -> list[ChoiceResult]:
        """Mean NLL of each option's tokens given its prompt (the release's train()-path scoring)."""
        prompt_ids, option_ids = [], []
        for p, opts in zip(prompts, options):
            pairs = [self.tokenizer.encode_option(p, o, append_eos) for o in opts]
            prompt_ids.append(pairs[0][0])
            option_ids.append([s for _, s in pairs])
        low, hd_feats = self.encode_images(images)
        # 1) the prompt minus its last token: no row uses high-res there, so run it once.
        embeds, valid, positions, img_cols = self._embed([ids[:-1] for ids in prompt_ids], low)
        b, t, _ = embeds.shape
        block = max(len(s) for sample in option_ids for s in sample)  # rows per option block
        n_blocks = max(len(s) for s in option_ids)
        cache = self._new_cache(b, t + n_blocks * block)
        visible = self._prefill_visible(valid)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, self.dtype)
        forward(self.lm, embeds, cos, sin, cache, visible, None, 0, positions[:, -1:])
        # 2) every option as a block [last prompt token, option tokens but the last], all rows high-res.
        ts = n_blocks * block
        tok = torch.zeros(b, ts, dtype=torch.long)
        targets = torch.full((b, ts), -100, dtype=torch.long)
        row_valid = torch.zeros(b, ts, dtype=torch.bool)
        offset = torch.zeros(b, ts, dtype=torch.long)
        for i, (pids, opts) in enumerate(zip(prompt_ids, option_ids)):
            for k, suffix in enumerate(opts):
                rows = [pids[-1]] + suffix[:-1]
                s = k * block
                tok[i, s:s + len(rows)] = torch.tensor(rows)
                targets[i, s:s + len(rows)] = torch.tensor(suffix)
                row_valid[i, s:s + len(rows)] = True
                offset[i, s:s + block] = torch.arange(block)
        tok, targets, row_valid, offset = (x.to(self.device) for x in (tok, targets, row_valid, offset))
        n_prefix = valid.sum(1)  # the last prompt token's position
        pos_s = n_prefix[:, None] + offset
        blk = torch.arange(ts, device=self.device) // block
        within = (blk[:, None] == blk[None, :]) & (torch.arange(ts, device=self.device)[None, :]
                                                   <= torch.arange(ts, device=self.device)[:, None])
        vis_s = torch.cat([valid[:, None, :].expand(b, ts, t), (within[None] & row_valid[:, None, :])
                           | torch.eye(ts, dtype=torch.bool, device=self.device)[None]], dim=2)
        hd = self._hd_state(images, hd_feats, img_cols, positions, [self._sample_key(i) for i in prompt_ids])
        c, s_ = rope_cos_sin(pos_s, self.cfg.head_dim, self.cfg.rope_theta, self.dtype)
        trace = Trace()
        hidden = forward(self.lm, self.lm.model.embed_tokens(tok), c, s_, cache, vis_s, hd, ts, pos_s, trace)
        logits = self.lm.lm_head(hidden).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none",
                              ignore_index=-100).reshape(b, n_blocks, block)
        counts = (targets != -100).reshape(b, n_blocks, block).sum(-1)
        mean_nll = (nll.sum(-1) / counts.clamp(min=1)).tolist()
        ratios = self._row_ratios(trace, row_valid)
        return [ChoiceResult(option_nll=mean_nll[i][: len(option_ids[i])], n_prompt_tokens=int(n_prefix[i]) + 1,
                             hd_selected_ratio=ratios[i]) for i in range(b)]

    def _row_ratios(self, trace: Trace, row_valid: torch.Tensor) -> list[float | None]:
        if not trace.selected:
            return [None] * row_valid.shape[0]
        n_tokens = (self.grid * self.zoom) ** 2
        sel = torch.stack(list(trace.selected.values()), 0).float()  # [layers, B, R]
        per_row = (sel * row_valid[None]).sum((0, 2)) / (row_valid.sum(1) * sel.shape[0])
        return (per_row / n_tokens).tolist()
