"""How long `flexeval report --html` takes on a large run: generates a V*-layout run of N records
(with tiny images, or none) and times the first write, a rerun with nothing changed, and a rerun
after one record changed.

    python -m flexeval.results.html.timing --n 62000 --out /tmp/html-timing [--images]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from PIL import Image

from flexeval.results.accuracy import write_accuracy_csv


def make_run(out: Path, n: int, images: bool, seed: int = 0) -> Path:
    """results/<tag>/vstar with n records (direct_attributes / relative_position), and data/ if images."""
    from flexeval.benchmarks import get_benchmark
    from flexeval.results.scoring import score_records

    rng = random.Random(seed)
    data, results = out / "data", out / "results"
    records = []
    for k in range(n):
        subset = "direct_attributes" if k % 5 < 3 else "relative_position"
        item_id = f"{subset}/sa_{k + 1}"
        w, h = rng.choice([(16, 12), (12, 16), (14, 14)])
        boxes = [[rng.randrange(0, w // 2), rng.randrange(0, h // 2), 3, 2]]
        options = ["red", "blue", "green", "white"] if subset == "direct_attributes" else ["left", "right"]
        question = f"What is the color of object {k}?"
        if images:
            (data / subset).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h), (k % 255, 80, 160)).save(data / subset / f"sa_{k + 1}.png")
            (data / subset / f"sa_{k + 1}.json").write_text(json.dumps(
                {"target_object": ["object"], "bbox": boxes, "question": question, "options": options}))
        nll = [rng.random() * 5 for _ in options]
        layers = list(range(8, 31))
        records.append({"key": str(k), "id": item_id, "subset": subset, "question": question, "target": options[0],
                        "options": options, "prediction": options[nll.index(min(nll))], "option_nll": nll,
                        "n_prompt_tokens": 640, "hd_selected_ratio": 0.1,
                        "target_coverage": {"layers": layers, **{f: [round(rng.random(), 6) for _ in layers]
                                                                 for f in ("recall", "precision", "attention_mass")}},
                        "meta": {"target_object": ["object"], "bbox": boxes}})
    records, rows = score_records(get_benchmark("vstar"), records, "paper")
    folder = results / "timing" / "vstar"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_accuracy_csv(folder / "accuracy.csv", rows)
    (folder / "run.json").write_text(json.dumps({"protocol": "paper", "data": {"dir": str(data.resolve())},
                                                 "model": {"options": {"selection": "attention"}}}))
    return results


def main() -> None:
    from flexeval.results.html import write_html_report

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=62000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", action="store_true", help="tiny PNGs in a V* data folder (else no images)")
    args = ap.parse_args()
    t = time.time()
    results = make_run(args.out, args.n, args.images)
    print(f"generated {args.n} records{' + images' if args.images else ''}: {time.time() - t:.1f} s")
    for what in ("first write", "rerun, nothing changed"):
        t = time.time()
        write_html_report(results, images=args.images, say=lambda m: None)
        print(f"{what}: {time.time() - t:.1f} s")
    pred = results / "timing" / "vstar" / "predictions.jsonl"
    lines = pred.read_text().splitlines()
    lines[7] = lines[7].replace("What is the color", "What colour")
    pred.write_text("\n".join(lines) + "\n")
    t = time.time()
    write_html_report(results, images=args.images, say=lambda m: None)
    print(f"rerun, one record changed: {time.time() - t:.1f} s")
    size = sum(p.stat().st_size for p in (results / "report").rglob("*") if p.is_file())
    print(f"report size: {size / 1e6:.1f} MB in {sum(1 for _ in (results / 'report').rglob('*.html'))} pages")


if __name__ == "__main__":
    main()
