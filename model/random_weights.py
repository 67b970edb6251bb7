"""Random-weight models of a named shape, built directly on the device (for `flexeval speed`).

The LLM is created on the meta device and materialised with `to_empty` on the target device in
the target dtype, then filled with normal (never zero) weights: a 7B shape never passes through
host memory or float32. RMSNorm weights are 1; linear weights have std 1/sqrt(fan_in) so the
activations keep their scale through 32 layers; embeddings std 1. The tokenizer is the tiny
LLaMA-style one trained offline (ids < 400 of the 32000-row vocabulary).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError

from .config import FlexConfig, RunOptions
from .flex_llava import FlexLlava
from .llama import LlavaLM
from .tiny import train_tokenizer
from .tokenizer import LlavaTokenizer
from .vision import VisionTower

ARCHS = {
    "llava-1.5-7b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, intermediate_size=11008,
                         vocab_size=32000, mm_hidden_size=1024),
    "tiny": dict(hidden_size=64, num_layers=12, num_heads=4, num_kv_heads=4, intermediate_size=128,
                 vocab_size=400, mm_hidden_size=32),
}
CLIP_ARCHS = {  # openai/clip-vit-large-patch14-336 and the tiny test tower
    "llava-1.5-7b": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                         num_hidden_layers=24, num_attention_heads=16),
    "tiny": dict(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=2),
}


def random_model(arch: str, device: str, dtype: torch.dtype, options: RunOptions | None = None,
                 seed: int = 0) -> FlexLlava:
    """A FlexAttention LLaVA of shape `arch` with random weights on `device`."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if arch not in ARCHS:
        raise FlexEvalError(f"unknown --arch '{arch}'; choose one of {', '.join(ARCHS)} (or --model PATH)")
    torch.manual_seed(seed)
    cfg = FlexConfig(**ARCHS[arch], has_hd=True)
    with torch.device("meta"):
        lm = LlavaLM(cfg).to(dtype)
    lm = lm.to_empty(device=device)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 1.0 if "embed_tokens" in name else p.shape[-1] ** -0.5)
    with torch.device(device):
        clip = CLIPVisionModel(CLIPVisionConfig(**CLIP_ARCHS[arch])).to(dtype)
    folder = Path(tempfile.mkdtemp(prefix=f"flexeval-random-{arch}-"))
    tok = LlavaTokenizer(train_tokenizer(folder))
    # what the runner's model identity reads: the shape, and that the weights are random
    (folder / "config.json").write_text(json.dumps({"flexeval_random_arch": arch, "seed": seed, **cfg.to_dict()}))
    vision = VisionTower(clip, cfg.vision_select_layer).eval()
    return FlexLlava(lm.eval(), vision, tok, cfg, options or RunOptions(selection="center"), device=device,
                     dtype=dtype, source=f"random-{arch}", folder=folder)
