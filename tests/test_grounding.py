"""The official GQA grounding score, worked by hand and against a transcription of the official
eval.py; model maps in the official format; the GQA adapter's layout; `flexeval grounding` end to
end through the execution core (scores recomputed from the literal reference's maps with the
transcription, resume after a limit and after a kill)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flexeval.analysis.attention import generate_answers
from flexeval.analysis.grounding import frame_attention, grounding_score, score_attention_file
from flexeval.cli import app
from flexeval.errors import FlexEvalError
from flexeval.model import reference

# ---- the official eval.py's computeGroundingScore (spatial maps), transcribed independently ----

def official_score(question: dict, scene: dict, attention, map_size: int) -> float:
    """Regions: each object of annotations.question then annotations.fullAnswer as (x0, y0, x1, y1) / (w, h),
    plus the whole image when any semantic step `c` has "scene" in it; cell (i, j) is
    [i/M, (i+1)/M] x [j/M, (j+1)/M] holding attention[i][j]; the score sums attention * (the cell's area
    inside the region / the cell's area) over regions and cells."""
    def region(object_id):
        o = scene["objects"][object_id]
        return (o["x"] / scene["width"], o["y"] / scene["height"],
                (o["x"] + o["w"]) / scene["width"], (o["y"] + o["h"]) / scene["height"])

    def overlap(a0, a1, b0, b1):
        lo, hi = max(a0, b0), min(a1, b1)
        return hi - lo if hi > lo else 0.0

    regions = [region(k) for k in question["annotations"]["question"].values()]
    regions += [region(k) for k in question["annotations"]["fullAnswer"].values()]
    if any("scene" in step for step in question["semantic"]):
        regions.append((0, 0, 1, 1))
    edge = 1.0 / map_size
    total = 0.0
    for x0, y0, x1, y1 in regions:
        for i in range(map_size):
            for j in range(map_size):
                cell = (edge * i, edge * j, edge * (i + 1), edge * (j + 1))
                inside = overlap(cell[0], cell[2], x0, x1) * overlap(cell[1], cell[3], y0, y1)
                total += float(attention[i][j]) * inside / (edge * edge)
    return total


def _q(question_objs=(), answer_objs=(), semantic=()):
    return {"imageId": "img", "question": "q?", "answer": "a", "isBalanced": True,
            "annotations": {"question": {str(k): o for k, o in enumerate(question_objs)}, "answer": {},
                            "fullAnswer": {str(k): o for k, o in enumerate(answer_objs)}},
            "semantic": list(semantic)}


def _scene(w, h, **objects):
    return {"width": w, "height": h, "objects": {k: dict(zip("xywh", v)) for k, v in objects.items()}}


SCENE = _scene(100, 100, a=(25, 0, 25, 50), b=(50, 0, 50, 50))  # a: x .25-.5, y 0-.5; b: x .5-1, y 0-.5


def test_cell_half_inside_a_region():
    # M = 2: cell (i=0, j=0) is x 0-.5, y 0-.5; region a covers half of it -> 0.6 * 0.5. Cell (1, 0) only
    # touches a's edge at x = .5 -> nothing.
    att = [[0.6, 0.0], [0.4, 0.0]]
    assert grounding_score(_q(["a"]), SCENE, att) == pytest.approx(0.3)


def test_x_first_indexing():
    # region b is the top-right cell: x-first that is att[1][0]; its transpose (row-major) misses it
    assert grounding_score(_q(["b"]), SCENE, [[0.0, 0.0], [1.0, 0.0]]) == pytest.approx(1.0)
    assert grounding_score(_q(["b"]), SCENE, [[0.0, 1.0], [0.0, 0.0]]) == pytest.approx(0.0)


def test_region_in_question_and_full_answer_counts_twice():
    att = [[0.6, 0.0], [0.4, 0.0]]
    assert grounding_score(_q(["a"], ["a"]), SCENE, att) == pytest.approx(0.6)
    # question + fullAnswer, `answer` annotations ignored
    q = _q(["a"], ["b"])
    q["annotations"]["answer"] = {"0": "b"}
    assert grounding_score(q, SCENE, att) == pytest.approx(0.3 + 0.4)


def test_the_score_is_the_official_formula_on_random_maps_and_the_scene_branch():
    rng = random.Random(5)
    scene = _scene(300, 200, **{f"o{k}": (rng.randrange(0, 150), rng.randrange(0, 100), rng.randrange(5, 150),
                                          rng.randrange(5, 100)) for k in range(4)})
    select_scene = {"operation": "select", "dependencies": [], "argument": "scene"}  # release steps: a key test
    cases = [(["o0"], ["o1"], [select_scene]), (["o2", "o3"], ["o2"], []), ([], [], ["select: scene"]),
             (["o1"], [], ["select: scene", "query: color"])]
    for m in (3, 7):
        for q_objs, a_objs, semantic in cases:
            att = np.array([[rng.random() for _ in range(m)] for _ in range(m)])
            att /= att.sum()
            q = _q(q_objs, a_objs, semantic)
            want = official_score(q, scene, att.tolist(), m)
            assert grounding_score(q, scene, att) == pytest.approx(want, rel=1e-9)
            if "select: scene" in semantic:  # the whole image holds all of a map that sums to 1
                assert want == pytest.approx(official_score(_q(q_objs, a_objs), scene, att.tolist(), m) + 1.0)
    assert official_score(_q(["o0"], [], [select_scene]), scene, np.eye(3).tolist(), 3) == \
        official_score(_q(["o0"]), scene, np.eye(3).tolist(), 3)  # a dict step named "scene" adds nothing


def test_no_regions_scores_zero_and_counts(tmp_path):
    assert grounding_score(_q(), SCENE, [[1.0, 0.0], [0.0, 0.0]]) == 0.0
    questions = {"1": {**_q(["b"]), "imageId": "img"}, "2": {**_q(), "imageId": "img"},
                 "3": {**_q(["b"]), "imageId": "img", "isBalanced": False}}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "s.json").write_text(json.dumps({"img": SCENE}))
    att = [[0.0, 0.0], [1.0, 0.0]]
    (tmp_path / "a.json").write_text(json.dumps([{"questionId": "1", "attention": att},
                                                 {"questionId": "2", "attention": att}]))
    res = score_attention_file(tmp_path / "q.json", tmp_path / "s.json", tmp_path / "a.json", 2)
    assert res == {"score": pytest.approx(50.0), "n": 2}  # (1 + 0) / 2 * 100; question 3 is not balanced
    out = CliRunner().invoke(app, ["grounding", "score", "--questions", str(tmp_path / "q.json"), "--scenes",
                                   str(tmp_path / "s.json"), "--attentions", str(tmp_path / "a.json")])
    assert out.exit_code == 0 and "Grounding: 50.00% (2 balanced questions)" in out.output
    (tmp_path / "a.json").write_text(json.dumps([{"questionId": "1", "attention": att}]))
    with pytest.raises(FlexEvalError, match="no attention for balanced question 2"):
        score_attention_file(tmp_path / "q.json", tmp_path / "s.json", tmp_path / "a.json")


def test_non_square_image_with_padding():
    """A wide 200x100 image: the model's 24x24 map covers the padded 200x200 square, the image on its
    rows 6..17. Mass on rows 6..11 is the image's upper half; mass on the padding rows is dropped
    (with M = 2 every bilinear sample lies at least half a cell inside rows 6..17)."""
    sq = torch.zeros(24, 24)
    sq[6:12] = 1.0
    sq[:6] = 5.0  # heavy attention on the padding above the image: kept, it would dominate the map
    att = frame_attention(sq.flatten(), (200, 100), 2)
    np.testing.assert_allclose(att, [[0.5, 0.0], [0.5, 0.0]], atol=1e-6)  # x-first: j = 0 is the upper half
    assert grounding_score(_q(["top"]), _scene(200, 100, top=(0, 0, 200, 50)), att) == pytest.approx(1.0)
    assert grounding_score(_q(["low"]), _scene(200, 100, low=(0, 50, 200, 50)), att) == pytest.approx(0.0)
    # a tall 100x200 image: columns 6..17 hold it; mass on columns 12..17 is its right half (i = 1)
    right = torch.zeros(24, 24)
    right[:, 12:18] = 1.0
    right[:, 18:] = 5.0  # padding on the right
    att = frame_attention(right.flatten(), (100, 200), 2)
    np.testing.assert_allclose(att, [[0.0, 0.0], [0.5, 0.5]], atol=1e-6)


def test_gqa_sample_layout(tmp_path):
    from PIL import Image

    from flexeval.benchmarks import get_benchmark, list_benchmarks
    from flexeval.benchmarks.gqa import load_scenes

    gqa = get_benchmark("gqa")
    assert "gqa" not in [b.name for b in list_benchmarks()]  # analysis only: not in --bench all
    d = gqa.make_sample(tmp_path / "gqa", n=4)
    samples = gqa.load(d)
    scenes = load_scenes(d / "val_sceneGraphs.json")
    questions = json.loads((d / "val_balanced_questions.json").read_text())
    assert len(samples) == 4
    for s in samples:
        q = questions[s.id]
        scene = scenes[q["imageId"]]
        img = Image.open(s.image)
        assert img.size == (scene["width"], scene["height"])
        for part in ("question", "fullAnswer"):
            for obj in q["annotations"][part].values():
                o = scene["objects"][obj]
                assert 0 <= o["x"] < o["x"] + o["w"] <= scene["width"]
        assert gqa.score({"prediction": q["answer"].capitalize() + ".", "target": q["answer"]}, "paper")["score"] == 1
    with pytest.raises(FlexEvalError, match="questions1.2.zip"):
        gqa.fetch(tmp_path / "real")


def _gqa_data(tmp_path, n):
    """Generated GQA items; the first question also refers to the whole scene (the official branch)."""
    from flexeval.benchmarks import get_benchmark

    data = get_benchmark("gqa").make_sample(tmp_path / "gqa", n=n)
    path = data / "val_balanced_questions.json"
    questions = json.loads(path.read_text())
    questions[next(iter(questions))]["semantic"].append("select: scene")
    path.write_text(json.dumps(questions))
    return data


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_grounding_run_scores_and_resumes(release_dir, release_model, tmp_path):
    """Records hold the official score (transcribed above) of the literal reference's map of the row of
    the answer's first token; a second run with a larger --limit runs only the new questions; the CSV is
    the per-layer mean; the run has the core's run.json."""
    from flexeval.analysis.grounding_run import GroundingConfig, run_grounding
    from flexeval.benchmarks import get_benchmark
    from flexeval.benchmarks.base import open_image

    gqa = get_benchmark("gqa")
    data = _gqa_data(tmp_path, 3)
    out = tmp_path / "g"
    cfg = dict(model=str(release_dir), data_dir=data, out=out, layers="7,9", dtype="float32", device="cpu",
               workers=0, quiet=True, batch_size="2", map_size=6, tag="tiny")
    first = run_grounding(GroundingConfig(limit=2, **cfg))
    assert first["timing"]["ran"] == 2
    second = run_grounding(GroundingConfig(**cfg))
    assert (second["timing"]["ran"], second["timing"]["reused"]) == (1, 2)
    folder = out / "tiny" / "gqa" / "grounding"
    records = _lines(folder / "predictions.jsonl")
    samples = gqa.load(data)
    assert [r["id"] for r in records] == [s.id for s in samples]
    run = json.loads((folder / "run.json").read_text())
    assert run["grounding"]["layers"] == second["layers"] and run["benchmark"] == "gqa"
    assert json.loads((out / "tiny" / "grounding.json").read_text())["layers"] == second["layers"]
    questions = json.loads((data / "val_balanced_questions.json").read_text())
    scenes = json.loads((data / "val_sceneGraphs.json").read_text())
    for rec, s in zip(records, samples):
        prompt = release_model.prompt_text(gqa.request(s, "paper"))
        pil = open_image(s.image)
        im = release_model.preprocess(pil)
        gen = generate_answers(release_model, [prompt], [im], 16)[0]
        assert rec["generated_ids"] == gen.token_ids
        ref = reference.attention_maps(release_model, prompt, im, gen.token_ids[:1])
        q = questions[s.id]
        for layer in (7, 9):
            want = official_score(q, scenes[q["imageId"]], frame_attention(ref.maps[layer][0], pil.size, 6), 6)
            assert rec["scores"][str(layer)] == pytest.approx(want, rel=1e-3, abs=1e-5), (s.id, layer)
            assert 0 < rec["scores"][str(layer)] < 2
    assert all(r["scores"][k] > 1 for r in records[:1] for k in ("7", "9"))  # the planted whole-scene region
    rows = (out / "grounding.csv").read_text().splitlines()
    assert rows[0] == "model,layer,score,n,query_row,map_size,kind"
    mean7 = 100 * np.mean([r["scores"]["7"] for r in records])
    assert rows[1].split(",")[:2] == ["tiny", "7"] and float(rows[1].split(",")[2]) == pytest.approx(mean7, abs=1e-4)
    assert rows[1].split(",")[3] == "3"
    assert (out / "grounding.png").stat().st_size > 0


# `flexeval grounding` in a process that SIGKILLs itself at the n-th os.fsync (each appended batch is one)
KILLER = """
import os, signal
real, calls = os.fsync, [0]
def fsync(*a):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT_FSYNC"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a)
os.fsync = fsync
from flexeval.cli import app
app(prog_name="flexeval")
"""


def test_a_killed_grounding_run_resumes_to_the_records_of_an_uninterrupted_one(release_dir, tmp_path):
    data = _gqa_data(tmp_path, 4)

    def grounding(out, kill_at):
        args = [sys.executable, "-c", KILLER, "grounding", "--model", str(release_dir), "--data-dir", str(data),
                "--out", str(out), "--layers", "7,9", "--map-size", "6", "--batch-size", "1", "--workers", "0",
                "--tag", "tiny", "--dtype", "float32", "--device", "cpu", "--quiet"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "KILL_AT_FSYNC": str(kill_at)}
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)

    whole = grounding(tmp_path / "whole", 0)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = grounding(tmp_path / "resumed", 3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = tmp_path / "resumed" / "tiny" / "gqa" / "grounding"
    kept = sum(len(_lines(p)) for p in (folder / "shards").glob("*.jsonl"))
    assert 1 <= kept < 4 and not (folder / "predictions.jsonl").exists()
    again = grounding(tmp_path / "resumed", 0)
    assert again.returncode == 0, again.stderr[-2000:]
    want = tmp_path / "whole" / "tiny" / "gqa" / "grounding"
    assert (folder / "predictions.jsonl").read_bytes() == (want / "predictions.jsonl").read_bytes()
    run = json.loads((folder / "run.json").read_text())
    assert (run["timing"]["reused"], run["timing"]["ran"]) == (kept, 4 - kept)
    summaries = [json.loads((d / "tiny" / "grounding.json").read_text()) for d in (tmp_path / "resumed", tmp_path / "whole")]
    assert summaries[0]["layers"] == summaries[1]["layers"]
