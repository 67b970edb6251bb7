"""Image path (spec section 2): 8-bit RGB, pad to square, 1008 px, low-res view, 3x3 high-res crops.

`preprocess` runs on the CPU in the runner's data workers (PIL decode + resize dominate); the
rest runs on the model's device.

Every PIL mode becomes 8-bit RGB by one rule (`to_rgb8`), so a 16-bit or float file shows the
model the picture it holds instead of PIL's `convert("RGB")` clipping (16-bit -> white, float ->
black). For 8-bit files without transparency the result is exactly the release's `convert("RGB")`.
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


# Value ranges tried in order for the modes with no fixed range ("I": int32, "F": float32): the first
# that holds every finite value is mapped onto 0..255; past them all, the image's own min..max is.
_FLOAT_RANGES = ((0.0, 1.0), (0.0, 255.0), (0.0, 65535.0))
_INT_RANGES = ((0.0, 255.0), (0.0, 65535.0))
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def to_rgb8(img: Image.Image, background: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """Any PIL image -> 8-bit RGB showing what the file holds.

    - RGB as is; 1, L, CMYK, YCbCr (and other 8-bit modes) by PIL's own conversion (1 -> 0/255,
      CMYK naive without an ICC profile, YCbCr as JPEG's BT.601 full range).
    - Transparency (LA, PA, RGBA, a P palette with alpha, a tRNS colour key) is composited over
      `background`: the model sees transparent parts as it sees the padding.
    - 16-bit (I;16, I;16B, ...): v * 255 / 65535, rounded (the type's range: a 16-bit copy of an
      8-bit picture, v = 257 * k, gives back k).
    - I (int32) and F (float32) have no fixed range: the first of 0..1 (F only), 0..255, 0..65535
      that holds every finite value maps onto 0..255; otherwise the image's own min..max does.
      NaN becomes 0, +-inf the range's ends. The grey value is repeated on R, G and B.
    Multi-frame files are converted in their current frame (`open_image` leaves frame 0).
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(img), "L").convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        img, mode = img.convert("RGBA" if has_alpha else "RGB"), "RGBA" if has_alpha else "RGB"
    elif mode in ("L", "RGB") and "transparency" in img.info:  # a tRNS colour key
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        base = Image.new("RGBA", img.size, (*background, 255))
        return Image.alpha_composite(base, img.convert("RGBA")).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _grey_to_uint8(img: Image.Image) -> np.ndarray:
    a = np.asarray(img).astype(np.float64)
    finite = a[np.isfinite(a)]
    lo_v, hi_v = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if img.mode in _SIXTEEN_BIT:
        lo, hi = 0.0, 65535.0
    else:
        ranges = _FLOAT_RANGES if img.mode == "F" else _INT_RANGES
        lo, hi = next(((a_, b_) for a_, b_ in ranges if a_ <= lo_v and hi_v <= b_), (lo_v, hi_v))
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def pad_to_square(img: Image.Image, color: tuple[int, ...] = PAD_COLOR) -> Image.Image:
    """The release's expand2square: the image centred on a square of `color` (default the CLIP mean)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def _normalise(img: Image.Image) -> torch.Tensor:
    # As the CLIP image processor: rescale by 1/255 (float64 product cast to float32), then normalise.
    x = (np.asarray(img, dtype=np.uint8) * (1 / 255)).astype(np.float32)
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def preprocess(img: Image.Image, size: int, mode: str = "pad") -> ProcessedImage:
    """Image (any mode: `to_rgb8`) -> normalised [3, size, size] tensor.

    mode "pad": the release (pad with the CLIP mean, PIL bicubic resize of the square).
    mode "crop": the plain CLIP processor (shortest edge to `size`, centre crop); no padding.
    """
    img = to_rgb8(img, PAD_COLOR)
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


def pixels_sha256(pixels) -> str:
    """sha256 of the model's input pixels as float32 (C order): equal hashes, equal inputs."""
    import hashlib

    return hashlib.sha256(pixels.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
