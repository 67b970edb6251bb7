"""GQA at its real size, measured on generated files (not a test: run it by hand; it writes nothing tracked).

    python tests/bench_gqa_size.py --questions 132062 --records 132062 --layers 32 --out /tmp/gqa-size

1. Writes a val_balanced_questions.json of --questions questions shaped like the release's (programs,
   entailments, groups, annotations; ~1.3 KB a question as in the real file) and a scene-graph file, then
   loads them in fresh processes and prints wall time and peak RSS for: json.load of the whole file (what
   a naive loader does), flexeval's load_questions (one question at a time, slim), GQA.load (+ the image
   listing) and load_scenes.
2. Builds --records grounding records with --layers stored M x M maps (M = 7) and prints the bytes of a
   record, of predictions.jsonl and of one official attention file, and the time to write all of them.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = "what color is the large metal object to the left of small rubber cube on table".split()


def fake_question(rng: random.Random, k: int, n_images: int) -> tuple[str, dict]:
    qid = f"{200000000 + k}"
    image = f"n{100000 + k % n_images}"
    obj = [str(rng.randrange(10**6, 10**7)) for _ in range(3)]
    steps = [{"operation": op, "dependencies": [i - 1] if i else [], "argument": f"{rng.choice(WORDS)} ({obj[i % 3]})"}
             for i, op in enumerate(rng.sample(["select", "relate", "filter color", "query", "verify", "exist"], 4))]
    return qid, {
        "semantic": steps, "entailed": [f"{200000000 + rng.randrange(10**6)}" for _ in range(rng.randrange(2, 12))],
        "equivalent": [qid], "question": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 16))) + "?",
        "imageId": image, "isBalanced": True, "groups": {"global": rng.choice(["color", None]), "local": "13-obj_color"},
        "answer": rng.choice(["yes", "no", "red", "left"]), "semanticStr": " ->".join(s["argument"] for s in steps),
        "annotations": {"answer": {}, "question": {"2": obj[0], "6:8": obj[1]}, "fullAnswer": {"1": obj[0]}},
        "types": {"structural": "query", "semantic": "attr", "detailed": "relS"},
        "fullAnswer": "The object is " + rng.choice(WORDS) + ".",
    }


def write_files(out: Path, n_questions: int, n_images: int) -> None:
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "val_balanced_questions.json", "w") as f:  # streamed: the generator never holds the file
        f.write("{")
        for k in range(n_questions):
            qid, q = fake_question(rng, k, n_images)
            f.write(("," if k else "") + json.dumps(qid) + ": " + json.dumps(q))
        f.write("}")
    scenes = {f"n{100000 + i}": {"width": 500, "height": 375, "location": "room", "weather": "none",
                                 "objects": {str(rng.randrange(10**6, 10**7)): {
                                     "name": "cube", "x": 10, "y": 20, "w": 30, "h": 40, "attributes": ["red"],
                                     "relations": [{"object": "1", "name": "to the left of"}] * 3}
                                     for _ in range(16)}} for i in range(n_images)}
    (out / "val_sceneGraphs.json").write_text(json.dumps(scenes))
    (out / "images").mkdir(exist_ok=True)
    for i in range(n_images):
        (out / "images" / f"n{100000 + i}.jpg").touch()


PHASES = {
    "baseline (imports)": "n = 0",
    "json.load (naive)": "import json; d = json.load(open(P / 'val_balanced_questions.json')); n = len(d)",
    "load_questions": "from flexeval.benchmarks.gqa import load_questions; n = len(load_questions(P / "
                      "'val_balanced_questions.json'))",
    "GQA.load (samples)": "from flexeval.benchmarks.gqa import GQA; n = len(GQA().load(P))",
    "load_scenes": "from flexeval.benchmarks.gqa import load_scenes; n = len(load_scenes(P / 'val_sceneGraphs.json'))",
}


def measure(out: Path, code: str) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, count) of `code` in a fresh interpreter (its import cost subtracted)."""
    script = (f"import time, resource, sys; from pathlib import Path; P = Path({str(out)!r}); import flexeval.benchmarks\n"
              f"t = time.perf_counter()\n{code}\nprint(time.perf_counter() - t, "
              f"resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n)")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    s, mb, n = res.stdout.split()
    return float(s), float(mb), int(n)


def records_size(out: Path, n_records: int, layers: int, map_size: int = 7) -> None:
    import numpy as np

    from flexeval.analysis.attention_files import encode_map, write_attention_files
    from flexeval.results.store import read_records, record_line

    rng = np.random.default_rng(0)
    maps = [encode_map(m / m.sum()) for m in rng.random((64, map_size, map_size)) ** 3]
    t = time.perf_counter()
    records = [{"key": f"{k:016x}-abcdef0123456789", "id": f"{200000000 + k}", "subset": "val_balanced",
                "question": "What color is the large metal object?", "target": "red", "prediction": "Red",
                "scores": {str(la): 0.123456789 for la in range(layers)},
                "maps": {str(la): maps[(k + la) % 64] for la in range(layers)}, "meta": {"imageId": "n100000"}}
               for k in range(n_records)]
    line = record_line(records[0])
    with open(out / "predictions.jsonl", "wb") as f:
        for r in records:
            f.write(record_line(r))
    t_jsonl = time.perf_counter() - t
    del records
    t = time.perf_counter()
    records = read_records(out / "predictions.jsonl")  # what the run's finish holds: every string its own
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    paths = write_attention_files(records, list(range(layers)), map_size, out / "run")
    t_files = time.perf_counter() - t
    print(f"records: {n_records} x {layers} layers, M={map_size}: {len(line)} bytes a record; predictions.jsonl "
          f"{(out / 'predictions.jsonl').stat().st_size / 1e6:.0f} MB ({t_jsonl:.1f} s to build and write, "
          f"{t_read:.1f} s to read back); "
          f"one attention file {paths[0].stat().st_size / 1e6:.1f} MB, all {layers} in {t_files:.1f} s; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=132062)
    ap.add_argument("--images", type=int, default=10696)
    ap.add_argument("--records", type=int, default=0)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("/tmp/gqa-size"))
    args = ap.parse_args()
    t = time.perf_counter()
    write_files(args.out, args.questions, args.images)
    size = (args.out / "val_balanced_questions.json").stat().st_size
    print(f"wrote {args.questions} questions ({size / 1e6:.0f} MB, {size / args.questions:.0f} B each) and "
          f"{args.images} scene graphs in {time.perf_counter() - t:.1f} s")
    for name, code in PHASES.items():
        s, mb, n = measure(args.out, code)
        print(f"{name:>20}: {n} in {s:.2f} s, peak RSS {mb:.0f} MB")
    if args.records:
        records_size(args.out, args.records, args.layers)


if __name__ == "__main__":
    main()
