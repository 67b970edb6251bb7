"""`flexeval speed`: the structure and sanity of its output (never its speed), and its FLOP
accounting against torch's own FLOP counter on the tiny model."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from flexeval.cli import app
from flexeval.speed.flops import (
    RequestShape,
    clip_flops,
    clip_shape,
    generate_flops,
    highres_flops,
    llm_flops,
)
from flexeval.speed.measure import generate_requests

SELECTIONS = ("none", "attention", "center", "all")
CENTER_RATIO = (3 * 3) / (9 * 9)  # the 3x3 centre cells of the 9x9 selection grid


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["speed", "--arch", "tiny", "--device", "cpu", "--out", str(out),
                                          "--max-batch", "2", "--stage-batch", "2", "--max-new-tokens", "3",
                                          "--e2e-items", "4", "--workers", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "speed.json").read_text())


def _rows(res, section=None, what=None):
    return [r for r in res["rows"] if (section is None or r["section"] == section)
            and (what is None or r["what"].startswith(what))]


def test_every_row_is_there_with_positive_finite_times(bench_out):
    out, printed, res = bench_out
    for kind in ("generate", "choice"):
        best = max((t for t in res["batch_search"][kind] if not t.get("oom")), key=lambda t: t["samples_per_s"])
        for sel in SELECTIONS:
            batches = sorted(r["batch"] for r in _rows(res, what=kind) if r["selection"] == sel)
            assert batches == sorted({1, best["batch"]}), (kind, sel, batches)
        assert [r["batch"] for r in _rows(res, "c", kind)] == [1]  # the literal reference at batch 1
    stages = [r["what"] for r in _rows(res, "d")]
    assert sum("decode + preprocess" in s for s in stages) == 2
    assert any(s.startswith("CLIP (10 crops)") for s in stages)
    assert any(s.startswith("prefill") for s in stages) and "decode step" in stages
    e2e = _rows(res, "e")
    assert [e["benchmark"] for e in res["end_to_end"]] == ["vstar", "textvqa"] and len(e2e) == 2
    assert sum(e["items"] for e in res["end_to_end"]) == 4
    for r in res["rows"]:
        ms = r["ms_per_sample"]
        assert ms is not None and math.isfinite(ms) and ms > 0, r
        assert r["samples_per_s"] == pytest.approx(1000 / ms)
        if r["gflop_per_sample"] is not None:
            assert r["tflops"] == pytest.approx(r["gflop_per_sample"] * 1e9 / (ms / 1000) / 1e12)
    for e in res["end_to_end"]:
        assert 0 <= e["outside_model_fraction"] < 1 and e["model_s"] > 0
        assert e["samples_per_s"] == pytest.approx(e["items"] / e["wall_s"])
    c = res["ceilings"]
    assert c["matmul_tflops"] > 0 and c["copy_gb_per_s"] > 0
    assert all(ch["passed"] and ch["same_greedy_tokens"] for ch in res["checks"])  # float32: 1e-4
    # the printed table and the CSV hold the same rows as the JSON
    assert "vs_reference" in printed and printed.count("\nd ") == len(_rows(res, "d"))
    with open(out / "speed.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["section"], r["what"], r["selection"], int(r["batch"])) for r in rows] == \
        [(r["section"], r["what"], r["selection"], r["batch"]) for r in res["rows"]]


def test_ratios_are_those_of_the_times_they_come_from(bench_out):
    _, _, res = bench_out
    for kind in ("generate", "choice"):
        ref = _rows(res, "c", kind)[0]["ms_per_sample"]
        timed = [r for r in _rows(res, what=kind) if r["section"] in ("a", "b")]
        for r in timed:
            same = {x["selection"]: x["ms_per_sample"] for x in timed if x["batch"] == r["batch"]}
            assert r["vs_reference"] == pytest.approx(ref / r["ms_per_sample"])
            assert r["vs_none"] == pytest.approx(r["ms_per_sample"] / same["none"])
            assert r["vs_all"] == pytest.approx(same["all"] / r["ms_per_sample"])


def test_selected_ratios_and_flop_order(bench_out):
    _, _, res = bench_out
    for kind in ("generate", "choice"):
        timed = [r for r in _rows(res, what=kind) if r["section"] in ("a", "b")]
        for r in timed:
            sel, ratio = r["selection"], r["selected_ratio"]
            if sel == "none":
                assert ratio is None
            elif sel == "all":
                assert ratio == 1.0
            elif sel == "center":
                assert ratio == pytest.approx(CENTER_RATIO)
            else:
                assert 0 < ratio <= 1
        flops = {r["selection"]: r["gflop_per_sample"] for r in timed if r["batch"] == 1}
        assert flops["none"] < flops["center"] < flops["all"]
        assert flops["none"] < flops["attention"] <= flops["all"]


# ---- the FLOP accounting against torch's counter (independent: it counts the executed matmuls) ----

def _counted(fn):
    # the math SDPA backend runs as matmuls the counter sees (it has no formula for the CPU flash kernel)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


def test_clip_flops_match_torch_flop_counter(release_model, release_images):
    counted, _ = _counted(lambda: release_model.encode_images(release_images[:1]))
    assert clip_flops(clip_shape(release_model.vision), release_model.cfg, 10) == counted


def test_decode_step_flops_match_torch_flop_counter(variant, release_images, samples):
    """One decode step = generate(2 tokens) - generate(1 token): the LLM over the static cache's T + 2
    columns (the step attends over the whole capacity; one column is not written yet and masked),
    lm_head, and in high-res layers 9-11 the row's scores over the 576 centre tokens: no k/v_proj_hd,
    their K/V were projected once, in the prefill (model/hires_cache.py)."""
    model = variant(selection="center")
    prompt, image = [samples[0].prompt], [release_images[0]]
    one, (res,) = _counted(lambda: generate_requests(model, prompt, image, 1))
    two, _ = _counted(lambda: generate_requests(model, prompt, image, 2))
    hd_layers = model.cfg.num_layers - model.options.select_layer - 1
    selected = 24 * 24
    assert two - one == llm_flops(model.cfg, 1, res.n_prompt_tokens + 1, 1) + highres_flops(
        model.cfg, hd_layers, 1, 0, selected)
    # and the accounting of the whole request (which counts the needed T + 1 keys, not the capacity)
    shape = RequestShape(res.n_prompt_tokens, 10, hd_layers, selected)
    clip = clip_shape(model.vision)
    assert generate_flops(model.cfg, clip, shape, 2) - generate_flops(model.cfg, clip, shape, 1) == llm_flops(
        model.cfg, 1, res.n_prompt_tokens, 1) + highres_flops(model.cfg, hd_layers, 1, 0, selected)


# ---- --count-only: the accounting alone, for any --arch ----

def test_count_only_7b_centre_generation_is_within_1_45x_of_plain_llava():
    """With the high-res K/V cache, centre selection's 8-token generation costs the 9 extra CLIP crops and one
    projection of 576 tokens per layer over plain LLaVA-1.5: at most 1.45x (2.0x when every step re-projects)."""
    r = CliRunner().invoke(app, ["speed", "--arch", "llava-1.5-7b", "--count-only", "--max-new-tokens", "8"])
    assert r.exit_code == 0, r.output
    assert "TFLOP" in r.output and "llava-1.5-7b" in r.output
    from flexeval.speed.count_only import count_rows

    rows = {(x["what"].split()[0], x["selection"]): x for x in count_rows("llava-1.5-7b", 8)["rows"]}
    centre, none = rows[("generate", "center")], rows[("generate", "none")]
    assert centre["vs_none"] == pytest.approx(centre["tflop_per_sample"] / none["tflop_per_sample"])
    assert 1.2 < centre["vs_none"] <= 1.45
    assert centre["tflop_without_hires_cache"] / none["tflop_per_sample"] > 1.9  # what the cache removes
    assert f"{centre['tflop_per_sample']:.4g}" in r.output
    assert rows[("generate", "all")]["tflop_per_sample"] > centre["tflop_per_sample"] > none["tflop_per_sample"]


def test_count_only_is_the_accounting_of_the_measured_rows(bench_out):
    """The tiny arch's count-only figures are the ones the measured run reports for the same request."""
    from flexeval.speed.count_only import count_rows

    _, _, res = bench_out
    counted = {(x["what"], x["selection"]): x for x in count_rows("tiny", 3)["rows"]}
    for r in _rows(res):
        if r["section"] in ("a", "b") and r["batch"] == 1 and r["selection"] in ("none", "center", "all"):
            assert r["gflop_per_sample"] / 1e3 == pytest.approx(counted[(r["what"], r["selection"])]["tflop_per_sample"],
                                                              rel=1e-9), r


def test_speed_says_what_it_is_doing(bench_out):
    _, output, res = bench_out
    lines = output.splitlines()
    plan = [x for x in lines if "plan:" in x]
    assert len(plan) == 1 and lines.index(plan[0]) < 3
    total = int(plan[0].split("at most ")[1].split()[0])
    progress = [x for x in lines if " row " in x and "/" in x.split(" row ")[1].split(":")[0]]
    assert len(progress) == len(res["rows"]) <= total
    assert progress[-1].split(" row ")[1].startswith(f"{len(res['rows'])}/{total}")
