"""The official GQA grounding score, worked by hand; model maps in the official format; the GQA
adapter's layout; `flexeval grounding` end to end (scores independently recomputed, resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flexeval.analysis.attention import generate_answers
from flexeval.analysis.grounding import frame_attention, grounding_score, score_attention_file
from flexeval.cli import app
from flexeval.errors import FlexEvalError


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


def test_grounding_run_scores_and_resumes(release_dir, release_model, tmp_path):
    """Records hold the official score of the model's own map (recomputed here from attention_maps);
    a second run with a larger --limit runs only the new questions; the CSV is the per-layer mean."""
    from flexeval.analysis.grounding_run import GroundingConfig, run_grounding
    from flexeval.benchmarks import get_benchmark
    from flexeval.benchmarks.base import open_image

    gqa = get_benchmark("gqa")
    data = gqa.make_sample(tmp_path / "gqa", n=3)
    out = tmp_path / "g"
    cfg = dict(model=str(release_dir), data_dir=data, out=out, layers="7,9", dtype="float32", device="cpu",
               workers=0, quiet=True, batch_size="2", map_size=6, tag="tiny")
    first = run_grounding(GroundingConfig(limit=2, **cfg))
    assert first["timing"]["ran"] == 2
    second = run_grounding(GroundingConfig(**cfg))
    assert second["timing"]["ran"] == 1
    records = [json.loads(x) for x in (out / "tiny" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [s.id for s in gqa.load(data)]
    questions = json.loads((data / "val_balanced_questions.json").read_text())
    scenes = json.loads((data / "val_sceneGraphs.json").read_text())
    s = gqa.load(data)[2]
    prompt = gqa.request(s, "paper").prompt
    pil = open_image(s.image)
    im = release_model.preprocess(pil)
    gen = generate_answers(release_model, [prompt], [im], 16)[0]
    maps = release_model.attention_maps([prompt], [im], [gen.token_ids[:1]], [7, 9])[0]
    q = questions[s.id]
    for layer in (7, 9):
        m = maps.maps[layer].reshape(24, 24).numpy().astype(np.float64)
        want = grounding_score(q, scenes[q["imageId"]], frame_attention(torch.from_numpy(m).flatten(), pil.size, 6))
        assert records[2]["scores"][str(layer)] == pytest.approx(want, rel=1e-4)
    rows = (out / "grounding.csv").read_text().splitlines()
    assert rows[0] == "model,layer,score,n,query_row,map_size,kind"
    mean7 = 100 * np.mean([r["scores"]["7"] for r in records])
    assert rows[1].split(",")[:2] == ["tiny", "7"] and float(rows[1].split(",")[2]) == pytest.approx(mean7, abs=1e-4)
    assert rows[1].split(",")[3] == "3"
    assert (out / "grounding.png").stat().st_size > 0
