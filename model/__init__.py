"""FlexAttention LLaVA (Li et al., ECCV 2024), re-implemented for evaluation.

`load_pretrained` reads the release checkpoint (senfu/llava-v1.5-7b-flexattn), original LLaVA-1.5
checkpoints and transformers-native llava-hf checkpoints; `FlexLlava` answers the requests of
flexeval/requests.py with them (`generate`, `choose`; fast, batched);
`reference` holds the literal, slow implementation the fast path is tested against. `load_model`
also serves any transformers vision-language checkpoint (hf_vlm.HFVisionModel, `--model-kind hf`).
See model/README.md for the map from the spec's sections to the code.
"""

from .config import FlexConfig, ResolvedOptions, RunOptions
from .flex_llava import FlexLlava
from .loading import load_model, load_pretrained

__all__ = ["FlexConfig", "RunOptions", "ResolvedOptions", "FlexLlava", "load_model", "load_pretrained"]
