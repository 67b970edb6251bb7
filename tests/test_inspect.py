"""`flexeval inspect --json`: the fields a user (and a cross-check against the release) reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flexeval.benchmarks.wording import SHORT_ANSWER_SUFFIX
from flexeval.cli import app
from flexeval.model import load_pretrained, reference
from flexeval.model.conversation import llava_v1_prompt


def test_inspect_json_matches_the_reference(release_dir, tmp_path):
    import random

    from flexeval.benchmarks.samples import draw_scene

    img, _ = draw_scene(random.Random(5), 1400, 900, 4)
    path = tmp_path / "img.jpg"
    img.save(path, quality=95)
    question = "What is the color of the cup?" + SHORT_ANSWER_SUFFIX
    r = CliRunner().invoke(app, ["inspect", "--model", str(release_dir), "--image", str(path), "--prompt", question,
                                 "--options", "red|blue|green", "--max-new-tokens", "4", "--json",
                                 "--dump-logits", str(tmp_path / "l.safetensors")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    m = load_pretrained(release_dir, dtype="float32", device="cpu")
    prompt = llava_v1_prompt(question)
    im = m.preprocess(Image.open(path))
    ids, pre = reference.generate(m, prompt, im, 4)
    assert out["prompt"] == prompt and out["generated_ids"] == ids
    assert out["generated_text"] == m.tokenizer.decode(ids).strip()
    assert out["selected_per_layer"] == {str(k): int(v[0].sum()) for k, v in pre.selections.items()}
    assert set(out["selected_per_layer"]) == {"8", "9", "10", "11"}
    for option, nll in out["option_nll"].items():
        assert nll == pytest.approx(reference.option_nll(m, prompt, im, option)[0], rel=1e-4)
    assert out["prediction"] == min(out["option_nll"], key=out["option_nll"].get)
    from safetensors.torch import load_file

    logits = load_file(str(tmp_path / "l.safetensors"))["logits"]
    assert tuple(logits.shape) == (1, pre.logits.shape[0], pre.logits.shape[1])
    np.testing.assert_allclose(logits[0].numpy(), pre.logits.numpy(), atol=1e-4 * float(pre.logits.abs().max()))


def test_inspect_raw_prompt_needs_an_image_token(release_dir, tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (300, 200), (9, 9, 9)).save(path)
    r = CliRunner().invoke(app, ["inspect", "--model", str(release_dir), "--image", str(path), "--prompt", "hello",
                                 "--raw", "--json"])
    assert r.exit_code == 1 and "<image>" in r.output


def test_count_flops_centre_projects_once_whatever_the_new_tokens(release_dir, tmp_path):
    """--count-flops counts while the sample runs: with centre selection the high-res tokens are projected
    once per layer (3 layers x the 576 centre tokens), for 1 new token as for 8; the FLOPs grow with the steps."""
    import random

    from flexeval.benchmarks.samples import draw_scene

    img, _ = draw_scene(random.Random(7), 900, 1300, 4)
    path = tmp_path / "img.png"
    img.save(path)
    counted = {}
    for n in (1, 8):
        r = CliRunner().invoke(app, ["inspect", "--model", str(release_dir), "--image", str(path), "--prompt",
                                     "What is it?", "--selection", "center", "--max-new-tokens", str(n), "--json",
                                     "--count-flops"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert len(out["generated_ids"]) == n
        counted[n] = out["flops"]
    assert counted[1]["hires_projected_tokens"] == counted[8]["hires_projected_tokens"] == 3 * 576
    assert 0 < counted[1]["total"] < counted[8]["total"]
    r = CliRunner().invoke(app, ["inspect", "--model", str(release_dir), "--image", str(path), "--prompt",
                                 "What is it?", "--selection", "center", "--max-new-tokens", "2", "--json"])
    assert "flops" not in json.loads(r.output)


def test_count_flops_of_a_transformers_model(hf_dirs, tmp_path):
    """A transformers model (native recipe) is counted too: FLOPs, and no high-res projection."""
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("RGB", (320, 240), (200, 40, 40)).save(path)
    r = CliRunner().invoke(app, ["inspect", "--model", str(hf_dirs["llava-hf"]), "--image", str(path), "--prompt",
                                 "What colour?", "--max-new-tokens", "2", "--json", "--count-flops"])
    assert r.exit_code == 0, r.output
    flops = json.loads(r.output)["flops"]
    assert flops["total"] > 0 and flops["hires_projected_tokens"] == 0
