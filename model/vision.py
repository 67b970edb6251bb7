"""CLIP vision tower (penultimate layer, patch tokens), as LLaVA-1.5's CLIPVisionTower."""

from __future__ import annotations

import torch
from torch import nn


class VisionTower(nn.Module):
    """Wraps a transformers CLIPVisionModel; keeps only the layers the selected feature needs."""

    def __init__(self, clip: nn.Module, select_layer: int = -2):
        super().__init__()
        self.clip = clip
        n_layers = clip.config.num_hidden_layers
        # hidden_states[select_layer] is the output of layer (n_layers + 1 + select_layer); later layers
        # never influence it, so they are dropped (saves ~4% of CLIP compute and memory).
        keep = n_layers + 1 + select_layer if select_layer < 0 else select_layer
        encoder = clip.vision_model.encoder if hasattr(clip, "vision_model") else clip.encoder
        encoder.layers = encoder.layers[:keep]
        self.image_size = clip.config.image_size
        self.grid = clip.config.image_size // clip.config.patch_size

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, 336, 336] -> [N, 576, mm_hidden] patch features (CLS dropped)."""
        dtype = next(self.clip.parameters()).dtype
        out = self.clip(pixel_values=pixels.to(dtype), output_hidden_states=True)
        return out.hidden_states[-1][:, 1:]
