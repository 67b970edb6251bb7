"""Tiny random transformers vision-language checkpoints of real families, for tests and the demo.

Each is saved with `save_pretrained` as the hub checkpoints are: config.json of the family's own
config class, safetensors, tokenizer.json (a fast tokenizer built offline here), the image
processor's preprocessor_config.json, processor_config.json and the chat template
(chat_template.jinja), so `load_model` goes through the real loading path.

- "llava-hf": LlavaForConditionalGeneration, CLIP 336 px / patch 14 (the 24x24 grid FlexLlava reads
  too), a LLaMA sentencepiece tokenizer.model (model/tiny.py) plus its tokenizer.json conversion
  with `<image>` and `<pad>` added after the vocabulary (as llava-hf/llava-1.5-7b-hf has them), the
  llava-hf chat template.
- "llava-next": LlavaNextForConditionalGeneration (AnyRes tiles), 56 px tiles, a Mistral-style
  `[INST]` template.
- "qwen2-vl": Qwen2VLForConditionalGeneration (native resolution, M-RoPE), a byte-level BPE
  tokenizer with the Qwen special tokens, the Qwen2-VL chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError

from .hf_processor import image_only
from .tiny import CLIP, TINY, tokenizer_corpus, train_tokenizer

FAMILIES = ("llava-hf", "llava-next", "qwen2-vl")

LLAVA_HF_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf's template, {% generation %} markers left out
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
MISTRAL_TEMPLATE = (  # llava-hf/llava-v1.6-mistral-7b-hf style
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{{ ' [/INST]' }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'text' %}"
    "{{ ' ' + content['text'] }}{% endif %}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}"
)
QWEN2_VL_TEMPLATE = (  # Qwen/Qwen2-VL-2B-Instruct's template (image part; no video, no vision ids)
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]


# ---------------------------------------------------------------- tokenizers (offline)

def llama_tokenizer_json(sp_model: Path, out: Path, added: tuple[str, ...] = ()) -> Path:
    """tokenizer.json as transformers' legacy LlamaConverter writes it for a LLaMA sentencepiece model:
    BPE with byte fallback, normaliser prepend '▁' + spaces to '▁', no pre-tokeniser; `added` special
    tokens get the ids after the vocabulary."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []  # every split of a piece into two pieces, ranked by the merged piece's id (its BPE order)
    for piece, pid in sorted(vocab.items(), key=lambda kv: kv[1]):
        if sp.is_control(pid) or sp.is_unknown(pid) or sp.is_byte(pid):
            continue
        pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]]))
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    path = out / "tokenizer.json"
    tok.save(str(path))
    return path


def _llama_tokenizer(out: Path, seed: int, added: tuple[str, ...]):
    from transformers import PreTrainedTokenizerFast

    sp_model = train_tokenizer(out, seed)
    llama_tokenizer_json(sp_model, out, added)
    return PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>" if "<pad>" in added else "<unk>")


def _qwen_tokenizer(seed: int):
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
                         special_tokens=[AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tok.train_from_iterator(tokenizer_corpus(seed) + ["system You are a helpful assistant. user assistant"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


# ---------------------------------------------------------------- checkpoints

def _text_config(cls, vocab: int, **kw):
    return cls(hidden_size=TINY["hidden_size"], num_hidden_layers=2, num_attention_heads=TINY["num_heads"],
               num_key_value_heads=2, intermediate_size=TINY["intermediate_size"], vocab_size=vocab,
               max_position_embeddings=4096, tie_word_embeddings=False, **kw)


def _sharpen(model: torch.nn.Module, seed: int) -> None:
    """Random init with larger embeddings/q/k than the default 0.02: replies vary across images and prompts."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2 or "norm" in name:
                continue
            gain = 2.0 if any(s in name for s in ("q_proj", "k_proj")) else 1.0
            std = 1.0 if "embed_tokens" in name else gain / p.shape[1] ** 0.5
            torch.nn.init.normal_(p, std=std)


def make_tiny_hf_model(out: str | Path, family: str = "llava-hf", seed: int = 0, chat_template: bool = True) -> Path:
    """Write a tiny random checkpoint of `family` (see FAMILIES) with its processor and chat template."""
    if family not in FAMILIES:
        raise FlexEvalError(f"unknown tiny family '{family}'; choose one of {', '.join(FAMILIES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build = {"llava-hf": _build_llava, "llava-next": _build_llava_next, "qwen2-vl": _build_qwen2_vl}[family]
    model, tok, image_processor, processor = build(out, seed, chat_template)
    _sharpen(model, seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out))
    if family == "qwen2-vl":  # its processor's save_pretrained needs the (torchvision) video processor
        tok.save_pretrained(str(out))
        image_processor.save_pretrained(str(out))
        (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2))
        if chat_template:
            (out / "chat_template.jinja").write_text(QWEN2_VL_TEMPLATE)
    else:
        processor.save_pretrained(str(out))
    return out


_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _build_llava(out: Path, seed: int, chat_template: bool):
    import transformers as tf

    tok = _llama_tokenizer(out, seed, ("<image>", "<pad>"))
    config = tf.LlavaConfig(text_config=_text_config(tf.LlamaConfig, len(tok)), vision_config=tf.CLIPVisionConfig(**CLIP),
                            image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                            vision_feature_select_strategy="default", tie_word_embeddings=False,
                            pad_token_id=tok.pad_token_id)
    image_processor = _pil_class("CLIPImageProcessor")(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                       image_mean=_CLIP_MEAN, image_std=_CLIP_STD)
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=LLAVA_HF_TEMPLATE if chat_template else None)
    return tf.LlavaForConditionalGeneration(config), tok, image_processor, processor


def _build_llava_next(out: Path, seed: int, chat_template: bool):
    import transformers as tf

    tok = _llama_tokenizer(out, seed, ("<image>", "<pad>"))
    (out / "tokenizer.model").unlink()  # the v1.6 checkpoints ship tokenizer.json as their tokenizer
    pinpoints = [[56, 112], [112, 56], [112, 112]]
    vision = tf.CLIPVisionConfig(**{**CLIP, "image_size": 56})
    config = tf.LlavaNextConfig(text_config=_text_config(tf.MistralConfig, len(tok), sliding_window=None),
                                vision_config=vision, image_token_index=tok.convert_tokens_to_ids("<image>"),
                                image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                                vision_feature_select_strategy="default", tie_word_embeddings=False,
                                pad_token_id=tok.pad_token_id)
    image_processor = _pil_class("LlavaNextImageProcessor")(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                                                            image_grid_pinpoints=pinpoints, image_mean=_CLIP_MEAN,
                                                            image_std=_CLIP_STD)
    processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                      chat_template=MISTRAL_TEMPLATE if chat_template else None)
    return tf.LlavaNextForConditionalGeneration(config), tok, image_processor, processor


def _build_qwen2_vl(out: Path, seed: int, chat_template: bool):
    import transformers as tf

    tok = _qwen_tokenizer(seed)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    head_dim = TINY["hidden_size"] // TINY["num_heads"]
    text = _text_config(tf.Qwen2VLTextConfig, len(tok), rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    assert sum([2, 3, 3]) * 2 == head_dim
    vision = tf.Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=TINY["hidden_size"], num_heads=2,
                                    mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    config = tf.Qwen2VLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                              image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                              tie_word_embeddings=False)
    image_processor = _qwen_image_processor()
    processor = image_only(tf.Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tok, video_processor=None,
                                                 chat_template=QWEN2_VL_TEMPLATE if chat_template else None)
    return tf.Qwen2VLForConditionalGeneration(config), tok, image_processor, processor


def _pil_class(name: str):
    """transformers' PIL-backend image processor class `<name>Pil` (5.x), else `<name>` (older 5.x releases,
    where the plain name is the PIL one): never the torchvision backend."""
    import transformers as tf

    return getattr(tf, name + "Pil", None) or getattr(tf, name)


def _qwen_image_processor():
    """The PIL Qwen2-VL image processor at a small pixel budget (4..24 merged 28 px cells)."""
    return _pil_class("Qwen2VLImageProcessor")(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 24, patch_size=14, merge_size=2, temporal_patch_size=2)
