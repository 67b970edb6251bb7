"""Loading: the three checkpoint formats, errors that name what to fix, dtypes, the tiny builder."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import choice_items, gen_items, rel_diff

from flexeval.errors import FlexEvalError
from flexeval.model import RunOptions, load_pretrained
from flexeval.model.tiny import make_tiny_model


def clone(src, dst, config_edit=None, drop_tensors=()):
    """A copy of checkpoint folder `src` (weights/tokenizer linked) with config.json edited / tensors dropped."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            continue
        os.symlink(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    if drop_tensors:
        sd = load_file(str(src / "model.safetensors"))
        save_file({k: v for k, v in sd.items() if k not in drop_tensors}, str(dst / "model.safetensors"))
    else:
        os.symlink(src / "model.safetensors", dst / "model.safetensors")
    return dst


# ---- the three formats ----

def test_formats_load_with_the_right_config(release_model, llava_model, llava_hf_model):
    assert release_model.cfg.format == "release" and release_model.cfg.has_hd
    assert release_model.options.selection == "attention"
    assert (release_model.cfg.zoom_ratio, release_model.cfg.highres_size, release_model.cfg.lowres_size) == (3, 1008, 336)
    assert release_model.cfg.threshold == 48.0 and release_model.options.select_layer == 8
    assert release_model.image_size == 1008
    for m, fmt in ((llava_model, "llava"), (llava_hf_model, "llava-hf")):
        assert m.cfg.format == fmt and not m.cfg.has_hd
        assert m.options.selection == "none" and m.image_size == 336
        assert not hasattr(m.lm.model.layers[0].self_attn, "k_proj_hd")
    for m in (release_model, llava_model, llava_hf_model):
        assert (m.cfg.hidden_size, m.cfg.num_layers, m.cfg.num_heads) == (64, 12, 4)
        assert m.cfg.projector_type == "mlp2x_gelu" and m.vision.grid == 24


def test_llava_and_llava_hf_give_the_same_results(llava_model, llava_hf_model, samples, baseline_images):
    # same seed -> the same LLM, projector and CLIP weights
    a_sd, b_sd = llava_model.lm.state_dict(), llava_hf_model.lm.state_dict()
    assert a_sd.keys() == b_sd.keys()
    assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)
    prompts = [s.asked for s in samples]
    a, la = llava_model.generate(gen_items(prompts, baseline_images, 4), return_prefill_logits=True)
    b, lb = llava_hf_model.generate(gen_items(prompts, baseline_images, 4), return_prefill_logits=True)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.text for r in a] == [r.text for r in b]
    assert rel_diff(lb, la) <= 1e-5
    opts = [s.options for s in samples]
    na = [x for r in llava_model.choose(choice_items(prompts, baseline_images, opts)) for x in r.option_nll]
    nb = [x for r in llava_hf_model.choose(choice_items(prompts, baseline_images, opts)) for x in r.option_nll]
    assert na == pytest.approx(nb, rel=1e-5)


def test_release_weights_differ_from_llava_for_the_same_seed(release_dir, llava_dir):
    """Documents the builder: release and llava formats are NOT the same LLM for one seed (the
    release's extra k_proj_hd/v_proj_hd shift the RNG stream), so release-vs-baseline comparisons
    use a stripped copy of the release weights (conftest.stripped_dir) instead."""
    from safetensors.torch import load_file

    a, b = load_file(str(release_dir / "model.safetensors")), load_file(str(llava_dir / "model.safetensors"))
    assert set(b) == {k for k in a if "_proj_hd" not in k}
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])


def test_llava_hf_image_token_index_is_never_a_text_token(llava_hf_dir, llava_hf_model, samples):
    """transformers' Llava replaces every input id equal to image_token_index by image features, so that
    id must never come out of tokenising text (llava-hf: 32000, an added token; the tiny one: <unk>,
    which a byte-fallback tokenizer never produces)."""
    cfg = json.loads((llava_hf_dir / "config.json").read_text())
    index = cfg.get("image_token_index", cfg.get("image_token_id"))
    tok = llava_hf_model.tokenizer
    assert index == tok.sp.unk_id()
    text = " ".join(s.prompt for s in samples) + " What Wx W. ünïcode ✓ 1,000"
    assert index not in tok.sp.encode(text)


# ---- errors ----

def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    hub_id = "flexeval-tests/no-such-model-xyz"
    with pytest.raises(FlexEvalError) as e:
        load_pretrained(hub_id, dtype="float32", device="cpu")
    assert hub_id in str(e.value)


def test_missing_local_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(FlexEvalError, match="not found"):
        load_pretrained(str(missing), dtype="float32", device="cpu")


UNSUPPORTED = [
    ("mm_use_im_start_end", True),
    ("mm_use_im_patch_token", True),
    ("image_aspect_ratio", "anyres"),
    ("mm_projector_type", "mlp3x_gelu"),
    ("mm_vision_select_feature", "cls_patch"),
    ("mm_patch_merge_type", "spatial_unpad"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}),
    ("hidden_act", "gelu"),
]


@pytest.mark.parametrize("key,value", UNSUPPORTED, ids=[k for k, _ in UNSUPPORTED])
def test_unsupported_config_value_names_config_and_key(release_dir, tmp_path, key, value):
    folder = clone(release_dir, tmp_path / "ckpt", lambda c: c.__setitem__(key, value))
    with pytest.raises(FlexEvalError) as e:
        load_pretrained(folder, dtype="float32", device="cpu")
    msg = str(e.value)
    assert "config.json" in msg and key in msg, msg


def test_unknown_extra_key_names_config_and_key(release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "ckpt", lambda c: c["extra"].__setitem__("topk_ratio", "0.1"))
    with pytest.raises(FlexEvalError) as e:
        load_pretrained(folder, dtype="float32", device="cpu")
    msg = str(e.value)
    assert "config.json" in msg and "extra" in msg and "topk_ratio" in msg, msg


def test_inconsistent_highres_size_is_an_error(release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "ckpt", lambda c: c["extra"].__setitem__("highres_size", "1344"))
    with pytest.raises(FlexEvalError, match="highres_size"):
        load_pretrained(folder, dtype="float32", device="cpu")


LLAVA_HF_UNSUPPORTED = [
    ("vision_feature_select_strategy", "full"),
    ("projector_hidden_act", "relu"),
    ("vision_feature_layer", [-2, -5]),
]


@pytest.mark.parametrize("key,value", LLAVA_HF_UNSUPPORTED, ids=[k for k, _ in LLAVA_HF_UNSUPPORTED])
def test_llava_hf_unsupported_config_value(llava_hf_dir, tmp_path, key, value):
    folder = clone(llava_hf_dir, tmp_path / "ckpt", lambda c: c.__setitem__(key, value))
    with pytest.raises(FlexEvalError) as e:
        load_pretrained(folder, dtype="float32", device="cpu")
    assert "config.json" in str(e.value) and key in str(e.value)


@pytest.mark.parametrize("which,tensor", [
    ("release", "model.layers.3.self_attn.k_proj_hd.weight"),
    ("release", "model.mm_projector.2.bias"),
    ("llava", "model.layers.11.mlp.down_proj.weight"),
    ("llava-hf", "model.language_model.layers.0.self_attn.q_proj.weight"),
])
def test_missing_weights_tensor_is_an_error(release_dir, llava_dir, llava_hf_dir, tmp_path, which, tensor):
    from safetensors.torch import load_file

    src = {"release": release_dir, "llava": llava_dir, "llava-hf": llava_hf_dir}[which]
    names = set(load_file(str(src / "model.safetensors")))
    if tensor not in names:  # llava-hf names depend on the transformers version that saved them
        tensor = next(n for n in names if n.endswith(tensor.split("language_model.", 1)[-1]) and "language_model" in n)
    folder = clone(src, tmp_path / "ckpt", drop_tensors={tensor})
    with pytest.raises(FlexEvalError) as e:
        load_pretrained(folder, dtype="float32", device="cpu")
    assert "missing" in str(e.value)


def test_missing_files_are_errors(release_dir, tmp_path):
    no_tok = clone(release_dir, tmp_path / "a")
    (no_tok / "tokenizer.model").unlink()
    with pytest.raises(FlexEvalError, match="tokenizer"):
        load_pretrained(no_tok, dtype="float32", device="cpu")
    no_weights = clone(release_dir, tmp_path / "b")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FlexEvalError, match="no weights"):
        load_pretrained(no_weights, dtype="float32", device="cpu")
    no_cfg = clone(release_dir, tmp_path / "c")
    (no_cfg / "config.json").unlink()
    with pytest.raises(FlexEvalError, match="config.json"):
        load_pretrained(no_cfg, dtype="float32", device="cpu")


@pytest.mark.parametrize("selection", ["attention", "random", "center", "all"])
@pytest.mark.parametrize("which", ["llava", "llava-hf"])
def test_baseline_with_a_high_res_selection_is_an_error(llava_dir, llava_hf_dir, which, selection):
    path = llava_dir if which == "llava" else llava_hf_dir
    with pytest.raises(FlexEvalError, match="none"):
        load_pretrained(path, dtype="float32", device="cpu", options=RunOptions(selection=selection))


@pytest.mark.parametrize("options", [dict(selection="topk"), dict(zoom=5), dict(first_hd_layer=0),
                                     dict(first_hd_layer=12), dict(threshold=255.0)])
def test_bad_run_options_are_errors(release_model, options):
    from flexeval.model import FlexLlava

    m = release_model
    with pytest.raises(FlexEvalError):
        FlexLlava(m.lm, m.vision, m.tokenizer, m.cfg, RunOptions(**options))


def test_unknown_dtype_is_an_error(release_dir):
    with pytest.raises(FlexEvalError, match="dtype"):
        load_pretrained(release_dir, dtype="int8", device="cpu")


# ---- half precision on the CPU ----

@pytest.mark.parametrize("which,dtype,tol", [("release", "float16", 0.05), ("llava", "bfloat16", None)])
def test_half_precision_forward_on_cpu(request, which, dtype, tol, samples):
    path = request.getfixturevalue(f"{which}_dir")
    full = request.getfixturevalue(f"{which}_model")
    m = load_pretrained(path, dtype=dtype, device="cpu")
    want = getattr(torch, dtype)
    assert m.dtype == want and next(m.lm.parameters()).dtype == want and next(m.vision.parameters()).dtype == want
    s = samples[0]
    im = m.preprocess(s.image)
    res, logits = m.generate(gen_items([s.asked], [im], 2), return_prefill_logits=True)
    res32, logits32 = full.generate(gen_items([s.asked], [im], 2), return_prefill_logits=True)
    assert logits.dtype == want and bool(torch.isfinite(logits).all())
    if tol is not None:
        assert rel_diff(logits, logits32) <= tol
    assert len(res[0].token_ids) == 2
    nll = m.choose(choice_items([s.asked], [im], [s.options]))[0].option_nll
    nll32 = full.choose(choice_items([s.asked], [im], [s.options]))[0].option_nll
    assert all(x == x and abs(x) < 1e3 for x in nll)  # finite
    assert nll == pytest.approx(nll32, rel=0.02 if dtype == "float16" else 0.1)
    if m.cfg.has_hd:
        assert set(res[0].selected_per_layer) == {"8", "9", "10", "11"}
        assert all(0 < v < 72 * 72 for v in res[0].selected_per_layer.values())


def test_bfloat16_error_is_its_mantissa_share(llava_dir, llava_model, samples):
    """bf16 keeps 8 mantissa bits to fp16's 11, so on the same checkpoint and input its logits
    should sit about 2^3 = 8x further from float32 than fp16's (measured 8.4-9 on the tiny model)."""
    s = samples[0]
    im = llava_model.preprocess(s.image)
    _, want = llava_model.generate(gen_items([s.asked], [im], 1), return_prefill_logits=True)
    err = {}
    for dtype in ("float16", "bfloat16"):
        m = load_pretrained(llava_dir, dtype=dtype, device="cpu")
        _, logits = m.generate(gen_items([s.asked], [im], 1), return_prefill_logits=True)
        err[dtype] = rel_diff(logits, want)
    assert err["float16"] <= 0.05
    assert 4 <= err["bfloat16"] / err["float16"] <= 16, err


# ---- the tiny builder ----

def test_tiny_builder_is_deterministic(release_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again", seed=0, fmt="release")
    for name in ("model.safetensors", "tokenizer.model", "clip-vit-tiny/model.safetensors"):
        assert (again / name).read_bytes() == (release_dir / name).read_bytes(), name
    a, b = (json.loads((p / "config.json").read_text()) for p in (again, release_dir))
    assert a.pop("mm_vision_tower") != b.pop("mm_vision_tower")  # points into each folder
    assert a == b
    other = make_tiny_model(tmp_path / "other", seed=1, fmt="release")
    assert (other / "model.safetensors").read_bytes() != (release_dir / "model.safetensors").read_bytes()


def test_release_format_layout(release_dir):
    from safetensors.torch import load_file

    cfg = json.loads((release_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaLlamaForCausalLM"] and cfg["model_type"] == "llava"
    assert cfg["extra"] == {"zoom_ratio": "3", "highres_size": "1008", "lowres_size": "336", "threshold": "48",
                            "warmup": "10"}
    assert all(isinstance(v, str) for v in cfg["extra"].values())
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["image_aspect_ratio"] == "pad"
    assert cfg["mm_use_im_start_end"] is False and cfg["mm_vision_select_layer"] == -2
    sd = load_file(str(release_dir / "model.safetensors"))
    n = cfg["num_hidden_layers"]
    for i in range(n):
        for kind in ("k", "v"):
            hd = sd[f"model.layers.{i}.self_attn.{kind}_proj_hd.weight"]
            assert hd.shape == sd[f"model.layers.{i}.self_attn.{kind}_proj.weight"].shape
    assert sum("_proj_hd" in k for k in sd) == 2 * n
    assert not any("vision_tower" in k for k in sd)  # CLIP lives in mm_vision_tower
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias", "lm_head.weight"} <= set(sd)


def test_llava_format_layout(llava_dir, llava_hf_dir):
    from safetensors.torch import load_file

    cfg = json.loads((llava_dir / "config.json").read_text())
    assert "extra" not in cfg and cfg["architectures"] == ["LlavaLlamaForCausalLM"]
    assert not any("_proj_hd" in k for k in load_file(str(llava_dir / "model.safetensors")))
    hf = json.loads((llava_hf_dir / "config.json").read_text())
    assert hf["architectures"] == ["LlavaForConditionalGeneration"]
    assert any("vision_tower" in k for k in load_file(str(llava_hf_dir / "model.safetensors")))
