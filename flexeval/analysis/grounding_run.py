"""`flexeval grounding`: the GQA grounding score of a model's attention maps, for every layer.

Per question: greedy answer, then the asked row's maps (flexeval/analysis/attention.py; `--token answer` by
default: the row of the answer's first token) at every asked layer, each turned into the official
M x M x-first map over the original frame and scored (flexeval/analysis/grounding.py). Records go to a
PredictionStore (append + fsync per batch, resumable after a kill, like `run`) under
<out>/<model tag>/; then <out>/<model tag>/grounding.json and, over every model in <out>,
<out>/grounding.csv and <out>/grounding.png.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flexeval.errors import FlexEvalError


@dataclass
class GroundingConfig:
    model: str
    data_dir: Path
    out: Path = Path("results-grounding")
    layers: str = "all"
    token: str = "answer"
    map_size: int = 24
    limit: int | None = None
    batch_size: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    selection: str | None = None
    workers: int | None = None
    tag: str | None = None
    quiet: bool = False
    max_image_pixels: int | None = None  # None: run's default; a skipped row's message names --max-image-pixels


def run_grounding(cfg: GroundingConfig) -> dict:
    from tqdm import tqdm

    from flexeval.analysis.attention import continuation_for, generate_answers, parse_layers, parse_token
    from flexeval.analysis.grounding import SUMMARY, summary_rows, write_grounding_tables
    from flexeval.benchmarks.base import DEFAULT_MAX_IMAGE_PIXELS
    from flexeval.benchmarks.gqa import GQA, QUESTIONS, SCENES, load_questions, load_scenes
    from flexeval.evaluate import RunConfig, model_identity, model_tag
    from flexeval.execute import BatchSizer, ImageDataset, Item, feed_batches, log, request_fingerprint
    from flexeval.model import RunOptions, load_pretrained
    from flexeval.results.store import PredictionStore, fingerprint, is_provisional, write_json_atomic

    if cfg.map_size < 1:
        raise FlexEvalError(f"--map-size must be a positive integer, not {cfg.map_size}")
    t0 = time.time()
    token = parse_token(cfg.token)
    data_dir = Path(cfg.data_dir)
    bench = GQA()
    samples = bench.load(data_dir)
    questions, scenes = load_questions(data_dir / QUESTIONS), load_scenes(data_dir / SCENES)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    model = load_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device, options=RunOptions(selection=cfg.selection))
    layers = parse_layers(cfg.layers, model.cfg.num_layers)
    tag = model_tag(RunConfig(bench="gqa", model=cfg.model, tag=cfg.tag, dtype=cfg.dtype), model)
    folder = Path(cfg.out) / tag
    folder.mkdir(parents=True, exist_ok=True)
    requests = [bench.request(s, "paper") for s in samples]
    keys = [f"{s.fingerprint()}-{request_fingerprint(r)}" for s, r in zip(samples, requests)]
    config_fp = fingerprint({"analysis": "gqa_grounding", "model": model_identity(model), "layers": layers,
                             "token": token, "map_size": cfg.map_size, "flexeval_grounding": 1})
    store = PredictionStore(folder, config_fp)
    done = store.completed()
    pending = [i for i, k in enumerate(keys) if k not in done or is_provisional(done[k])]  # skipped: run again
    log(f"[grounding] {len(samples)} questions, {len(samples) - len(pending)} already done, {len(pending)} to run "
        f"-> {folder}")
    sizer = BatchSizer(cfg.batch_size, str(model.device))
    sub = [samples[i] for i in pending]
    dataset = ImageDataset([Item(samples[i], requests[i], keys[i]) for i in pending], model.preprocessor,
                           cfg.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)
    bar = tqdm(total=len(pending), desc="grounding", unit="question", disable=cfg.quiet, dynamic_ncols=True)

    def score_batch(items):
        """items: [(j, ProcessedImage)] -> records (maps of the asked row, scored per layer)."""
        prompts = [requests[pending[j]].prompt for j, _ in items]
        images = [im for _, im in items]
        gens = generate_answers(model, prompts, images, max(16, token + 1))
        recs, ok = [None] * len(items), []
        for k, ((j, _), g) in enumerate(zip(items, gens)):
            try:
                ok.append((k, continuation_for(token, g.token_ids, sub[j].id)))
            except FlexEvalError as e:  # the answer is shorter than --token N: a counted, scored-0 row
                recs[k] = {"prediction": g.text, "skipped": str(e), "scores": {}}
        if ok:
            maps = model.attention_maps([prompts[k] for k, _ in ok], [images[k] for k, _ in ok],
                                        [c for _, c in ok], layers)
            for (k, _), m in zip(ok, maps):
                recs[k] = {"prediction": gens[k].text, "scores": _layer_scores(m, images[k].orig_size, sub[items[k][0]])}
        return recs

    def _layer_scores(maps, orig_size, sample):
        from flexeval.analysis.grounding import frame_attention, grounding_score

        q = questions[sample.id]
        scene = scenes.get(str(q["imageId"]))
        if scene is None:
            raise FlexEvalError(f"{data_dir / SCENES}: no scene graph for image {q['imageId']} (question {sample.id})")
        where = f"{data_dir / QUESTIONS} question {sample.id}"
        return {str(layer): grounding_score(q, scene, frame_attention(maps.maps[layer], orig_size, cfg.map_size),
                                            where) for layer in layers}

    def flush(buffer):
        ready = [(j, im) for j, im, err in buffer if err is None]
        by_j = {j: {"prediction": "", "skipped": err, "scores": {}} for j, _, err in buffer if err is not None}
        if ready:
            for (j, _), rec in zip(ready, sizer.run(ready, score_batch)):
                by_j[j] = rec
        out = []
        for j, _, _ in buffer:
            s = sub[j]
            out.append({"key": keys[pending[j]], "id": s.id, "subset": s.subset, "question": s.question,
                        "target": s.target, **by_j[j], "meta": s.meta})
        store.append(out)  # flushed and fsync'ed per batch
        bar.update(len(buffer))

    feed_batches(dataset, cfg.workers, sizer, flush)
    bar.close()
    store.close()
    records = store.finalize(keys)
    rows = summary_rows(records, layers)
    summary = {"model": tag, "kind": "flexattention" if model.use_hd else "llava-1.5",
               "select_layer": model.options.select_layer if model.use_hd else None,
               "token": cfg.token, "map_size": cfg.map_size, "layers": rows,
               "skipped": sum(1 for r in records if r.get("skipped")), "config_fingerprint": config_fp,
               "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
               "data": {"dir": str(data_dir.resolve()), "questions": len(samples)},
               "timing": {"wall_s": round(time.time() - t0, 3), "ran": len(pending)}}
    write_json_atomic(folder / SUMMARY, summary)
    if summary["skipped"]:
        log(f"[grounding] {summary['skipped']} questions have no map and score 0 (marked 'skipped' in "
            f"{folder / 'predictions.jsonl'})")
    csv_path, png_path = write_grounding_tables(Path(cfg.out))
    summary["files"] = {"csv": str(csv_path), "png": str(png_path)}
    return summary
