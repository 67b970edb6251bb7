"""Cost beside accuracy: run.json `cost` (counted TFLOP per sample from the records' real token counts
and selections, model and wall seconds) and summary.md's compute table beside the paper's Table 5."""

from __future__ import annotations

import json

import pytest

from flexeval.benchmarks import get_benchmark
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.model import load_pretrained
from flexeval.model.tiny import make_tiny_model
from flexeval.results.report import write_report
from flexeval.speed.flops import RequestShape, choice_flops, clip_shape, generate_flops


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    return root, make_tiny_model(root / "tiny", seed=0)


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_generation_run_records_its_counted_cost_and_seconds(tiny, tmp_path):
    root, model_dir = tiny
    data = get_benchmark("textvqa").make_sample(root / "textvqa", n=3, seed=2)
    cfg = RunConfig(bench="textvqa", model=str(model_dir), data_dir=data, out=tmp_path / "out", workers=0,
                    quiet=True, batch_size="2", selection="center")
    run = run_benchmarks(cfg)[0]
    cost = json.loads(next((tmp_path / "out").rglob("run.json")).read_text())["cost"]
    assert cost == run["cost"]
    records = _records(next((tmp_path / "out").rglob("predictions.jsonl")).parent)
    m = load_pretrained(model_dir, dtype="float32", device="cpu")
    clip = clip_shape(m.vision)
    want = [generate_flops(m.cfg, clip, RequestShape(r["n_prompt_tokens"], 10, 3, r["hd_selected_ratio"] * 72 ** 2),
                           r["n_new_tokens"]) for r in records]
    assert all(r["hd_selected_ratio"] == pytest.approx(576 / 72 ** 2) for r in records)  # centre: 576 a row
    assert cost["tflop_per_sample"] == pytest.approx(sum(want) / len(want) / 1e12, rel=1e-5)
    assert cost["counted_items"] == len(records) == cost["timed_items"]
    assert 0 < cost["model_s"] <= cost["wall_s"]
    assert cost["samples_per_s"] == pytest.approx(len(records) / cost["model_s"], rel=1e-3)
    assert cost["hardware"].startswith("CPU") and cost["dtype"] == "float32"
    md = write_report(tmp_path / "out")
    compute = md.split("## Compute")[1]
    assert f"{cost['tflop_per_sample']:.4g}" in compute and "textvqa" in compute


def test_choice_run_counts_each_options_tokens(tiny, tmp_path):
    root, model_dir = tiny
    data = get_benchmark("vstar").make_sample(root / "vstar", n=2, seed=1)
    cfg = RunConfig(bench="vstar", model=str(model_dir), data_dir=data, out=tmp_path / "out", workers=0, quiet=True,
                    batch_size="4", selection="none")
    cost = run_benchmarks(cfg)[0]["cost"]
    m = load_pretrained(model_dir, dtype="float32", device="cpu")
    samples = get_benchmark("vstar").load(data)
    records = _records(next((tmp_path / "out").rglob("predictions.jsonl")).parent)
    assert len(records) == len(samples) and all(len(r["option_nll"]) >= 2 for r in records)
    # none: one crop, no high-res layers; options of different lengths give different costs
    assert cost["tflop_per_sample"] > 0
    plain = [choice_flops(m.cfg, clip_shape(m.vision), RequestShape(r["n_prompt_tokens"], 1, 0, 0.0), [1, 1])
             for r in records]
    assert cost["tflop_per_sample"] * 1e12 > sum(plain) / len(plain)  # more than 1-token options would cost


def test_compute_table_sits_beside_the_papers_table_5(tmp_path):
    for tag, bench, tflop, model_s, wall_s, n in [("flex-7b", "textvqa", 15.04, 900.5, 1000.25, 5000),
                                                 ("flex-7b", "magnifierbench", 15.9, 40.0, 52.0, 283)]:
        d = tmp_path / tag / bench
        d.mkdir(parents=True)
        (d / "accuracy.csv").write_text(f"benchmark,subset,n,correct,accuracy\n{bench},overall,{n},1,{100 / n:.4f}\n")
        (d / "run.json").write_text(json.dumps({
            "benchmark": bench, "protocol": "paper", "model": {"kind": "flexattention"},
            "cost": {"tflop_per_sample": tflop, "model_s": model_s, "wall_s": wall_s, "timed_items": n,
                     "samples_per_s": n / model_s, "hardware": "NVIDIA H100 80GB HBM3", "dtype": "float16"}}))
    md = write_report(tmp_path)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.split("## Compute")[1].splitlines()
            if line.startswith("| ") and not line.startswith("| Model")]
    assert ["paper: FlexAttention", "magnifierbench", "V100 (paper Table 5)", "17.1", "112", "–"] in rows
    assert ["paper: LLaVA-HD", "textvqa", "V100 (paper Table 5)", "24.5", "3273", "–"] in rows
    assert ["paper: LLaVA-XAttn", "textvqa", "V100 (paper Table 5)", "26.7", "3741", "–"] in rows
    assert len([r for r in rows if r[0].startswith("paper:")]) == 6
    assert ["flex-7b", "textvqa", "NVIDIA H100 80GB HBM3, float16", "15.04", "900.5 / 1000.2 (5000 items)",
            f"{5000 / 900.5:.3g}"] in rows
    assert ["flex-7b", "magnifierbench", "NVIDIA H100 80GB HBM3, float16", "15.9", "40.0 / 52.0 (283 items)",
            f"{283 / 40:.3g}"] in rows
