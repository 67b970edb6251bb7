"""How well the attention map covers what the question is about (the seed's appendix A.3, Fig. 2).

The score is the official GQA evaluation script's `--grounding` score (eval.py, spatial features):
- regions R: the boxes of the objects in `annotations.question` and then `annotations.fullAnswer`
  (not `answer`), each (x, y, x + w, y + h) divided by the image's (width, height); NOT
  de-duplicated (an object in both counts twice); the whole image (0, 0, 1, 1) is added when
  `any("scene" in c for c in question["semantic"])` (with the release's semantic steps, dicts
  with keys operation/dependencies/argument, that test is a key test and never true; kept as is);
- an M x M map (M = --map-size, the script's --mapSize, default 7 there) indexed x-first:
  att[i][j] is the cell [i/M, (i+1)/M] x [j/M, (j+1)/M], i the COLUMN;
- score = sum over r in R, cells c of att[c] * area(c & r) / area(c); no regions -> 0;
  the reported number is the mean over the balanced questions * 100.
The attention file the script reads: a JSON array [{"questionId": str, "attention": M x M floats}].

`flexeval grounding` makes that map from the model: the row's head-summed low-res attention over
the 576 image tokens (flexeval/analysis/attention.py, from the one fast path), mapped from the padded square
onto the ORIGINAL frame, averaged over each of the M x M cells, normalised to sum to 1, transposed
to x-first, and scored for every layer asked.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flexeval.errors import FlexEvalError

REFERENCE_SCORE = 43.0  # the seed's Fig. 2: BottomUp / MAC with spatial features
SUPERSAMPLE = 4  # bilinear samples per cell side when averaging the map over a cell


# ---------------------------------------------------------------- the official score

def question_regions(question: dict, scene: dict, where: str = "") -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) in 0..1 of the image, in the official order, duplicates kept."""
    w, h = float(scene["width"]), float(scene["height"])
    regions = []
    for part in ("question", "fullAnswer"):
        for obj_id in question["annotations"][part].values():
            obj = scene["objects"].get(str(obj_id))
            if obj is None:
                raise FlexEvalError(f"{where}: annotations.{part} points at object {obj_id}, which the scene graph "
                                    f"of image {question.get('imageId')} lacks; use the matching val_sceneGraphs.json")
            regions.append((obj["x"] / w, obj["y"] / h, (obj["x"] + obj["w"]) / w, (obj["y"] + obj["h"]) / h))
    if any(("scene" in c) for c in question.get("semantic", [])):
        regions.append((0.0, 0.0, 1.0, 1.0))
    return regions


def _overlap(edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Length of each cell's [edges[k], edges[k+1]] inside [lo, hi] (0 when they only touch)."""
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)


def grounding_score(question: dict, scene: dict, attention, where: str = "") -> float:
    """The official computeGroundingScore for a spatial x-first map (attention[i][j], i = column)."""
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 2 or att.shape[0] != att.shape[1]:
        raise FlexEvalError(f"{where}: the attention must be a square M x M list of lists, got shape {att.shape}")
    m = att.shape[0]
    edges = np.arange(m + 1, dtype=np.float64) / m
    cell_area = 1.0 / (m * m)
    total = 0.0
    for x0, y0, x1, y1 in question_regions(question, scene, where):
        rate = np.outer(_overlap(edges, x0, x1), _overlap(edges, y0, y1)) / cell_area  # [i = x, j = y]
        total += float((att * rate).sum())
    return total


def score_attention_file(questions_path: Path, scenes_path: Path, attentions_path: Path,
                         map_size: int | None = None) -> dict:
    """`flexeval grounding score`: the official grounding score of a precomputed attention file."""
    from flexeval.benchmarks.base import read_json
    from flexeval.benchmarks.gqa import load_questions, load_scenes

    questions, scenes = load_questions(Path(questions_path)), load_scenes(Path(scenes_path))
    entries = read_json(Path(attentions_path))
    if not isinstance(entries, list) or not all(isinstance(a, dict) and "questionId" in a and "attention" in a
                                                for a in entries):
        raise FlexEvalError(f"{attentions_path}: expected a JSON array of {{\"questionId\": ..., \"attention\": "
                            "[[...], ...]}} (the official eval.py's attentions format)")
    attentions = {str(a["questionId"]): a["attention"] for a in entries}
    scores = []
    for qid, q in questions.items():
        if qid not in attentions:
            raise FlexEvalError(f"{attentions_path}: no attention for balanced question {qid}; the official script "
                                "needs one for every balanced question")
        att = attentions[qid]
        if map_size is not None and np.asarray(att).shape != (map_size, map_size):
            raise FlexEvalError(f"{attentions_path} question {qid}: attention shape {np.asarray(att).shape}, "
                                f"but --map-size {map_size}")
        scene = scenes.get(str(q["imageId"]))
        if scene is None:
            raise FlexEvalError(f"{scenes_path}: no scene graph for image {q['imageId']} (question {qid})")
        scores.append(grounding_score(q, scene, att, where=f"{attentions_path} question {qid}"))
    return {"score": 100.0 * float(np.mean(scores)) if scores else 0.0, "n": len(scores)}


# ---------------------------------------------------------------- model maps -> the official format

def frame_attention(lowres_map: torch.Tensor, orig_size: tuple[int, int], map_size: int) -> np.ndarray:
    """[576] map over the padded square -> x-first [M, M] over the original frame, summing to 1."""
    from flexeval.analysis.attention import lowres_grid, square_to_frame

    s = SUPERSAMPLE
    fine = square_to_frame(lowres_grid(lowres_map), orig_size, (map_size * s, map_size * s)).astype(np.float64)
    cells = fine.reshape(map_size, s, map_size, s).mean(axis=(1, 3))  # [row = y, col = x]
    total = cells.sum()
    cells = cells / total if total > 0 else np.full_like(cells, 1.0 / cells.size)
    return cells.T  # x-first, as the official script indexes it


# ---------------------------------------------------------------- tables and the plot over models

SUMMARY = "grounding.json"
KIND_LABELS = {"llava-1.5": "LLaVA-1.5", "flexattention": "FlexAttention"}


@dataclass
class ModelCurve:
    tag: str
    kind: str
    select_layer: int | None
    rows: list[dict]  # {"layer", "score", "n"}
    token: str = "answer"  # the query row: answer | prompt-end | N
    map_size: int | None = None


def curve_from_summary(d: dict) -> ModelCurve:
    return ModelCurve(d["model"], d["kind"], d.get("select_layer"), d["layers"], str(d.get("token", "answer")),
                      d.get("map_size"))


def read_curves(out: Path) -> list[ModelCurve]:
    from flexeval.benchmarks.base import read_json

    return [curve_from_summary(read_json(p)) for p in sorted(Path(out).glob(f"*/{SUMMARY}"))]


def read_summaries(paths: list[Path]) -> list[ModelCurve]:
    """`flexeval grounding plot`: curves from runs' files (a grounding.json, a model folder holding one,
    or a --out folder holding several)."""
    from flexeval.benchmarks.base import read_json

    curves = []
    for p in map(Path, paths):
        found = [p] if p.is_file() else ([p / SUMMARY] if (p / SUMMARY).is_file() else sorted(p.glob(f"*/{SUMMARY}")))
        if not found:
            raise FlexEvalError(f"{p}: no {SUMMARY} there (give a grounding.json, a model folder of a "
                                f"`flexeval grounding` run, or its --out folder)")
        curves += [curve_from_summary(read_json(f)) for f in found]
    return curves


def grounding_csv_text(curves: list[ModelCurve]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "layer", "score", "n", "query_row", "map_size", "kind"])
    for c in curves:
        for r in c.rows:
            w.writerow([c.tag, r["layer"], f"{r['score']:.4f}", r["n"], c.token, c.map_size, c.kind])
    return buf.getvalue()


def write_grounding_tables(out: Path, curves: list[ModelCurve] | None = None,
                           png: Path | None = None) -> tuple[Path, Path]:
    """grounding.csv and grounding.png (Fig. 2) over every model folder under `out` (or `curves`), atomically."""
    from flexeval.results.store import write_text_atomic

    curves = read_curves(out) if curves is None else curves
    if not curves:
        raise FlexEvalError(f"no */{SUMMARY} under {out}; run `flexeval grounding --model M --out {out}` first")
    csv_path = Path(png).with_suffix(".csv") if png else Path(out) / "grounding.csv"
    png_path = Path(png) if png else Path(out) / "grounding.png"
    write_text_atomic(csv_path, grounding_csv_text(curves))
    plot_curves(curves, png_path)
    return csv_path, png_path


def query_row_text(token: str) -> str:
    from flexeval.analysis.attention import parse_token, token_label

    return f"{token} ({token_label(parse_token(token))})"


def curve_label(c: ModelCurve, shared: bool) -> str:
    n = c.rows[0]["n"] if c.rows else 0
    own = "" if shared else f", row {c.token}, M={c.map_size}"
    return f"{KIND_LABELS.get(c.kind, c.kind)}: {c.tag} (n={n}{own})"


def plot_curves(curves: list[ModelCurve], path: Path) -> Path:
    """The seed's Fig. 2: grounding score per LLM layer, one curve per model, the 43% BottomUp/MAC line;
    the query row and M in the title (in each label when the curves differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flexeval.analysis.attention import save_figure

    settings = {(c.token, c.map_size) for c in curves}
    shared = len(settings) == 1
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for c in curves:
        style = "-" if c.kind == "flexattention" else "--"
        ax.plot([r["layer"] for r in c.rows], [r["score"] for r in c.rows], style, marker="o", markersize=3,
                label=curve_label(c, shared))
    ax.axhline(REFERENCE_SCORE, color="grey", linestyle=":", linewidth=1.5,
               label=f"BottomUp / MAC, spatial features: {REFERENCE_SCORE:g}%")
    for s in sorted({c.select_layer for c in curves if c.select_layer is not None}):
        ax.axvline(s, color="red", linestyle=":", linewidth=1,
                   label=f"FlexAttention: first selection at layer {s}, high-res keys from {s + 1}")
    ax.set_xlabel("LLM layer (0-based)")
    ax.set_ylabel("GQA grounding score (%)")
    ax.set_ylim(bottom=0)
    title = "Attention-map accuracy per layer (official GQA eval.py --grounding, val balanced)"
    if shared:
        token, m = next(iter(settings))
        title += f"\nquery row: {query_row_text(token)}; map {m}x{m} (--mapSize {m})"
    else:
        title += "\nthe curves differ in query row or map size M: see each label"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=120)


def summary_rows(records: list[dict], layers: list[int]) -> list[dict]:
    """Mean * 100 per layer over every record; a skipped question (no image, no such row) scores 0."""
    n = len(records)
    return [{"layer": layer, "n": n,
             "score": 100.0 * sum(float(r.get("scores", {}).get(str(layer), 0.0)) for r in records) / n if n else 0.0}
            for layer in layers]
