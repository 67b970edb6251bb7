"""Target coverage on V*: do the selected high-res tokens land on the object the question is about?

V* annotates each item's target objects (`bbox`: [x, y, w, h] in original pixels). For every
high-res selecting layer L of a FlexAttention model (L = S .. num_layers - 2: the layers whose
selection the next layer attends with) and ONE query row, the prompt-end row (the last prompt
token, which predicts the first answer token; in `choose()` it is the first row of every option
block and identical for all options), this module measures:

- recall: the fraction of the union of the target boxes' area covered by the tokens selected at L;
- precision: the fraction of the selected tokens' area that lies on a target box (areas in the
  model's square input: with pad-to-square, selected padding counts as off-target);
- attention_mass: the fraction of layer L's low-res attention map (head-summed, 24x24, the tensor
  the attention selection reads) on the target boxes, a cell counting with the fraction of its
  area the boxes cover.

Boxes go through the image's own geometry (model/image.py): pad to square (image pasted at
(0, (W-H)//2) or ((H-W)//2, 0)) and a resize of the square, or for `image_mode="crop"` the shortest
edge resized and a centre crop (the parts of a box outside the crop are dropped). Areas are exact
(the union of boxes against the token grid by coordinate compression), not rasterised.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flexeval.errors import FlexEvalError

COVERAGE_FIELDS = ("recall", "precision", "attention_mass")


# ---------------------------------------------------------------- boxes from the release files

def parse_boxes(value: Any, where: str) -> list[list[float]]:
    """V*'s `bbox`: one [x, y, w, h] or a list of them -> a list of boxes; bad input is an error."""
    fix = "restore the release file (bbox: [x, y, w, h] or a list of such boxes, in pixels)"
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise FlexEvalError(f"{where}: field 'bbox' must be a list of [x, y, w, h] boxes, got {value!r:.80}; {fix}")
    boxes = []
    for k, b in enumerate(value):
        ok = isinstance(b, (list, tuple)) and len(b) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        if not ok or b[2] < 0 or b[3] < 0:
            raise FlexEvalError(f"{where}: bbox[{k}] = {b!r:.80} is not [x, y, w, h] with w, h >= 0; {fix}")
        boxes.append(list(b))
    return boxes


# ---------------------------------------------------------------- geometry

def unit_boxes(boxes: list[list[float]], orig_size: tuple[int, int], padded: bool,
               size: int | None = None) -> list[tuple[float, float, float, float]]:
    """[x, y, w, h] original pixels -> (x0, y0, x1, y1) in the model's square input, as fractions of
    its side (0..1), clipped; empty boxes dropped. `size`: the input side (crop mode only)."""
    w, h = orig_size
    out = []
    for x, y, bw, bh in boxes:
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
        if padded:
            side = max(w, h)
            dx, dy = (0, (w - h) // 2) if w > h else ((h - w) // 2, 0)
            box = ((x0 + dx) / side, (y0 + dy) / side, (x1 + dx) / side, (y1 + dy) / side)
        else:
            if size is None:
                raise ValueError("unit_boxes: crop mode needs the input size")
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(size * long / short)
            new_w, new_h = (size, new_long) if w <= h else (new_long, size)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            sx, sy = new_w / w, new_h / h
            box = ((x0 * sx - left) / size, (y0 * sy - top) / size, (x1 * sx - left) / size, (y1 * sy - top) / size)
        box = tuple(min(max(v, 0.0), 1.0) for v in box)
        if box[2] > box[0] and box[3] > box[1]:
            out.append(box)
    return out


def cell_coverage(boxes: list[tuple[float, float, float, float]], grid: int) -> np.ndarray:
    """[grid, grid] (row-major: y, x) fraction of each cell's area inside the UNION of the unit boxes."""
    cov = np.zeros((grid, grid))
    if not boxes:
        return cov
    b = np.asarray(boxes, dtype=np.float64)  # [K, 4]
    lines = np.linspace(0.0, 1.0, grid + 1)
    xs = np.unique(np.concatenate([lines, b[:, 0], b[:, 2]]))
    ys = np.unique(np.concatenate([lines, b[:, 1], b[:, 3]]))
    xm, ym = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2  # elementary intervals' midpoints
    in_x = (xm[None, :] > b[:, 0:1]) & (xm[None, :] < b[:, 2:3])  # [K, X]
    in_y = (ym[None, :] > b[:, 1:2]) & (ym[None, :] < b[:, 3:4])  # [K, Y]
    inside = (in_y[:, :, None] & in_x[:, None, :]).any(0)  # [Y, X] in any box: the union
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :] * inside
    cx = np.minimum((xm * grid).astype(int), grid - 1)
    cy = np.minimum((ym * grid).astype(int), grid - 1)
    np.add.at(cov, (cy[:, None].repeat(len(cx), 1), cx[None, :].repeat(len(cy), 0)), area)
    return cov * grid * grid  # area in units of one cell


def coverage_values(cov_hd: np.ndarray, cov_low: np.ndarray, mask: np.ndarray | None,
                    attn_map: np.ndarray | None) -> dict:
    """One layer: recall, precision (from a [N] bool mask over the hd grid) and attention_mass
    (from a [576] map); None where undefined (no target area, nothing selected, a zero map)."""
    out: dict = {k: None for k in COVERAGE_FIELDS}
    target = cov_hd.sum()
    if mask is not None:
        m = np.asarray(mask, dtype=bool).reshape(cov_hd.shape)
        on = float((cov_hd * m).sum())
        out["recall"] = on / target if target > 0 else None
        out["precision"] = on / float(m.sum()) if m.any() else None
    if attn_map is not None:
        a = np.asarray(attn_map, dtype=np.float64).reshape(cov_low.shape)
        total = a.sum()
        out["attention_mass"] = float((a * cov_low).sum() / total) if total > 0 and np.isfinite(total) else None
    return out


def target_coverage(boxes: list[list[float]], orig_size: tuple[int, int], padded: bool, size: int,
                    layers: list[int], masks: dict, maps: dict) -> dict:
    """The record's `target_coverage`: {"layers", "recall", "precision", "attention_mass"}, one value per
    layer in the order of `layers`; masks: layer -> [(24z)^2] bool, maps: layer -> [576]."""
    ub = unit_boxes(boxes, orig_size, padded, size)
    out: dict = {"layers": list(layers), **{k: [] for k in COVERAGE_FIELDS}}
    cov_low = None
    for layer in layers:
        mask, amap = masks.get(layer), maps.get(layer)
        n_hd = int(np.asarray(mask).size) if mask is not None else 0
        cov_hd = cell_coverage(ub, int(round(math.sqrt(n_hd)))) if n_hd else np.zeros((1, 1))
        if amap is not None and cov_low is None:
            cov_low = cell_coverage(ub, int(round(math.sqrt(np.asarray(amap).size))))
        vals = coverage_values(cov_hd, cov_low if cov_low is not None else np.zeros((1, 1)),
                               mask if n_hd else None, amap)
        for k in COVERAGE_FIELDS:
            v = vals[k]
            out[k].append(None if v is None else round(float(v), 6))
    return out


# ---------------------------------------------------------------- the execution core's hooks

def wants_coverage(model, samples) -> bool:
    """On for a model that selects high-res tokens and exposes its selection, and items with boxes."""
    return (hasattr(model, "keep_selection") and bool(getattr(model, "use_hd", False))
            and any("bbox" in s.meta for s in samples))


def enable_coverage(model, samples) -> None:
    """The model's selection trace on exactly when `wants_coverage` (off again for the next benchmark)."""
    if hasattr(model, "keep_selection"):
        model.keep_selection = wants_coverage(model, samples)


def record_coverage(sample, result, image) -> dict:
    """The record's extra field for one answered item: {"target_coverage": ...}, or {} when the item has
    no boxes or the result carries no selection trace."""
    traced = getattr(result, "selection", None)
    if traced is None or "bbox" not in sample.meta or image is None:
        return {}
    boxes = parse_boxes(sample.meta["bbox"], sample.id)
    layers = sorted(traced.masks)
    return {"target_coverage": target_coverage(boxes, tuple(image.orig_size), bool(image.padded),
                                               int(image.pixels.shape[-1]), layers,
                                               {k: v.numpy() for k, v in traced.masks.items()},
                                               {k: v.numpy() for k, v in traced.maps.items()})}
