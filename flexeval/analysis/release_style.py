"""`flexeval attention --style release`: the picture the FlexAttention release's visualiser drew.

The release's `llava/eval/model_vqa_visualize.py` (read, not copied), per layer of the prefill call:
1. the LAST prompt row's attention over the 576 low-res image tokens, summed over heads (and batch);
2. keep the top 20%: the value of the int(576 * 0.2) = 115th largest is the threshold, cells >= it
   keep their value (ties included), the others become 0;
3. min-max normalise over the 576 (a constant map gives 0/0 = NaN, so nothing survives step 4);
4. binarise: 1 where normalised * 255 > 64;
5. `adaptive_max_pool2d` of the 24 x 24 binary map to 8 x 8 (windows of 3 x 3 cells);
6. nearest upsample of the 8 x 8 onto the image padded to a square in BLACK (its own expand2square
   with (0, 0, 0), not the CLIP-mean grey the model sees), drawn with alpha 0.7 and the `rainbow`
   colour map over the square; every layer in one grid, each titled `layer|mean` (the mean of the
   upsampled mask, 3 decimals).
Our maps are the model's head-summed low-res attention of the asked row (flexeval/analysis/attention.py);
the release style reads the last prompt row unless --token says otherwise. At layers > S FlexAttention's
softmax also covers the selected high-res keys in the release's returned weights; ours is the softmax
over the normal keys (the one the selection reads): min-max normalisation removes a common scale, not
per-head differences, so a mask can differ there by a cell near the threshold.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TOP_FRACTION = 0.2
THRESHOLD = 64  # on the 0..255 scale
POOL = 8
DISPLAY_SIDE = 480  # px of the drawn square: the mask is blocks of side / 8, the same picture at any size


def release_mask(lowres: torch.Tensor) -> torch.Tensor:
    """[576] (or [24, 24]) head-summed map -> the release's [8, 8] 0/1 mask (float32)."""
    a = lowres.detach().float().flatten()
    g = int(round(math.sqrt(a.numel())))
    thr = a.topk(int(g * g * TOP_FRACTION)).values[-1]
    a = torch.where(a >= thr, a, torch.zeros_like(a))
    a = (a - a.min()) / (a.max() - a.min())
    a = ((a * 255) > THRESHOLD).float()
    return F.adaptive_max_pool2d(a.reshape(1, 1, g, g), (POOL, POOL))[0, 0]


def release_overlay(mask: torch.Tensor, side: int) -> torch.Tensor:
    """The [8, 8] mask nearest-upsampled onto a side x side square (torch's `nearest`, as the release)."""
    return F.interpolate(mask[None, None].float(), size=(side, side), mode="nearest")[0, 0]


def overlay_mean(mask: torch.Tensor, side: int) -> float:
    """The mean of release_overlay(mask, side) without building it (the release's title number)."""
    idx = F.interpolate(torch.arange(POOL, dtype=torch.float32)[None, None], size=side, mode="nearest")[0, 0].long()
    counts = torch.bincount(idx, minlength=POOL).float()
    return float(counts @ mask.float() @ counts) / (side * side)


def pad_square_black(image):
    """The release's expand2square(image, (0, 0, 0)): the image centred on a black square."""
    from flexeval.model.image import pad_to_square

    return pad_to_square(image.convert("RGB"), (0, 0, 0))


def render_release(image, maps: dict, layers: list[int], out: Path, heading: str = "") -> Path:
    """Every layer in one grid (ceil(sqrt(n)) columns: 6 x 6 for 32 layers, as the release), `layer|mean`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flexeval.analysis.attention import save_figure

    square = pad_square_black(image)
    side = square.size[0]
    shown = np.asarray(square.resize((DISPLAY_SIDE, DISPLAY_SIDE)))
    cols = math.ceil(math.sqrt(len(layers)))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, layers):
        mask = release_mask(maps[layer])
        ax.imshow(shown)
        ax.imshow(release_overlay(mask, DISPLAY_SIDE).numpy(), alpha=0.7, cmap="rainbow", vmin=0, vmax=1)
        ax.set_title(f"{layer}|{round(overlay_mean(mask, side), 3)}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if heading:
        heading = "\n".join(textwrap.fill(line, int(2.6 * cols * 14)) for line in heading.split("\n"))
        fig.suptitle(heading, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - (heading.count("\n") + 1.5) * 0.2 / fig.get_size_inches()[1]), h_pad=1.2)
    return save_figure(fig, Path(out), dpi=90)
