"""`flexeval grounding`: the GQA grounding score of a model's attention maps, for every layer.

Per question: greedy answer, then the asked row's maps (flexeval/analysis/attention.py; `--token answer` by
default: the row of the answer's first token) at every asked layer, each turned into the official
M x M x-first map over the original frame and scored (flexeval/analysis/grounding.py). The work is
the execution core's (flexeval/evaluate.py run_benchmark with analysis/maps_work.py GroundingWork):
records under <out>/<model tag>/gqa/grounding/ (resumable after a kill, locked, run.json, one
process or a torchrun launch); then <out>/<model tag>/grounding.json and, over every model in
<out>, <out>/grounding.csv and <out>/grounding.png.
"""

from __future__ import annotations

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
    map_size: int = 7  # the official eval.py's --mapSize default
    limit: int | None = None
    batch_size: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    selection: str | None = None
    workers: int | None = None
    tag: str | None = None
    quiet: bool = False
    max_image_pixels: int | None = None  # None: run's default; a skipped row's message names --max-image-pixels


def run_grounding(cfg: GroundingConfig) -> dict | None:
    """grounding.json's content with the table files (rank 0); None on the other ranks of a launch."""
    from flexeval.analysis.attention import parse_layers, parse_token
    from flexeval.analysis.maps_work import GroundingWork
    from flexeval.benchmarks.gqa import GQA
    from flexeval.evaluate import RunConfig, on_cluster, run_benchmark
    from flexeval.execute import log
    from flexeval.model import RunOptions, load_pretrained

    if cfg.map_size < 1:
        raise FlexEvalError(f"--map-size must be a positive integer, not {cfg.map_size}")
    token = parse_token(cfg.token)
    run_cfg = RunConfig(bench="gqa", model=cfg.model, data_dir=Path(cfg.data_dir), out=Path(cfg.out), limit=cfg.limit,
                        batch_size=cfg.batch_size, dtype=cfg.dtype, device=cfg.device, selection=cfg.selection,
                        workers=cfg.workers, tag=cfg.tag, quiet=cfg.quiet,
                        **({"max_image_pixels": cfg.max_image_pixels} if cfg.max_image_pixels else {}))
    about_cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    samples = GQA().load(Path(cfg.data_dir))  # the data's errors before the model loads (minutes for a 7B)

    def body(run_cfg: RunConfig, cluster) -> dict | None:
        if cluster.is_main:
            log(f"loading {cfg.model} ...")
        model = load_pretrained(cfg.model, dtype=cfg.dtype, device=run_cfg.device,
                                options=RunOptions(selection=cfg.selection))
        about = {"kind": "flexattention" if model.use_hd else "llava-1.5",
                 "select_layer": model.options.select_layer if model.use_hd else None,
                 "token": cfg.token, "config": about_cfg}
        work = GroundingWork(parse_layers(cfg.layers, model.cfg.num_layers), token, cfg.map_size, cfg.data_dir,
                             cfg.out, about)
        run_benchmark(GQA(), model, run_cfg, Path(cfg.data_dir), "paper", samples, cluster=cluster, work=work)
        return work.summary

    summary, _ = on_cluster(run_cfg, body)
    return summary
