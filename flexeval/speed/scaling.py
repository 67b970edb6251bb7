"""Benchmark (not a test): 1 vs 2 vs 4 ... processes under torchrun, start-up and run time apart.

    python -m flexeval.speed.scaling                     # tiny model, generated V* data, CPU, 1,2,4 procs
    python -m flexeval.speed.scaling --procs 4 --pad-weights-gb 2 --repeat 2   # start-up with 2 GB of weights
    # a multi-GPU node (one GPU per rank):
    python -m flexeval.speed.scaling --device cuda --procs 1,2,4,8 --threads-per-rank 4 \
        --model <checkpoint> --data-dir <V* folder> --batch-size 8 --json scaling.json

Each world size runs the same command from scratch under `torchrun --standalone`. Figures per row:
startup_s, the slowest rank's time from its process start to its first item (interpreter, torch,
model load, identity digests, the start agreement: run.json distributed.ranks[].startup_s);
work_s, the slowest rank's time from there until it was done; command_s, the whole torchrun
command (also the merge and exit). On the CPU each rank gets --threads-per-rank threads (default
1), so more processes use more cores. --pad-weights-gb adds a sparse file of that size to the tiny
checkpoint (hashed like weights, never loaded); --repeat runs each world size again on a fresh
--out (the second start finds the digests in the cache, FLEXEVAL_CACHE, which this script points
at a fresh temporary folder). Every run's predictions.jsonl is compared with the first run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _prepare(root: Path, items_per_subset: int) -> tuple[Path, Path]:
    from flexeval.benchmarks import get_benchmark
    from flexeval.model.tiny import make_tiny_model

    model = make_tiny_model(root / "tiny", seed=0)
    data = get_benchmark("vstar").make_sample(root / "vstar", n=items_per_subset, seed=0)
    return model, data


def run_world(nproc: int, model: Path, data: Path, out: Path, device: str, batch_size: str, bench: str,
              threads: int = 1) -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "flexeval", "run", "--bench", bench, "--model", str(model), "--data-dir", str(data),
           "--out", str(out), "--batch-size", batch_size, "--device", device, "--tag", "speed", "--quiet"]
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode != 0:
        raise SystemExit(f"{nproc} processes failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    bench_dir = next((out / "speed").iterdir())
    run = json.loads((bench_dir / "run.json").read_text())
    ranks = run["distributed"]["ranks"]
    return {"procs": nproc, "threads_per_rank": threads, "command_s": round(wall, 2),
            "startup_s": max(r["startup_s"] for r in ranks), "work_s": max(r["wall_s"] for r in ranks),
            "items": run["timing"]["ran"], "finish_spread_s": run["distributed"]["finish_spread_s"],
            "cost_imbalance": run["distributed"]["cost_imbalance"],
            "rank_startup_s": [r["startup_s"] for r in ranks], "rank_work_s": [r["wall_s"] for r in ranks],
            "predictions": (bench_dir / "predictions.jsonl").read_bytes()}


def _options(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,2,4", help="world sizes to compare, comma-separated")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (each rank on cuda:LOCAL_RANK)")
    ap.add_argument("--model", type=Path, help="checkpoint (default: a tiny random model, built here)")
    ap.add_argument("--data-dir", type=Path, help="V* folder (default: generated sample data)")
    ap.add_argument("--bench", default="vstar")
    ap.add_argument("--items", type=int, default=12, help="generated items per V* subset")
    ap.add_argument("--batch-size", default="2")
    ap.add_argument("--threads-per-rank", type=int, default=1, help="OMP threads per rank")
    ap.add_argument("--pad-weights-gb", type=float, default=0.0, help="add a file this big to the tiny checkpoint "
                    "(not with --model)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per world size (the later ones: digests cached)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _options(argv)
    with tempfile.TemporaryDirectory(prefix="flexeval-scaling-") as tmp:
        root = Path(tmp)
        os.environ["FLEXEVAL_CACHE"] = str(root / "digest-cache")  # a cold cache for the first run
        model, data = args.model, args.data_dir
        if model is None or data is None:
            tiny, sample = _prepare(root, args.items)
            model, data = model or tiny, data or sample
        if args.pad_weights_gb and args.model is None:  # only into the tiny checkpoint built here
            with open(Path(model) / "padding.bin", "wb") as f:  # sparse: no disk I/O, the CPU hashes it all
                f.truncate(int(args.pad_weights_gb * (1 << 30)))
        rows = [run_world(n, model, data, root / f"out{n}-{k}", args.device, args.batch_size, args.bench,
                          args.threads_per_rank) | {"try": k + 1}
                for n in (int(x) for x in args.procs.split(",")) for k in range(args.repeat)]
    base = rows[0]
    print(f"{args.bench} on {args.device}, {base['items']} items, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end"
          + (f", {args.pad_weights_gb:g} GB padding file in the checkpoint" if args.pad_weights_gb else ""))
    print("procs  try  threads/rank  startup_s  work_s   speed-up  command_s  spread_s  cost_max/mean  same_bytes")
    for r in rows:
        r["speedup_work"] = round(base["work_s"] / r["work_s"], 3)
        r["identical"] = r["predictions"] == base["predictions"]
        print(f"{r['procs']:>5}  {r['try']:>3}  {r['threads_per_rank']:>12}  {r['startup_s']:>9.2f}  "
              f"{r['work_s']:>6.2f}  {r['speedup_work']:>8.2f}  {r['command_s']:>9.2f}  {r['finish_spread_s']:>8.2f}  "
              f"{r['cost_imbalance']!s:>13}  {r['identical']}")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "predictions"} for r in rows], indent=2))


if __name__ == "__main__":
    main()
