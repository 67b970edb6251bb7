"""`flexeval grounding` and `flexeval attention --bench` under torchrun give the one-process files
(issue 19 item 5): both run through the execution core (flexeval/analysis/maps_work.py), which
shares the batches among the ranks and has rank 0 merge them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _torchrun(args: list[str], nproc: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "flexeval", *args]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "FLEXEVAL_PEER_TIMEOUT_S": "60"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _outputs(root: Path) -> dict[str, bytes]:
    """Every result file (records, tables, pictures) by relative path; the shards (one per rank) and
    the files that hold timings or hosts (run.json, grounding.json) are left out."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "shards" not in p.parts and not p.name.startswith(".")
            and p.name not in ("run.json", "grounding.json")}


def test_grounding_under_torchrun_gives_the_one_process_files(release_dir, tmp_path):
    from flexeval.benchmarks import get_benchmark

    data = get_benchmark("gqa").make_sample(tmp_path / "gqa", n=4)
    args = ["--model", str(release_dir), "--data-dir", str(data), "--layers", "7,9", "--dtype", "float32",
            "--device", "cpu", "--workers", "0", "--quiet", "--batch-size", "2", "--map-size", "6", "--tag", "tiny"]
    one, two = tmp_path / "one", tmp_path / "two"
    _torchrun(["grounding", *args, "--out", str(one)], nproc=1)
    _torchrun(["grounding", *args, "--out", str(two)], nproc=2)
    first, second = _outputs(one), _outputs(two)
    assert any(name.endswith(".csv") for name in first) and first == second


def test_attention_over_a_benchmark_under_torchrun_gives_the_one_process_files(release_dir, tmp_path):
    from flexeval.benchmarks import get_benchmark

    data = get_benchmark("vstar").make_sample(tmp_path / "vstar", n=2, seed=2)
    args = ["--bench", "vstar", "--model", str(release_dir), "--data-dir", str(data), "--layers", "7,9",
            "--dtype", "float32", "--device", "cpu", "--tag", "tiny", "--max-new-tokens", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    _torchrun(["attention", *args, "--out", str(one)], nproc=1)
    _torchrun(["attention", *args, "--out", str(two)], nproc=2)
    first, second = _outputs(one), _outputs(two)
    assert any(name.endswith(".png") for name in first) and first == second
