"""A tiny random FlexAttention LLaVA in the release format, for tests and the demo.

Writes what `senfu/llava-v1.5-7b-flexattn` holds, at toy size: config.json (LlavaLlamaForCausalLM,
`extra`, mm_* keys), safetensors with the release parameter names (every layer's k_proj_hd /
v_proj_hd), a LLaMA-style sentencepiece tokenizer.model trained here, and a tiny CLIP ViT (336 px,
patch 14: the 24x24 / 72x72 grids hold) that `mm_vision_tower` points to. `fmt="llava"` drops the
FlexAttention parts (original LLaVA-1.5 format); `fmt="llava-hf"` saves a transformers
LlavaForConditionalGeneration. Deterministic for a seed.

Random weights give near-uniform attention and degenerate selections, so q/k get large gains:
attention becomes peaky and selections vary across layers, rows and images.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError

from .config import FlexConfig
from .llama import LlavaLM

TINY = dict(hidden_size=64, num_layers=12, num_heads=4, num_kv_heads=4, intermediate_size=128, mm_hidden_size=32)
CLIP = dict(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, projection_dim=32)
QK_GAIN = 2.0  # q/k init std = gain / sqrt(fan_in): peaky attention; selections ~3-25% per layer (about 10% on average), cells no closer than ~0.015/255 to the threshold on the demo data


# Conversation text as FlexLlava writes it (model/conversation.py: the LLaVA v1 template, with the
# benchmarks' short-answer suffix and official V*'s system text), so the tokenizer learns the template's pieces.
# The model may not import the benchmarks; tests/test_boundaries.py checks these lines match them.
TEMPLATE_LINES = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: What is the color of the cup?\nAnswer the "
    "question using a single word or phrase. ASSISTANT: red",
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Is the flag on the left? ASSISTANT: yes</s>",
)


def tokenizer_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ("red green blue yellow white black purple orange cup flag umbrella bag car kite left right side "
             "the of is what color on or answer question using single word phrase option letter given choices "
             "directly yes no there a an building road water residential area number more than less equal "
             "image picture sign text brand name time how many which where who A B C D").split()
    lines = [*TEMPLATE_LINES,
             "A. red, B. blue, C. green, D. yellow A. B. C. D. Answer with the option's letter from the given "
             "choices directly. The answer is (A) 0 1 2 3 4 5 6 7 8 9 1,000 U.S.A. coca-cola it's don't"]
    for _ in range(400):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randrange(3, 14))) + rng.choice(["?", ".", ""]))
    # No newline in the corpus: like LLaMA, '\n' must fall back to the byte piece <0x0A>.
    return [line.replace("\n", " ") for line in lines]


def train_tokenizer(out: Path, seed: int = 0, vocab_size: int = 400) -> Path:
    """A LLaMA-style sentencepiece BPE model: byte fallback, identity normaliser, dummy prefix,
    <unk>=0 <s>=1 </s>=2 (so '\\n' -> <0x0A>, ':' '▁' around the image as in LLaMA)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus(seed)), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, num_threads=1, minloglevel=2, allow_whitespace_only_pieces=True,
        user_defined_symbols=[],
    )
    path = out / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def _clip(out: Path, seed: int) -> Path:
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed + 1)
    cfg = CLIPVisionConfig(**CLIP)
    clip = CLIPVisionModel(cfg)
    folder = out / "clip-vit-tiny"
    folder.mkdir(parents=True, exist_ok=True)
    cfg.architectures = ["CLIPVisionModel"]
    cfg.to_json_file(str(folder / "config.json"))
    # The image processor config of openai/clip-vit-large-patch14-336 (LLaVA's CLIPVisionTower loads it).
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_processor_type": "CLIPImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "size": 336}, indent=2))
    # Key names as the openai CLIP checkpoints have them (`vision_model.`-prefixed): every
    # transformers version (and the release's 4.37) loads these.
    sd = {k if k.startswith("vision_model.") else "vision_model." + k: v.contiguous()
          for k, v in clip.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _random_lm(cfg: FlexConfig, seed: int) -> LlavaLM:
    torch.manual_seed(seed)
    lm = LlavaLM(cfg)
    for name, p in lm.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        elif name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.02)
        elif "embed_tokens" in name:
            torch.nn.init.normal_(p, std=1.0)
        else:  # variance-preserving, with q/k (and their high-res twins) sharpened
            gain = QK_GAIN if any(s in name for s in ("q_proj", "k_proj")) else 1.0
            torch.nn.init.normal_(p, std=gain / p.shape[1] ** 0.5)
    return lm


def make_tiny_model(out: str | Path, seed: int = 0, fmt: str = "release") -> Path:
    from safetensors.torch import save_file

    if fmt not in ("release", "llava", "llava-hf"):
        raise FlexEvalError(f"unknown format '{fmt}'; choose release, llava or llava-hf")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = train_tokenizer(out, seed)
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(tok_path)).vocab_size()
    clip_dir = _clip(out, seed)
    cfg = FlexConfig(**TINY, vocab_size=vocab, has_hd=fmt == "release", projector_type="mlp2x_gelu")
    lm = _random_lm(cfg, seed)
    if fmt == "llava-hf":
        return _save_llava_hf(out, cfg, lm, clip_dir)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "_name_or_path": "flexeval/tiny",
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "max_position_embeddings": 4096, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "pretraining_tp": 1, "tie_word_embeddings": False, "attention_bias": False, "rope_scaling": None,
        "torch_dtype": "float32", "use_cache": True, "initializer_range": 0.02,
        "mm_vision_tower": str(clip_dir.resolve()), "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": CLIP["hidden_size"],
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat", "tokenizer_padding_side": "right", "tokenizer_model_max_length": 2048,
        "freeze_mm_mlp_adapter": False, "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    }
    if fmt == "release":
        config["extra"] = {"zoom_ratio": "3", "highres_size": "1008", "lowres_size": "336", "threshold": "48",
                           "warmup": "10"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _tokenizer_files(out)
    return out


def _tokenizer_files(out: Path) -> None:
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": True,
        "model_max_length": 2048, "padding_side": "right"}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2))


def _save_llava_hf(out: Path, cfg: FlexConfig, lm: LlavaLM, clip_dir: Path) -> Path:
    """Save as transformers' own LlavaForConditionalGeneration (the llava-hf format).

    The image placeholder id is <unk> (0), which the byte-fallback tokenizer never emits for text:
    llava-hf itself adds a 32001st token instead, which would change the vocabulary size and so the
    softmax, and the tiny llava / llava-hf pair is meant to compute exactly the same function.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from .loading import read_state_dict

    text = LlamaConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                       intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size, rms_norm_eps=1e-5,
                       max_position_embeddings=4096, tie_word_embeddings=False)
    vision = CLIPVisionConfig(**CLIP)
    config = LlavaConfig(text_config=text, vision_config=vision, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_token_index=0,
                         projector_hidden_act="gelu", tie_word_embeddings=False)
    hf = LlavaForConditionalGeneration(config)
    ours = lm.state_dict()
    target = hf.state_dict()
    clip_sd = read_state_dict(clip_dir)
    new = {}
    for k in target:
        if ".vision_tower." in "." + k:
            flat = k.split("vision_tower.", 1)[1]
            flat = flat[len("vision_model."):] if flat.startswith("vision_model.") else flat
            new[k] = clip_sd["vision_model." + flat]
        elif "multi_modal_projector.linear_1" in k:
            new[k] = ours["model.mm_projector.0." + k.rsplit(".", 1)[1]]
        elif "multi_modal_projector.linear_2" in k:
            new[k] = ours["model.mm_projector.2." + k.rsplit(".", 1)[1]]
        elif k.endswith("lm_head.weight"):
            new[k] = ours["lm_head.weight"]
        else:
            rest = k.split("language_model.", 1)[1]
            rest = rest[len("model."):] if rest.startswith("model.") else rest
            new[k] = ours["model." + rest]
    hf.load_state_dict(new, strict=True)
    import shutil

    hf.save_pretrained(str(out))
    shutil.rmtree(clip_dir)
    _tokenizer_files(out)
    return out
