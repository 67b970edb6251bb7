"""The official GQA eval.py on flexeval's attention files: an independent transcription of its grounding
score (written here, reading the files `flexeval grounding` writes) gives grounding.csv's row; the GQA
loader at size (one question at a time, slim questions, both splits)."""

from __future__ import annotations

import csv
import json

import pytest

from flexeval.errors import FlexEvalError


class OfficialGrounding:
    """GQA's eval.py, grounding part, transcribed from the official script (spatial features)."""

    def __init__(self, map_size: int):
        self.map_size = map_size

    def get_cell(self, i, j):
        edge = float(1) / self.map_size
        return (edge * i, edge * j, edge * (i + 1), edge * (j + 1))

    @staticmethod
    def intersection(r1, r2):
        ir = (max(r1[0], r2[0]), min(r1[1], r2[1]))
        return ir if ir[1] > ir[0] else None

    def intersection_rate(self, c1, c2):
        def length(r):
            return 0 if r is None else float(r[1] - r[0])

        inter = (length(self.intersection((c1[0], c1[2]), (c2[0], c2[2])))
                 * length(self.intersection((c1[1], c1[3]), (c2[1], c2[3]))))
        return float(inter) / (length((c1[0], c1[2])) * length((c1[1], c1[3])))

    @staticmethod
    def get_region(scene, object_id):
        obj = scene["objects"][object_id]
        return (float(obj["x"]) / scene["width"], float(obj["y"]) / scene["height"],
                float(obj["x"] + obj["w"]) / scene["width"], float(obj["y"] + obj["h"]) / scene["height"])

    def question_score(self, question, scene, attention_map):
        regions = [self.get_region(scene, p) for p in question["annotations"]["question"].values()]
        regions += [self.get_region(scene, p) for p in question["annotations"]["fullAnswer"].values()]
        if any(("scene" in c) for c in question["semantic"]):
            regions.append((0, 0, 1, 1))
        cells = [(self.get_cell(i, j), attention_map[i][j]) for i in range(self.map_size) for j in range(self.map_size)]
        return sum(att * self.intersection_rate(cell, region) for region in regions for cell, att in cells)

    def score_files(self, questions_path, scenes_path, attentions_path) -> float:
        questions = json.loads(questions_path.read_text())
        scenes = json.loads(scenes_path.read_text())
        attentions = {a["questionId"]: a["attention"] for a in json.loads(attentions_path.read_text())}
        scores = [self.question_score(q, scenes[q["imageId"]], attentions[qid])
                  for qid, q in questions.items() if q["isBalanced"]]
        return sum(scores) / len(scores) * 100


def test_attention_files_score_like_grounding_csv(release_dir, tmp_path):
    from flexeval.analysis.grounding_run import GroundingConfig, run_grounding
    from flexeval.benchmarks import get_benchmark

    data = get_benchmark("gqa").make_sample(tmp_path / "gqa", n=4)
    qpath = data / "val_balanced_questions.json"
    questions = json.loads(qpath.read_text())
    # a second region for one question (in `question` only) and an unbalanced question the script skips
    first = next(iter(questions))
    scene_objs = json.loads((data / "val_sceneGraphs.json").read_text())[questions[first]["imageId"]]["objects"]
    questions[first]["annotations"]["question"]["5"] = list(scene_objs)[1]
    questions[list(questions)[-1]]["isBalanced"] = False
    qpath.write_text(json.dumps(questions))
    out = tmp_path / "g"
    summary = run_grounding(GroundingConfig(model=str(release_dir), data_dir=data, out=out, layers="2,9",
                                            dtype="float32", device="cpu", workers=0, quiet=True, batch_size="2",
                                            tag="tiny"))
    assert summary["map_size"] == 7 and summary["token"] == "answer"
    rows = list(csv.DictReader((out / "grounding.csv").open()))
    assert [(r["layer"], r["query_row"], r["map_size"], r["n"]) for r in rows] == [("2", "answer", "7", "3"),
                                                                                ("9", "answer", "7", "3")]
    official = OfficialGrounding(7)
    scores = []
    for r in rows:
        path = out / "tiny" / "attentions" / f"layer{r['layer']}.json"
        entries = json.loads(path.read_text())
        assert [e["questionId"] for e in entries] == [q for q in questions if questions[q]["isBalanced"]]
        assert all(len(e["attention"]) == 7 and all(len(c) == 7 for c in e["attention"]) for e in entries)
        assert abs(sum(map(sum, entries[0]["attention"])) - 1) < 1e-3  # a normalised map, not zeros
        scores.append(official.score_files(qpath, data / "val_sceneGraphs.json", path))
        assert scores[-1] == pytest.approx(float(r["score"]), abs=6e-5)  # the CSV keeps 4 decimals
    assert scores[0] != pytest.approx(scores[1], abs=1e-3)  # the two layers' maps really differ
    preds = json.loads((out / "tiny" / "val_predictions.json").read_text())
    assert [p["questionId"] for p in preds] == [e["questionId"] for e in entries]


def test_iter_json_object_and_slim_questions(tmp_path):
    from flexeval.benchmarks.gqa import iter_json_object, load_questions

    q = {"imageId": "n1", "question": "Is it?", "answer": "no", "isBalanced": True, "types": {"a": 1},
         "annotations": {"question": {"2": "7"}, "answer": {}, "fullAnswer": {}},
         "semantic": [{"operation": "select", "dependencies": [], "argument": "scene"}], "entailed": ["x"] * 50}
    text = '  {\n "q1" : ' + json.dumps(q) + ' ,\n"q2":' + json.dumps({**q, "isBalanced": False}) + "}\n"
    (tmp_path / "q.json").write_text(text)
    assert [k for k, _ in iter_json_object(tmp_path / "q.json")] == ["q1", "q2"]
    got = load_questions(tmp_path / "q.json")
    assert list(got) == ["q1"] and "entailed" not in got["q1"] and got["q1"]["annotations"]["question"] == {"2": "7"}
    # the official `"scene" in c` is a key test on the step dict: false here although the argument says scene
    assert not any(("scene" in c) for c in got["q1"]["semantic"])
    (tmp_path / "bad.json").write_text('{"q1": {"imageId": 1,, }')
    with pytest.raises(FlexEvalError, match="bad.json is not valid JSON"):
        load_questions(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FlexEvalError, match="list.json: expected a JSON object"):
        load_questions(tmp_path / "list.json")


def test_gqa_splits(tmp_path):
    from flexeval.benchmarks import get_benchmark

    gqa = get_benchmark("gqa")
    d = gqa.make_sample(tmp_path / "gqa", n=3)
    val, testdev = gqa.load(d), gqa.load(d, split="testdev")
    assert [s.subset for s in val] == ["val_balanced"] * 3 and [s.subset for s in testdev] == ["testdev_balanced"] * 3
    assert [s.id for s in testdev] == [f"t{s.id}" for s in val] and all(s.image for s in testdev)
    assert gqa.count_report(testdev)["mismatch"] == {"testdev_balanced": {"expected": 12578, "loaded": 3}}
    with pytest.raises(FlexEvalError, match="choose one of val_balanced, testdev_balanced"):
        gqa.load(d, split="train")


def test_fig2_from_two_runs_files(tmp_path):
    """`flexeval grounding --from A --from B`: one curve per run's grounding.json, query row and M per row."""
    from typer.testing import CliRunner

    from flexeval.cli import app

    for name, kind, token, base in (("llava", "llava-1.5", "answer", 20.0), ("flex", "flexattention", "prompt-end", 30.0)):
        (tmp_path / name / "m").mkdir(parents=True)
        summary = {"model": f"{name}-7b", "kind": kind, "select_layer": 8 if kind == "flexattention" else None,
                   "token": token, "map_size": 7, "layers": [{"layer": k, "score": base + k, "n": 5} for k in range(3)]}
        (tmp_path / name / "m" / "grounding.json").write_text(json.dumps(summary))
    res = CliRunner().invoke(app, ["grounding", "--from", str(tmp_path / "llava"), "--from",
                                   str(tmp_path / "flex" / "m" / "grounding.json"), "--out", str(tmp_path / "fig")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "fig" / "grounding.csv").open()))
    assert [(r["model"], r["layer"], float(r["score"]), r["query_row"], r["kind"]) for r in rows] == [
        ("llava-7b", "0", 20.0, "answer", "llava-1.5"), ("llava-7b", "1", 21.0, "answer", "llava-1.5"),
        ("llava-7b", "2", 22.0, "answer", "llava-1.5"), ("flex-7b", "0", 30.0, "prompt-end", "flexattention"),
        ("flex-7b", "1", 31.0, "prompt-end", "flexattention"), ("flex-7b", "2", 32.0, "prompt-end", "flexattention")]
    assert (tmp_path / "fig" / "grounding.png").stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["grounding", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "fig")])
    assert bad.exit_code == 1 and "no grounding.json there" in bad.output


def test_one_command_two_models(release_dir, llava_dir, tmp_path):
    """`--model A --model B`: one folder and one curve each in the same grounding.csv / Fig. 2."""
    from typer.testing import CliRunner

    from flexeval.benchmarks import get_benchmark
    from flexeval.cli import app

    data = get_benchmark("gqa").make_sample(tmp_path / "gqa", n=2)
    res = CliRunner().invoke(app, ["grounding", "--model", str(release_dir), "--model", str(llava_dir), "--data-dir",
                                   str(data), "--layers", "9", "--out", str(tmp_path / "g"), "--dtype", "float32",
                                   "--device", "cpu", "--workers", "0", "--quiet", "--token", "prompt-end"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "g" / "grounding.csv").open()))
    assert sorted(r["kind"] for r in rows) == ["flexattention", "llava-1.5"]
    assert {(r["layer"], r["query_row"], r["map_size"], r["n"]) for r in rows} == {("9", "prompt-end", "7", "2")}
    for r in rows:
        assert (tmp_path / "g" / r["model"] / "attentions" / "layer9.json").is_file()
