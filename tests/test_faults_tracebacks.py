"""Issue 24, class 8: the remaining tracebacks are one-line errors naming the file, the field and the fix
(damaged release JSON, config values of the wrong type, a garbage tokenizer, a killed decoding worker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from torch.utils.data import Dataset
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app
from flexeval.errors import FlexEvalError
from flexeval.execute import BatchSizer, feed_batches


def _cli(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res.exit_code, " ".join(res.output.split())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-tb"), n=1, seed=5)


def test_a_non_utf8_release_json_names_the_file_and_the_byte(data, tmp_path):
    copy = shutil.copytree(data, tmp_path / "vstar")
    js = sorted(copy.rglob("*.json"))[0]
    js.write_bytes(json.dumps(json.loads(js.read_text())).replace("?", "\u00e9?").encode("latin-1"))
    with pytest.raises(FlexEvalError) as e:
        get_benchmark("vstar").load(copy)
    assert str(js) in str(e.value) and "is not UTF-8 text (byte 0xe9" in str(e.value) and "UTF-8" in str(e.value)


@pytest.mark.parametrize("field, value, want", [
    ("hidden_size", "64", "must be a positive integer"),
    ("num_hidden_layers", [2], "must be a positive integer"),
    ("vocab_size", 1.5, "must be a positive integer"),
    ("rms_norm_eps", "x", "must be a positive number"),
    ("mm_vision_select_layer", "a", "must be an integer"),
    ("extra", ["zoom_ratio"], "must be a JSON object"),
    ("architectures", "LlavaLlamaForCausalLM", "must be a list of class names"),
])
def test_a_config_value_of_the_wrong_type_is_named_in_run_and_check(release_dir, data, tmp_path, field, value,
                                                                    want):
    model = shutil.copytree(release_dir, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg[field] = value
    (model / "config.json").write_text(json.dumps(cfg))
    args = ["run", "-b", "vstar", "-m", model, "-d", data, "-o", tmp_path / "o", "--workers", "0"]
    for extra in ([], ["--check"]):
        code, out = _cli(args + extra)
        assert code == 1 and f"{model / 'config.json'}: {field} = {value!r} {want}" in out, out


@pytest.mark.parametrize("name", ["tokenizer.model"])
def test_a_garbage_tokenizer_is_named_in_run_and_check(release_dir, data, tmp_path, name):
    model = shutil.copytree(release_dir, tmp_path / "m")
    (model / name).write_bytes(os.urandom(200))
    args = ["run", "-b", "vstar", "-m", model, "-d", data, "-o", tmp_path / "o", "--workers", "0"]
    for extra in ([], ["--check"]):
        code, out = _cli(args + extra)
        assert code == 1 and f"{model / name}: cannot be read as a sentencepiece model" in out
        assert f"copy the checkpoint's {name} again" in out


class _KillsItsWorker(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        if i == 5:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        return i, None, None


def test_a_killed_decoding_worker_is_one_error_saying_what_to_do():
    flushed = []
    with pytest.raises(FlexEvalError) as e:
        feed_batches(_KillsItsWorker(), 1, BatchSizer("2", "cpu"), lambda b: flushed.append([x[0] for x in b]))
    msg = str(e.value)
    assert "image-decoding worker process died" in msg and "DataLoader worker" in msg
    assert "run the same command again" in msg and "--workers 0" in msg
    assert all(5 not in b for b in flushed)
