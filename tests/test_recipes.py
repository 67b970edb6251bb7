"""Input recipes (issue 15): `release` (LLaVA-1.5's: pad to square, v1 template, chunked tokenisation,
served by FlexLlava) and `native` (the checkpoint's processor, chat template and tokenizer, served
by transformers) on one tiny llava-hf checkpoint; a tokenizer.json-only checkpoint under the
release recipe; transformers models through the runner (records, run.json, tag, resume, report)."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
import torch
from typer.testing import CliRunner

from flexeval.analysis.attention import generate_answers
from flexeval.benchmarks import get_benchmark, list_benchmarks
from flexeval.cli import app
from flexeval.evaluate import RunConfig, run_benchmarks


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes-data")
    return {b: get_benchmark(b).make_sample(root / b, n=n, seed=4) for b, n in (("vstar", 2), ("textvqa", 5))}


def _run(model_dir, bench, data_dir, out, **kw):
    cfg = RunConfig(bench=bench, model=str(model_dir), data_dir=data_dir, out=out, workers=0, quiet=True,
                    batch_size="3", max_new_tokens=kw.pop("max_new_tokens", 4), **kw)
    return run_benchmarks(cfg)[0]


def test_native_on_llava_hf_equals_transformers_generate_with_processor_and_template(hf_dirs, data, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from flexeval.benchmarks.base import open_image

    folder = hf_dirs["llava-hf"]
    run = _run(folder, "textvqa", data["textvqa"], tmp_path, recipe="native")
    tag = folder.name + "-native"
    assert run["model"]["tag"] == tag and run["model"]["kind"] == "hf:llava" and run["model"]["recipe"] == "native"
    assert run["model"]["options"]["resolution"]["crop_size"] == {"height": 336, "width": 336}
    records = _lines(tmp_path / tag / "textvqa" / "max-new-tokens-4" / "predictions.jsonl")  # a variant folder
    processor = AutoProcessor.from_pretrained(str(folder))
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()
    bench = get_benchmark("textvqa")
    samples = {s.id: s for s in bench.load(data["textvqa"])}
    assert len(records) == len(samples) == 5  # two batches of 3 and 2, left-padded
    for rec in records:
        s = samples[rec["id"]]
        question = bench.request(s, "paper").question
        msgs = [{"role": "user", "content": [{"type": "image", "image": open_image(s.image)},
                                             {"type": "text", "text": question}]}]
        enc = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=4)
        want = out[0, enc["input_ids"].shape[1]:].tolist()
        assert rec["generated_ids"] == want
        assert rec["prompt_ids"] == enc["input_ids"][0].tolist()
        assert rec["prompt"] == f"USER: <image>\n{question} ASSISTANT:"


def test_release_and_native_differ_as_the_recipes_say_and_inspect_shows_both(hf_dirs, tmp_path):
    from transformers import AutoProcessor

    from flexeval.model.conversation import llava_v1_prompt
    from flexeval.model.image import preprocess
    from flexeval.model.tokenizer import LlavaTokenizer

    folder = hf_dirs["llava-hf"]
    from flexeval.benchmarks.samples import draw_scene

    img = draw_scene(random.Random(8), 500, 300, 3)[0]
    path = tmp_path / "img.png"
    img.save(path)
    out = {}
    for recipe in ("release", "native"):
        r = CliRunner().invoke(app, ["inspect", "--model", str(folder), "--image", str(path), "--prompt", "What color?",
                                     "--recipe", recipe, "--max-new-tokens", "2", "--json", "--options", "red|blue"])
        assert r.exit_code == 0, r.output
        out[recipe] = json.loads(r.output.strip().splitlines()[-1])
    rel, nat = out["release"], out["native"]
    assert rel["recipe"] == "release" and nat["recipe"] == "native"

    def sha(t):
        return hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()

    # release: padded square at 336, v1 template, chunked sentencepiece ids
    assert rel["pixels_sha256"] == sha(preprocess(img, 336, "pad").pixels)
    assert rel["prompt"] == llava_v1_prompt("What color?")
    assert rel["prompt_ids"] == LlavaTokenizer(folder / "tokenizer.model").encode_prompt(rel["prompt"])
    # native: the processor's resize + centre crop, the chat template, whole-string ids
    processor = AutoProcessor.from_pretrained(str(folder))
    enc = processor(text=[nat["prompt"]], images=[img], return_tensors="pt")
    assert nat["pixels_sha256"] == sha(enc["pixel_values"]) != rel["pixels_sha256"]
    assert nat["prompt"] == "USER: <image>\nWhat color? ASSISTANT:"
    assert nat["prompt_ids"] == enc["input_ids"][0].tolist()
    assert set(rel["option_nll"]) == set(nat["option_nll"]) == {"red", "blue"}


def test_tokenizer_json_only_llava_hf_loads_under_release_with_sentencepiece_ids(hf_dirs, tmp_path):
    from flexeval.benchmarks.base import open_image
    from flexeval.model import load_model
    from flexeval.model.tokenizer import FastPieces, LlavaTokenizer

    src = hf_dirs["llava-hf"]
    dst = tmp_path / "json-only"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "tokenizer.model":
            os.symlink(f, dst / f.name)
    a = load_model(src, dtype="float32", device="cpu")
    b = load_model(dst, dtype="float32", device="cpu")
    assert isinstance(b.tokenizer.sp, FastPieces) and not isinstance(a.tokenizer.sp, FastPieces)
    sp = LlavaTokenizer(src / "tokenizer.model")
    prompts = ["", " x", "<image>\n", "a<image>b", "ASSISTANT: red</s>", "  double  spaces\n\nnew é 中 1,000 U.S.A."]
    for bench in list_benchmarks():  # every benchmark's prompts under every protocol
        d = bench.make_sample(tmp_path / bench.name, n=1, seed=2)
        for p in bench.protocols:
            prompts += [a.prompt_text(bench.request(s, p)) for s in bench.load(d, protocol=p)]
    for p in prompts:
        assert b.tokenizer.encode_prompt(p) == sp.encode_prompt(p), p
    rng = random.Random(0)  # random ids: byte-fallback runs that are not valid UTF-8 decode alike too
    for ids in [sp.encode_prompt(prompts[-1])[1:]] + [[rng.randrange(3, 400) for _ in range(9)] for _ in range(300)]:
        assert b.tokenizer.decode(ids) == sp.decode(ids), ids
    s = next(iter(get_benchmark("vstar").load(tmp_path / "vstar")))
    im = a.preprocess(open_image(s.image))
    ga = generate_answers(a, [prompts[-1]], [im], 6)[0]
    gb = generate_answers(b, [prompts[-1]], [im], 6)[0]
    assert ga.token_ids == gb.token_ids and ga.text == gb.text


def test_transformers_model_through_the_runner_records_resumes_and_reports(hf_dirs, data, tmp_path):
    from flexeval.benchmarks.base import open_image
    from flexeval.model import load_model

    folder = hf_dirs["qwen2-vl"]
    runs = [_run(folder, b, data[b], tmp_path, max_pixels=28 * 28 * 8) for b in ("vstar", "textvqa")]
    tag = folder.name + "-native-maxpx6272"
    for run in runs:
        m = run["model"]
        assert (m["tag"], m["kind"], m["recipe"]) == (tag, "hf:qwen2_vl", "native")
        assert m["options"]["resolution_overrides"] == {"max_pixels": 6272}
        assert m["options"]["resolution"]["size"]["longest_edge"] == 6272
        assert m["architecture"]["model_class"] == "Qwen2VLForConditionalGeneration"
    model = load_model(folder, dtype="float32", device="cpu", max_pixels=6272)
    bench = get_benchmark("vstar")
    samples = {s.id: s for s in bench.load(data["vstar"])}
    recs = _lines(tmp_path / tag / "vstar" / "predictions.jsonl")
    for rec in recs[:2]:
        s = samples[rec["id"]]
        req = bench.request(s, "paper")
        assert rec["prompt"] == model.prompt_text(req.question) and req.question in rec["prompt"]
        assert rec["prompt"].endswith("<|im_start|>assistant\n")
        want = model.choose([(req, open_image(s.image))], share_prefix=False)[0].option_nll
        assert rec["option_nll"] == pytest.approx(want, abs=1e-5)
        assert rec["prediction"] == s.options[min(range(len(want)), key=want.__getitem__)]
    again = _run(folder, "vstar", data["vstar"], tmp_path, max_pixels=28 * 28 * 8)
    assert again["timing"]["ran"] == 0 and again["timing"]["reused"] == len(recs)
    from flexeval.results.report import write_report

    md = write_report(tmp_path)
    assert f"| {tag} (hf:qwen2_vl) |" in md and "recipe=native" in md and "paper: FlexAttention-7B" in md
