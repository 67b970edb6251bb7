"""accuracy.csv, rescoring from predictions.jsonl alone, the report with paper rows, `flexeval list`."""

from __future__ import annotations

import csv
import json

import pytest

from flexeval.benchmarks import get_benchmark, list_benchmarks
from flexeval.errors import FlexEvalError
from flexeval.results.report import list_benchmarks_table, write_report
from flexeval.results.scoring import rescore_tree, score_records


def vstar_record(stem: str, subset: str, options: list[str], prediction: str) -> dict:
    return {"key": f"{subset}/{stem}", "id": f"{subset}/{stem}", "subset": subset,
            "question": "What is it?", "target": options[0], "options": options,
            "prediction": prediction, "option_nll": [1.0 + 0.5 * i for i in range(len(options))]}


COLORS = ["red", "green", "blue", "yellow"]
SIDES = ["The cup is on the left side of the bag.", "The cup is on the right side of the bag."]
VSTAR_RECORDS = [
    vstar_record("sa_1", "direct_attributes", COLORS, "red"),          # right
    vstar_record("sa_2", "direct_attributes", COLORS, "green"),        # wrong
    vstar_record("sa_3", "direct_attributes", ["white"] + COLORS[:3], "white"),  # right
    vstar_record("sa_4", "relative_position", SIDES, SIDES[0]),        # right
    vstar_record("sa_5", "relative_position", SIDES, SIDES[1]),        # wrong
]


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_score_records_merges_scores_into_copies():
    scored, rows = score_records(get_benchmark("vstar"), VSTAR_RECORDS, None)
    assert [r["score"] for r in scored] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert "score" not in VSTAR_RECORDS[0]
    assert [(r["subset"], r["n"], r["correct"]) for r in rows] == [
        ("direct_attributes", 3, 2), ("relative_position", 2, 1), ("overall", 5, 3)]


def test_score_records_names_the_record_it_cannot_score():
    bad = [{k: v for k, v in VSTAR_RECORDS[0].items() if k != "prediction"}]
    with pytest.raises(FlexEvalError, match="direct_attributes/sa_1"):
        score_records(get_benchmark("vstar"), bad, "paper", where="x/predictions.jsonl")


def test_rescore_vstar_by_hand(tmp_path, capsys):
    bench_dir = tmp_path / "results" / "tiny" / "vstar"
    write_jsonl(bench_dir / "predictions.jsonl", VSTAR_RECORDS)
    (bench_dir / "run.json").write_text(json.dumps({"benchmark": "vstar", "protocol": "paper"}))
    before = (bench_dir / "predictions.jsonl").read_bytes()

    written = rescore_tree(tmp_path / "results")  # found below the root
    assert written == [bench_dir / "accuracy.csv"]
    # 2/3 attribute, 1/2 spatial, 3/5 overall. Standard errors sqrt(var_ddof1 / n): [1,1,0] -> sqrt((1/3)/3)
    # = 1/3; [1,0] -> sqrt(0.5/2) = 0.5; [1,0,1,1,0] -> sqrt(0.3/5) = 0.24495. Bootstrap 2.5/97.5% points:
    # [1,1,0]: P(all 0) = 1/27 > 2.5% and P(all 1) = 8/27 > 2.5% -> [0, 100]; [1,0] likewise [0, 100];
    # overall: resampled right answers k ~ Bin(5, 0.6), P(k <= 0) = 1.0% < 2.5% < P(k <= 1) = 8.7%, and
    # P(k = 5) = 7.8% > 2.5% -> [20, 100].
    assert (bench_dir / "accuracy.csv").read_text() == (
        "benchmark,subset,n,correct,accuracy,stderr,ci95_low,ci95_high\n"
        "vstar,direct_attributes,3,2,66.6667,33.3333,0.0000,100.0000\n"
        "vstar,relative_position,2,1,50.0000,50.0000,0.0000,100.0000\n"
        "vstar,overall,5,3,60.0000,24.4949,20.0000,100.0000\n"
    )
    assert (bench_dir / "predictions.jsonl").read_bytes() == before  # the raw store is not rewritten
    assert "66.67" in capsys.readouterr().out


def test_rescore_without_run_json_uses_folder_name(tmp_path):
    bench_dir = tmp_path / "vstar"
    write_jsonl(bench_dir / "predictions.jsonl", VSTAR_RECORDS[3:])
    assert rescore_tree(bench_dir, echo=None) == [bench_dir / "accuracy.csv"]
    assert "vstar,overall,2,1,50.0000" in (bench_dir / "accuracy.csv").read_text()


def test_rescore_nothing_there(tmp_path):
    with pytest.raises(FlexEvalError, match="flexeval run"):
        rescore_tree(tmp_path)


def write_result(root, tag, kind, bench, rows, protocol="paper"):
    d = root / tag / bench
    d.mkdir(parents=True)
    text = "benchmark,subset,n,correct,accuracy\n" + "".join(
        f"{bench},{s},{n},{c},{100 * c / n:.4f}\n" for s, n, c in rows)
    (d / "accuracy.csv").write_text(text)
    (d / "run.json").write_text(json.dumps({"benchmark": bench, "protocol": protocol,
                                            "model": {"kind": kind, "path": "x"}}))


def md_rows(md: str) -> dict[str, list[str]]:
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| Model"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_write_report(tmp_path):
    write_result(tmp_path, "flex-7b", "flexattention", "vstar",
                 [("direct_attributes", 115, 60), ("relative_position", 76, 50), ("overall", 191, 110)])
    write_result(tmp_path, "flex-7b", "flexattention", "rsvqa_hrben",
                 [("presence", 100, 80), ("comparison", 100, 70), ("average", 200, 150), ("overall", 200, 150)])
    write_result(tmp_path, "llava-7b", "llava-1.5", "magnifierbench", [("overall", 283, 70)])
    write_result(tmp_path, "llava-7b", "llava-1.5", "textvqa", [("overall", 5000, 2345.3)])

    md = write_report(tmp_path)
    assert (tmp_path / "summary.md").read_text() == md

    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["model", "benchmark", "subset", "n", "correct", "accuracy", "stderr", "ci95_low", "ci95_high"]
    # these accuracy.csv files are in the older five-column format: no intervals, reported as nan
    assert all(r[6:] == ["nan", "nan", "nan"] for r in rows[1:])
    assert [r[:6] for r in rows[1:]] == [
        ["flex-7b", "vstar", "direct_attributes", "115", "60", "52.1739"],
        ["flex-7b", "vstar", "relative_position", "76", "50", "65.7895"],
        ["flex-7b", "vstar", "overall", "191", "110", "57.5916"],
        ["flex-7b", "rsvqa_hrben", "presence", "100", "80", "80.0000"],
        ["flex-7b", "rsvqa_hrben", "comparison", "100", "70", "70.0000"],
        ["flex-7b", "rsvqa_hrben", "average", "200", "150", "75.0000"],
        ["flex-7b", "rsvqa_hrben", "overall", "200", "150", "75.0000"],
        ["llava-7b", "magnifierbench", "overall", "283", "70", "24.7350"],
        ["llava-7b", "textvqa", "overall", "5000", "2345.3", "46.9060"],
    ]

    t = md_rows(md)
    # columns: V* attribute, spatial, overall, MagnifierBench, TextVQA, RSVQA presence, comparison, average
    assert t["paper: LLaVA-1.5-7B"] == ["41.7*", "56.6", "47.6", "26.8", "46.0", "–", "–", "68.4"]
    assert t["paper: FlexAttention-7B"] == ["47.8*", "64.5", "54.5", "35.0", "48.9", "–", "–", "72.7"]
    assert t["flex-7b (flexattention)"] == ["52.2", "65.8", "57.6", "–", "–", "80.0", "70.0", "75.0"]
    # 52.17-47.83, 65.79-64.5, 57.59-54.5, 75.0-72.7
    assert t["Δ flex-7b − paper: FlexAttention-7B"] == ["+4.3", "+1.3", "+3.1", "–", "–", "–", "–", "+2.3"]
    assert t["llava-7b (llava-1.5)"] == ["–", "–", "–", "24.7", "46.9", "–", "–", "–"]
    # 24.735-26.8, 46.906-46.0
    assert t["Δ llava-7b − paper: LLaVA-1.5-7B"] == ["–", "–", "–", "-2.1", "+0.9", "–", "–", "–"]
    assert "derived" in md


def test_write_report_without_results(tmp_path):
    with pytest.raises(FlexEvalError, match="flexeval run"):
        write_report(tmp_path)


def test_list_benchmarks_table(tmp_path):
    get_benchmark("vstar").make_sample(tmp_path / "vstar", n=2)
    text = list_benchmarks_table(tmp_path)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["benchmark", "folder", "present", "items", "published"]
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert set(by_name) == {b.name for b in list_benchmarks()}
    vstar = by_name["vstar"].split()
    assert vstar[1:5] == [str(tmp_path / "vstar"), "yes", "4", "191"]
    assert vstar[5:7] == ["paper,official,letter", "release,native"]  # protocols (default first), recipes
    assert by_name["rsvqa_hrben"].split()[-2:] == ["paper,lenient", "release,native"]
    for name, line in by_name.items():
        if name != "vstar":
            assert "missing" in line and " no " in line
