"""Shared helpers for generated sample data (synthetic scenes; layouts are the releases')."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

PALETTE = [(220, 30, 30), (30, 160, 60), (40, 70, 220), (240, 220, 40), (250, 250, 250), (15, 15, 15),
           (140, 40, 160), (250, 140, 20)]


def draw_scene(rng: random.Random, w: int, h: int, n_objects: int) -> tuple[Image.Image, list[list[int]]]:
    """A textured background with a few small coloured boxes; returns the image and [x, y, w, h] boxes."""
    bg = tuple(rng.randrange(60, 200) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(12):  # low-contrast texture so images are not flat
        x0, y0 = rng.randrange(w), rng.randrange(h)
        c = tuple(min(255, max(0, v + rng.randrange(-30, 30))) for v in bg)
        draw.ellipse([x0, y0, x0 + rng.randrange(20, w // 3), y0 + rng.randrange(20, h // 3)], fill=c)
    boxes = []
    for _ in range(n_objects):
        bw, bh = rng.randrange(w // 40, w // 12), rng.randrange(h // 40, h // 12)
        x, y = rng.randrange(0, w - bw), rng.randrange(0, h - bh)
        draw.rectangle([x, y, x + bw, y + bh], fill=rng.choice(PALETTE))
        boxes.append([x, y, bw, bh])
    return img, boxes
