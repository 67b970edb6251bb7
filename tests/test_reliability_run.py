"""Runs that meet broken outputs, oversized images, a busy or full output folder: nothing scores wrongly,
nothing is lost, every stop says why (in-process, on the tiny model)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app
from flexeval.errors import FlexEvalError
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.results.lock import LOCK_NAME
from flexeval.results.scoring import rescore_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-run"), n=2, seed=1)


@pytest.fixture(scope="module")
def overflow_model(release_dir, tmp_path_factory) -> Path:
    """Finite weights (the load check passes) whose logits overflow float32: every NLL is NaN/inf."""
    import shutil

    out = tmp_path_factory.mktemp("overflow") / "tiny"
    shutil.copytree(release_dir, out)
    sd = load_file(str(out / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    sd["lm_head.weight"] = 3e38 * torch.randn(sd["lm_head.weight"].shape, generator=g).sign()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _cfg(model, data, out, **kw) -> RunConfig:
    return RunConfig(bench="vstar", model=str(model), data_dir=data, out=out, workers=0, quiet=True,
                     batch_size=kw.pop("batch_size", "2"), tag="tiny", **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(release_dir, data, tmp_path_factory) -> Path:
    """An uninterrupted run (batch size 1): the files every stopped-and-rerun run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    run_benchmarks(_cfg(release_dir, data, out, batch_size="1"))
    return out / "tiny" / "vstar"


def test_non_finite_nll_never_scores_and_many_stop_the_run(overflow_model, data, tmp_path):
    with pytest.raises(FlexEvalError) as e:
        run_benchmarks(_cfg(overflow_model, data, tmp_path / "out", max_non_finite=1))
    msg = str(e.value)
    assert "2 items gave NaN/inf model outputs under dtype float32 (more than --max-non-finite 1)" in msg
    assert "direct_attributes/sa_1" in msg and "are kept" in msg and "the weights are broken" in msg
    # the same folder, a higher limit: the run finishes, the 2 stored items are reused
    run = run_benchmarks(_cfg(overflow_model, data, tmp_path / "out", max_non_finite=100))[0]
    assert run["timing"]["reused"] == 2 and run["timing"]["ran"] == 2
    bench_dir = tmp_path / "out" / "tiny" / "vstar"
    preds = _lines(bench_dir / "predictions.jsonl")
    assert len(preds) == 4
    for p in preds:  # NaN argmin would have picked options[0], the correct answer: never here
        assert p["prediction"] is None and p["score"] == 0.0 and "not finite" in p["non_finite"]
    assert run["stats"]["non_finite_per_subset"] == {"direct_attributes": 2, "relative_position": 2}
    assert (bench_dir / "accuracy.csv").read_text().splitlines()[-1].startswith("vstar,overall,4,0,0.0000,")
    # rescoring keeps them wrong, even if a prediction field says the correct option
    p0 = dict(preds[0], prediction=preds[0]["options"][0])
    (bench_dir / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in [p0, *preds[1:]]))
    assert rescore_dir(bench_dir)[-1]["correct"] == 0


def test_over_limit_images_are_counted_reported_rows(release_dir, data, tmp_path, capfd):
    limit = 2_000_000
    run = run_benchmarks(_cfg(release_dir, data, tmp_path / "out", max_image_pixels=limit))[0]
    big = {}
    for s in get_benchmark("vstar").load(data):
        w, h = Image.open(s.image).size
        if w * h > limit:
            big[s.id] = (w, h, s.subset)
    assert 0 < len(big) < 4  # the sample mixes sizes: some over, some under
    preds = {p["id"]: p for p in _lines(tmp_path / "out" / "tiny" / "vstar" / "predictions.jsonl")}
    for sid, p in preds.items():
        if sid in big:
            w, h, _ = big[sid]
            assert p["skipped"].startswith(f"image {sid} is {w}x{h} = ") and "over the limit of 2 Mpx" in p["skipped"]
            assert p["score"] == 0.0
        else:
            assert "skipped" not in p and p["option_nll"]
    per_subset = {}
    for _, _, sub in big.values():
        per_subset[sub] = per_subset.get(sub, 0) + 1
    assert run["stats"]["skipped_per_subset"] == dict(sorted(per_subset.items()))
    assert f"{len(big)} items were not run and count as wrong" in capfd.readouterr().err


def _hold_lock_in_another_process(folder: Path) -> subprocess.Popen:
    code = ("import sys; from flexeval.results.lock import hold_run_lock; hold_run_lock(sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_refuses_and_a_stale_lock_is_taken_over(release_dir, data, tmp_path, capfd):
    bench_dir = tmp_path / "out" / "tiny" / "vstar"
    holder = _hold_lock_in_another_process(bench_dir)
    try:
        with pytest.raises(FlexEvalError) as e:
            run_benchmarks(_cfg(release_dir, data, tmp_path / "out"))
        msg = str(e.value)
        assert f"lock {bench_dir / LOCK_NAME}: pid {holder.pid} on host {os.uname().nodename}" in msg
        assert not (bench_dir / "shards").exists()  # refused before any work
    finally:
        holder.kill()  # SIGKILL: the lock file stays, with the dead pid in it
        holder.wait()
    assert json.loads((bench_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    capfd.readouterr()
    run = run_benchmarks(_cfg(release_dir, data, tmp_path / "out"))[0]
    assert run["data"]["evaluated"] == 4
    assert f"taking over the stale lock {bench_dir / LOCK_NAME} of pid {holder.pid}" in capfd.readouterr().err
    assert (bench_dir / LOCK_NAME).read_text() == ""  # released at the end


def test_unwritable_output_folder_is_an_error_before_work(release_dir, data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CliRunner().invoke(app, ["run", "-b", "vstar", "-m", str(release_dir), "-d", str(data),
                                 "--out", str(blocker / "results"), "--workers", "0", "-q"])
    assert r.exit_code == 1 and "cannot write the results folder" in r.output and "Traceback" not in r.output


def test_a_full_disk_stops_cleanly_and_the_rerun_matches(release_dir, data, reference, tmp_path, monkeypatch):
    ref = reference
    real_write = os.write
    shard_writes = {"n": 0}

    def full_disk(fd, data_):  # the 3rd batch: half its bytes land, then ENOSPC (a torn line)
        if "shards" in os.readlink(f"/proc/self/fd/{fd}"):
            shard_writes["n"] += 1
            if shard_writes["n"] == 3:
                return real_write(fd, bytes(data_)[: len(data_) // 2])
            if shard_writes["n"] > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data_)

    monkeypatch.setattr(os, "write", full_disk)
    args = ["run", "-b", "vstar", "-m", str(release_dir), "-d", str(data), "--out", str(tmp_path / "out"),
            "--workers", "0", "-q", "--batch-size", "1", "--tag", "tiny"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "No space left on device" in r.output and "2 of 4 vstar predictions are kept" in r.output
    monkeypatch.setattr(os, "write", real_write)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "out" / "tiny" / "vstar"
    assert (out / "predictions.jsonl").read_bytes() == (ref / "predictions.jsonl").read_bytes()
    assert (out / "accuracy.csv").read_bytes() == (ref / "accuracy.csv").read_bytes()


# A `flexeval` process that stops itself at the n-th call of os.fsync / os.replace (the store's durable
# points: each appended batch, each final file's temp-then-rename), signalling its whole process group
# as Ctrl-C or a cluster's kill would.
STOPPER = """
import os, signal, sys
sig, fn, n = os.environ["STOP_AT"].split(":")
real, calls = getattr(os, fn), [0]
def stop(*a, **k):
    calls[0] += 1
    if calls[0] == int(n):
        os.killpg(os.getpgid(0), getattr(signal, "SIG" + sig))
    return real(*a, **k)
setattr(os, fn, stop)
from flexeval.cli import app
app(prog_name="flexeval")
"""


def test_kills_and_ctrl_c_at_random_points_then_the_rerun_matches(release_dir, data, reference, tmp_path):
    import random

    rng = random.Random(12)
    out = tmp_path / "out"
    args = [sys.executable, "-c", STOPPER, "run", "-b", "vstar", "-m", str(release_dir), "-d", str(data),
            "--out", str(out), "--tag", "tiny", "--workers", "0", "-q", "--batch-size", "1"]
    stops = [("KILL", "fsync", rng.randint(2, 4)),  # while batches are appended
             ("INT", "fsync", rng.randint(2, 3)),
             ("KILL", "replace", rng.randint(1, 3))]  # inside the final predictions/accuracy/run.json writes
    # the reference ran in this process: the same thread count gives the same float summation order
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for sig, fn, n in [*stops, ("INT", "none", 0)]:
        r = subprocess.run(args, env={**env, "STOP_AT": f"{sig}:{fn if fn != 'none' else 'getpid'}:{n}"},
                           capture_output=True, text=True, start_new_session=True, timeout=300)
        if fn == "none":
            assert r.returncode == 0, r.stderr
        elif sig == "KILL":
            assert r.returncode == -9, (sig, fn, n, r.returncode, r.stderr[-2000:])
        else:
            assert r.returncode == 130, r.stderr[-2000:]
            lines = [x for x in r.stderr.splitlines() if "interrupted" in x]
            assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
            assert r.stderr.rstrip().splitlines()[-1] == lines[0]
            assert lines[0].startswith("interrupted: ") and "of 4 vstar predictions are kept in" in lines[0]
            assert lines[0].endswith("run the same command again to continue (finished items are reused)")
    bench_dir = out / "tiny" / "vstar"
    assert not list(bench_dir.glob(".*.tmp"))  # a killed final write's temp file is cleaned up on rerun
    assert (bench_dir / "predictions.jsonl").read_bytes() == (reference / "predictions.jsonl").read_bytes()
    assert (bench_dir / "accuracy.csv").read_bytes() == (reference / "accuracy.csv").read_bytes()
    run, ref_run = (json.loads((d / "run.json").read_text()) for d in (bench_dir, reference))
    assert run["accuracy"] == ref_run["accuracy"] and run["timing"]["ran"] + run["timing"]["reused"] == 4
