"""Image path (spec section 2): pad to square, 1008 px, low-res view, 3x3 high-res crops.

`preprocess` runs on the CPU in the runner's data workers (PIL decode + resize dominate); the
rest runs on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = tuple(int(255 * m) for m in CLIP_MEAN)  # truncated: (122, 116, 104)


@dataclass
class ProcessedImage:
    pixels: torch.Tensor  # [3, size, size] float32, CLIP-normalised
    orig_size: tuple[int, int]  # (w, h) of the image before padding
    padded: bool  # True when pad-to-square was applied (selection zeroes the padding)


def pad_to_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), PAD_COLOR)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def _normalise(img: Image.Image) -> torch.Tensor:
    # As the CLIP image processor: rescale by 1/255 (float64 product cast to float32), then normalise.
    x = (np.asarray(img, dtype=np.uint8) * (1 / 255)).astype(np.float32)
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def preprocess(img: Image.Image, size: int, mode: str = "pad") -> ProcessedImage:
    """RGB image -> normalised [3, size, size] tensor.

    mode "pad": the release (pad with the CLIP mean, PIL bicubic resize of the square).
    mode "crop": the plain CLIP processor (shortest edge to `size`, centre crop); no padding.
    """
    img = img.convert("RGB")
    w, h = img.size
    if mode == "pad":
        sq = pad_to_square(img).resize((size, size), Image.BICUBIC)
        return ProcessedImage(_normalise(sq), (w, h), padded=True)
    if mode != "crop":
        raise ValueError(f"unknown image mode {mode!r}")
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return ProcessedImage(_normalise(img), (w, h), padded=False)


def lowres_view(pixels: torch.Tensor, lowres_size: int) -> torch.Tensor:
    """[B, 3, S, S] -> [B, 3, 336, 336], bilinear with antialias (the release's F.interpolate)."""
    if pixels.shape[-1] == lowres_size:
        return pixels
    return F.interpolate(pixels, size=(lowres_size, lowres_size), mode="bilinear", antialias=True,
                         align_corners=False)


def split_crops(pixels: torch.Tensor, crop: int) -> torch.Tensor:
    """[B, 3, S, S] -> [B * z * z, 3, crop, crop], crops in raster order (row by row) per image."""
    b, c, s, _ = pixels.shape
    z = s // crop
    x = pixels.reshape(b, c, z, crop, z, crop).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * z * z, c, crop, crop)


def stitch_crops(features: torch.Tensor, zoom: int, grid: int) -> torch.Tensor:
    """[B * z * z, grid*grid, D] crop features -> [B, (z*grid)^2, D], row-major over the big grid."""
    bz, n, d = features.shape
    b = bz // (zoom * zoom)
    x = features.reshape(b, zoom, zoom, grid, grid, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, zoom * grid * zoom * grid, d)


def padding_patches(orig_size: tuple[int, int], grid: int = 24) -> tuple[str, int]:
    """Which 24x24 rows ('rows', wide image) or columns ('cols', tall image) cover padding, and how many
    per side: n = int(margin / max(w, h) * 24), margin = |w - h| // 2 (spec section 5.2)."""
    w, h = orig_size
    margin = abs(w - h) // 2
    n = int(margin / max(w, h) * grid)
    return ("rows" if w > h else "cols"), n


@dataclass(frozen=True)
class Preprocessor:
    """Picklable image preprocessing for DataLoader workers (no model inside)."""

    size: int

    def __call__(self, img: Image.Image, mode: str = "pad") -> ProcessedImage:
        return preprocess(img, self.size, mode)
