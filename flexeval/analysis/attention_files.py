"""The official GQA script's attention files, written from `flexeval grounding`'s stored records.

GQA's eval.py (`--grounding`, spatial features) reads a JSON array
    [{"questionId": str, "attention": [[float] * M] * M}]
and reads cell (i, j) as `attentionMap[i][j]` covering x in [i/M, (i+1)/M], y in [j/M, (j+1)/M]: the
first index is the COLUMN (x-first). `flexeval grounding` writes one such file per layer,
    <out>/<model tag>/attentions/layer<L>.json
and beside it `val_predictions.json` ([{"questionId", "prediction"}], the script insists on a prediction
for every balanced question even when only grounding is asked). Scored by the official script:
    python eval.py --tier val --questions <gqa>/val_balanced_questions.json \\
        --scenes <gqa>/val_sceneGraphs.json --predictions <tag>/val_predictions.json \\
        --attentions <tag>/attentions/layer16.json --grounding --mapSize 7
its `Grounding: xx.xx%` line is layer 16's row of grounding.csv (every balanced question of the file
must be in the run: no --limit).

What a record stores. Per question and layer the M x M x-first map as ONE string of M*M decimals
(`MAP_FORMAT`, 5 significant digits, space-separated, row i after row i-1): a string, not a JSON list,
because 132k questions x 32 layers x 49 floats as Python float objects would take ~7 GB at the run's
finish, the string ~1/4 of that. The record's score is computed from the stored decimals, and the
attention files copy those same decimals verbatim, so the official script parses the very numbers the
record was scored on: its number equals the CSV row up to the order of a float sum. Size at M = 7:
about 8 bytes a number, ~400 bytes a map, ~13 KB a question with 32 layers: ~1.7 GB of
predictions.jsonl and ~55 MB per layer file for val balanced (132,062 questions); M = 24 is ~12x that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flexeval.errors import FlexEvalError

MAP_FORMAT = "{:.5g}"
ATTENTIONS_DIR = "attentions"
OFFICIAL_PREDICTIONS = "val_predictions.json"


def encode_map(x_first: np.ndarray) -> str:
    """An M x M x-first map -> the stored string (non-finite values, e.g. from a NaN map, become 0)."""
    flat = np.nan_to_num(np.asarray(x_first, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).ravel()
    return " ".join(MAP_FORMAT.format(float(v)) for v in flat)


def decode_map(text: str, map_size: int, where: str = "") -> np.ndarray:
    """The stored string -> the x-first [M, M] array the record was scored on."""
    values = text.split()
    if len(values) != map_size * map_size:
        raise FlexEvalError(f"{where}: a stored map has {len(values)} numbers, not {map_size}x{map_size}; "
                            "the record is from another --map-size: use a new --out")
    return np.array([float(v) for v in values], dtype=np.float64).reshape(map_size, map_size)


def layer_entries(maps: dict, orig_size: tuple[int, int], question: dict, scene: dict, layers: list[int],
                  map_size: int, where: str) -> dict:
    """{"scores": {layer: official score}, "maps": {layer: stored string}} for one question: each layer's
    [576] low-res map over the padded square -> the x-first M x M map over the original frame ->
    5 significant digits -> scored from exactly those digits."""
    from flexeval.analysis.grounding import frame_attention, grounding_score

    scores, stored = {}, {}
    for layer in layers:
        text = encode_map(frame_attention(maps[layer], orig_size, map_size))
        stored[str(layer)] = text
        scores[str(layer)] = grounding_score(question, scene, decode_map(text, map_size, where), where)
    return {"scores": scores, "maps": stored}


def _attention_json(text: str | None, map_size: int) -> str:
    """The stored decimals as the nested JSON list, verbatim (a skipped question: all zeros, scoring 0)."""
    values = text.split() if text else ["0"] * (map_size * map_size)
    rows = (", ".join(values[i * map_size:(i + 1) * map_size]) for i in range(map_size))
    return "[[" + "], [".join(rows) + "]]"


def attention_file_text(records: list[dict], layer: int, map_size: int) -> str:
    """One layer's official attention file: a JSON array, one question a line."""
    lines = []
    for r in records:
        text = (r.get("maps") or {}).get(str(layer))
        lines.append(f'{{"questionId": {json.dumps(str(r["id"]))}, "attention": {_attention_json(text, map_size)}}}')
    return "[\n" + ",\n".join(lines) + "\n]\n"


def official_predictions(records: list[dict]) -> list[dict]:
    """eval.py's predictions: the answer cleaned as LLaVA's GQA conversion does (no final period, lower case)."""
    return [{"questionId": str(r["id"]), "prediction": str(r.get("prediction") or "").strip().lower().rstrip(".")}
            for r in records]


def write_attention_files(records: list[dict], layers: list[int], map_size: int, folder: Path) -> list[Path]:
    """attentions/layer<L>.json for every layer and val_predictions.json under `folder`, each atomically
    (one layer's text in memory at a time)."""
    from flexeval.results.store import write_text_atomic

    out = Path(folder) / ATTENTIONS_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer in layers:
        path = out / f"layer{layer}.json"
        write_text_atomic(path, attention_file_text(records, layer, map_size))
        paths.append(path)
    write_text_atomic(Path(folder) / OFFICIAL_PREDICTIONS, json.dumps(official_predictions(records)) + "\n")
    return paths
