"""Benchmark (not a test): speed-up of 1 vs 2 vs 3 ... processes under torchrun, same files.

    python -m flexeval.speed.scaling                     # tiny model, generated V* data, CPU, 1,2,3 procs
    python -m flexeval.speed.scaling --device cuda --procs 1,2,4,8 --model <checkpoint> --data-dir <V* folder>

Each world size runs the same command from scratch under `torchrun --standalone`; the figures are
the run's own wall time from run.json (load + model + merge; not interpreter start or model
load) and the whole command's. On the CPU the cores are shared: each rank gets cores // procs
threads (or --threads-per-rank), so more processes only help where one process cannot use the
cores well; on a busy machine a multi-threaded process can lose far more to spinning threads. Every run's
predictions.jsonl is compared byte for byte with the one-process run.
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
              threads: int | None = None) -> dict:
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
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
    return {"procs": nproc, "threads_per_rank": threads, "command_s": round(wall, 2),
            "run_s": run["timing"]["wall_s"], "items": run["timing"]["ran"],
            "finish_spread_s": run["distributed"]["finish_spread_s"],
            "cost_imbalance": run["distributed"]["cost_imbalance"],
            "rank_wall_s": [r["wall_s"] for r in run["distributed"]["ranks"]],
            "predictions": (bench_dir / "predictions.jsonl").read_bytes()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,2,3", help="world sizes to compare, comma-separated")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (each rank on cuda:LOCAL_RANK)")
    ap.add_argument("--model", type=Path, help="checkpoint (default: a tiny random model, built here)")
    ap.add_argument("--data-dir", type=Path, help="V* folder (default: generated sample data)")
    ap.add_argument("--bench", default="vstar")
    ap.add_argument("--items", type=int, default=12, help="generated items per V* subset")
    ap.add_argument("--batch-size", default="2")
    ap.add_argument("--threads-per-rank", type=int, help="OMP threads per rank (default: cores // procs); 1 "
                    "isolates the effect of more processes from that of more threads")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="flexeval-dist-speed-") as tmp:
        root = Path(tmp)
        model, data = args.model, args.data_dir
        if model is None or data is None:
            tiny, sample = _prepare(root, args.items)
            model, data = model or tiny, data or sample
        rows = [run_world(n, model, data, root / f"out{n}", args.device, args.batch_size, args.bench,
                          args.threads_per_rank)
                for n in (int(x) for x in args.procs.split(","))]
    base = rows[0]
    print(f"{args.bench} on {args.device}, {base['items']} items, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores")
    print("procs  threads/rank  run_s    speed-up  command_s  speed-up  spread_s  cost_max/mean  same_bytes")
    for r in rows:
        r["speedup_run"] = round(base["run_s"] / r["run_s"], 3)
        r["speedup_command"] = round(base["command_s"] / r["command_s"], 3)
        r["identical"] = r["predictions"] == base["predictions"]
        print(f"{r['procs']:>5}  {r['threads_per_rank']:>12}  {r['run_s']:>7.2f}  {r['speedup_run']:>8.2f}  "
              f"{r['command_s']:>9.2f}  {r['speedup_command']:>8.2f}  {r['finish_spread_s']:>8.2f}  "
              f"{r['cost_imbalance']:>13}  {r['identical']}")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "predictions"} for r in rows], indent=2))


if __name__ == "__main__":
    main()
