"""A TSV given by path goes through the same core as the built-in benchmarks: a killed run resumes
to the same bytes, --limit and --protocol get variant folders that share the shards, torchrun
ranks write what one process writes, and rescore / compare / report read the results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from flexeval.benchmarks import get_benchmark
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.model.tiny import make_tiny_model
from flexeval.results.compare import compare_runs
from flexeval.results.report import write_report
from flexeval.results.scoring import rescore_tree

BATCH = "2"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("filecore")
    model_dir = make_tiny_model(root / "tiny", seed=0)
    # a VLMEvalKit-layout TSV (HR-Bench's generated rows), run by path, not as the named benchmark
    tsv = get_benchmark("hrbench_4k").make_sample(root / "data", n=1, seed=5) / "hr_bench_4k.tsv"
    return root, model_dir, tsv


def _run(env, out, **kw):
    root, model_dir, tsv = env
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_benchmarks(RunConfig(bench=str(kw.pop("bench", tsv)), model=str(model_dir), out=out, workers=0,
                                        quiet=True, batch_size=BATCH, **kw))[0]
    finally:
        torch.set_num_threads(threads)


def test_kill_resume_variants_rescore_compare_report(env, tmp_path, monkeypatch):
    root, model_dir, tsv = env
    full = _run(env, tmp_path / "full")
    folder = tmp_path / "full" / "tiny" / "hr_bench_4k"
    assert full["data"]["evaluated"] == 8 and full["benchmark"] == "hr_bench_4k"
    expected = (folder / "predictions.jsonl").read_bytes()

    from flexeval.model.flex_llava import FlexLlava

    real, calls = FlexLlava.choose, {"n": 0}

    def killed(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stopped during the third batch
        return real(self, *a, **k)

    monkeypatch.setattr(FlexLlava, "choose", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(env, tmp_path / "crash")
    monkeypatch.setattr(FlexLlava, "choose", real)
    crash = tmp_path / "crash" / "tiny" / "hr_bench_4k"
    again = _run(env, tmp_path / "crash")
    assert again["timing"]["reused"] == 4 and again["timing"]["ran"] == 4
    assert (crash / "predictions.jsonl").read_bytes() == expected
    # --limit: its own folder, answered from the shared shards
    limited = _run(env, tmp_path / "crash", limit=3)
    assert limited["variant"] == "limit-3" and limited["timing"]["ran"] == 0
    assert (crash / "limit-3" / "predictions.jsonl").read_bytes() == b"".join(expected.splitlines(True)[:3])
    letter = _run(env, tmp_path / "crash", protocol="letter")
    assert letter["variant"] == "protocol-letter" and (crash / "protocol-letter" / "accuracy.csv").is_file()
    # compare: the two protocols item by item; the per-item scores are those of the predictions
    c = compare_runs(crash, crash / "protocol-letter").benches[0]
    assert c.benchmark == "hr_bench_4k" and c.n_shared == 8 and not c.only_a
    scores_a = {json.loads(x)["id"]: json.loads(x)["score"] for x in expected.splitlines()}
    scores_b = {json.loads(x)["id"]: json.loads(x)["score"]
                for x in (crash / "protocol-letter" / "predictions.jsonl").read_text().splitlines()}
    assert len(c.flipped) == sum(scores_a[k] != scores_b[k] for k in scores_a)
    # rescore finds the benchmark from run.json even when the file has gone
    before = (crash / "accuracy.csv").read_bytes()
    moved = tmp_path / "moved.tsv"
    shutil.move(str(tsv), moved)
    try:
        (crash / "accuracy.csv").unlink()
        rescore_tree(crash, echo=None)
        assert (crash / "accuracy.csv").read_bytes() == before
    finally:
        shutil.move(str(moved), tsv)
    md = write_report(tmp_path / "crash")
    assert "hr_bench_4k n=8 protocol=likelihood" in md and "tiny [protocol-letter]" in md


def test_two_ranks_write_the_one_process_files(env, tmp_path):
    root, model_dir, tsv = env
    _run(env, tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "flexeval",
           "run", "--bench", str(tsv), "--model", str(model_dir), "--out", str(tmp_path / "two"),
           "--batch-size", BATCH, "--workers", "0", "--quiet"]
    env_vars = os.environ | {"HF_HUB_OFFLINE": "1", "FLEXEVAL_PEER_TIMEOUT_S": "60", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = tmp_path / "one" / "tiny" / "hr_bench_4k", tmp_path / "two" / "tiny" / "hr_bench_4k"
    assert (two / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    assert (two / "accuracy.csv").read_bytes() == (one / "accuracy.csv").read_bytes()
    ranks = json.loads((two / "run.json").read_text())["distributed"]
    assert len(ranks["ranks"]) == 2 and sum(r["items"] for r in ranks["ranks"]) == 8
