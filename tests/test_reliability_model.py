"""Broken checkpoints are refused at load with a message naming the file, the tensor and the fix; a model
whose outputs are NaN/inf never scores an item as correct, and a run with many stops naming the dtype."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flexeval.errors import FlexEvalError
from flexeval.model import load_pretrained
from flexeval.model.checks import check_model_folder

WEIGHTS = "model.safetensors"


@pytest.fixture
def broken(release_dir, tmp_path):
    """broken(edit_state_dict=None, edit_config=None) -> a copy of the tiny release checkpoint, edited."""

    def make(sd_edit=None, cfg_edit=None, name="m") -> Path:
        out = tmp_path / name
        shutil.copytree(release_dir, out)
        if sd_edit is not None:
            sd = load_file(str(out / WEIGHTS))
            sd_edit(sd)
            save_file(sd, str(out / WEIGHTS), metadata={"format": "pt"})
        if cfg_edit is not None:
            cfg = json.loads((out / "config.json").read_text())
            cfg_edit(cfg)
            (out / "config.json").write_text(json.dumps(cfg))
        return out

    return make


def _load_error(folder: Path, dtype="float32") -> str:
    with pytest.raises(FlexEvalError) as e:
        load_pretrained(folder, dtype=dtype, device="cpu")
    return str(e.value)


def test_zero_length_truncated_and_corrupt_header_shards(broken):
    m = broken()
    data = (m / WEIGHTS).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cases = {
        b"": "0 bytes, too short for a safetensors file",
        data[: len(data) // 2]: "lie beyond the file's",  # the header is whole, the tensors are not
        data[:8] + b"{not json" + data[17:]: "header is not valid JSON",
        struct.pack("<Q", len(data) * 2) + data[8:]: "header length",
    }
    for content, says in cases.items():
        (m / WEIGHTS).write_bytes(content)
        msg = _load_error(m)
        assert f"{m / WEIGHTS}:" in msg and says in msg and "re-download" in msg, msg
        assert says in " ".join(check_model_folder(str(m)))
    assert n < len(data) // 2  # so the half file above really kept its header


def test_wrong_shape_and_wrong_dtype_name_the_tensor(broken):
    name = "model.layers.0.mlp.up_proj.weight"

    def edit(sd):
        sd[name] = torch.zeros(sd[name].shape[0] + 1, sd[name].shape[1])
        sd["model.norm.weight"] = sd["model.norm.weight"].to(torch.int32)

    m = broken(edit)
    msg = _load_error(m)
    assert f"tensor {name} has shape" in msg and "the config needs" in msg
    assert "tensor model.norm.weight is stored as torch.int32, not floating point" in msg
    problems = " ".join(check_model_folder(str(m)))
    assert f"tensor {name} has shape" in problems and "model.norm.weight is stored as I32" in problems


def test_nan_and_inf_weights_are_found_at_load(broken):
    def edit(sd):
        sd["model.layers.1.self_attn.k_proj.weight"][0, 0] = float("nan")
        sd["lm_head.weight"][3, 1] = float("inf")

    m = broken(edit)
    msg = _load_error(m)
    assert "2 tensor(s) hold NaN or inf as float32" in msg
    assert "model.layers.1.self_attn.k_proj.weight" in msg and "lm_head.weight" in msg
    assert "2 tensor(s) hold NaN or inf" in " ".join(check_model_folder(str(m)))


def test_weights_beyond_float16_range_name_the_dtype_and_the_fix(broken):
    def edit(sd):
        sd["model.layers.0.mlp.down_proj.weight"][0, 0] = 1e6  # finite in float32, inf in float16

    m = broken(edit)
    assert load_pretrained(m, dtype="float32", device="cpu") is not None
    msg = _load_error(m, dtype="float16")
    assert "hold NaN or inf as float16" in msg and "--dtype bfloat16 or float32" in msg


@pytest.mark.parametrize("value, says", [("3.5", "must be a positive integer"), (3.5, "must be a positive integer"),
                                         ("x", "must be a positive integer"), ("5", "choose 2 or 3 or 4"),
                                         (5, "choose 2 or 3 or 4")])
def test_zoom_ratio_we_cannot_serve(broken, value, says):
    m = broken(cfg_edit=lambda c: c["extra"].update(zoom_ratio=value))
    msg = _load_error(m)
    assert f"{m / 'config.json'}: extra.zoom_ratio = {value!r} is not supported" in msg and says in msg


def test_integer_strings_of_the_release_config_still_load(release_dir):
    cfg = json.loads((release_dir / "config.json").read_text())
    assert cfg["extra"]["zoom_ratio"] == "3"  # the release writes strings
    assert load_pretrained(release_dir, dtype="float32", device="cpu").cfg.zoom_ratio == 3


def test_a_tokenizer_of_another_size_is_refused(broken, tmp_path):
    from flexeval.model.tiny import train_tokenizer

    m = broken()
    (tmp_path / "other-tok").mkdir()
    shutil.copy(train_tokenizer(tmp_path / "other-tok", seed=1, vocab_size=320), m / "tokenizer.model")
    rows = json.loads((m / "config.json").read_text())["vocab_size"]
    msg = _load_error(m)
    assert f"320 tokens, but {m} has {rows} embedding rows" in msg and "tokenizer.model" in msg
    assert "320 tokens" in " ".join(check_model_folder(str(m)))


def test_a_sound_checkpoint_has_no_problems(release_dir, llava_dir):
    assert check_model_folder(str(release_dir)) == []
    assert check_model_folder(str(llava_dir)) == []
