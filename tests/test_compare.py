"""`flexeval compare`: paired differences, flipped items, items in one run only; by hand."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.cli import app
from flexeval.errors import FlexEvalError
from flexeval.results.compare import compare_records, compare_runs

COLORS = ["red", "green", "blue", "yellow"]
SIDES = ["left", "right"]


def vstar(stem, subset, right: bool):
    options = COLORS if subset == "direct_attributes" else SIDES
    return {"key": stem, "id": f"{subset}/{stem}", "subset": subset, "question": "Q?", "target": options[0],
            "options": options, "prediction": options[0] if right else options[1], "meta": {}}


# A: sa_1 right, sa_2 wrong, sa_3 right | sa_4 right, sa_5 wrong | sa_6 (only in A)
RUN_A = [vstar("sa_1", "direct_attributes", True), vstar("sa_2", "direct_attributes", False),
         vstar("sa_3", "direct_attributes", True), vstar("sa_4", "relative_position", True),
         vstar("sa_5", "relative_position", False), vstar("sa_6", "relative_position", True)]
# B: sa_1 wrong (down), sa_2 right (up), sa_3 right | sa_4 right, sa_5 right (up) | sa_7 (only in B)
RUN_B = [vstar("sa_7", "direct_attributes", True), vstar("sa_1", "direct_attributes", False),
         vstar("sa_2", "direct_attributes", True), vstar("sa_3", "direct_attributes", True),
         vstar("sa_4", "relative_position", True), vstar("sa_5", "relative_position", True)]


def write_run(folder, records, bench="vstar", protocol="paper"):
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "run.json").write_text(json.dumps({"benchmark": bench, "protocol": protocol}))
    return folder


def test_compare_two_vstar_runs_by_hand(tmp_path):
    a = write_run(tmp_path / "a" / "vstar", RUN_A)
    b = write_run(tmp_path / "b" / "vstar", RUN_B)
    (bc,) = compare_runs(a, b).benches
    assert bc.n_shared == 5
    assert bc.only_a == ["relative_position/sa_6"] and bc.only_b == ["direct_attributes/sa_7"]
    rows = {r.subset: r for r in bc.rows}
    assert list(rows) == ["direct_attributes", "relative_position", "overall"]
    # attribute: A [1,0,1], B [0,1,1]: 66.67 both, differences [-1, 1, 0]: stderr sqrt(1 / 3) (variance 1)
    att = rows["direct_attributes"]
    assert (att.accuracy_a, att.accuracy_b) == (pytest.approx(200 / 3), pytest.approx(200 / 3))
    assert att.difference.estimate == pytest.approx(0.0)
    assert att.difference.stderr == pytest.approx(100 * math.sqrt(1 / 3))
    assert (att.up, att.down) == (1, 1)
    # spatial: A [1,0], B [1,1]: +50, differences [0, 1]: stderr sqrt(0.5 / 2) = 0.5
    sp = rows["relative_position"]
    assert sp.difference.estimate == pytest.approx(50.0) and sp.difference.stderr == pytest.approx(50.0)
    assert (sp.up, sp.down) == (1, 0)
    # overall: 60 -> 80, differences [-1, 1, 0, 0, 1]: mean 0.2, variance 2.8 / 4 = 0.7, stderr sqrt(0.7 / 5)
    ov = rows["overall"]
    assert (ov.accuracy_a, ov.accuracy_b, ov.n) == (pytest.approx(60.0), pytest.approx(80.0), 5)
    assert ov.difference.stderr == pytest.approx(100 * math.sqrt(0.7 / 5))
    # A replicate draws 5 of the differences [-1, 1, 0, 0, 1]: 20 points x (ups - downs). Enumerating the
    # 5^5 draws: P(<= -60) = 1.95% < 2.5% < P(<= -40) = 7.07%, P(<= 60) = 93.9% < 97.5% < P(<= 80) = 99.0%,
    # so the exact bootstrap quantiles are -40 and +80 (1000 replicates land there, margins are wide).
    assert (ov.difference.low, ov.difference.high) == (pytest.approx(-40.0), pytest.approx(80.0))
    flips = {f["id"]: (f["score_a"], f["score_b"]) for f in bc.flipped}
    assert flips == {"direct_attributes/sa_1": (1.0, 0.0), "direct_attributes/sa_2": (0.0, 1.0),
                     "relative_position/sa_5": (0.0, 1.0)}


def test_rsvqa_average_difference_is_the_mean_of_the_subset_differences():
    bench = get_benchmark("rsvqa_hrben")

    def recs(scores):
        return [{"id": str(i), "subset": sub, "target": "yes", "score": float(x)}
                for i, (sub, x) in enumerate(scores)]

    a = recs([("presence", 1), ("presence", 0), ("comparison", 0), ("comparison", 0), ("comparison", 1)])
    b = recs([("presence", 1), ("presence", 1), ("comparison", 0), ("comparison", 1), ("comparison", 1)])
    bc = compare_records(bench, a, b, "paper", "paper")
    rows = {r.subset: r for r in bc.rows}
    assert rows["presence"].difference.estimate == pytest.approx(50.0)
    assert rows["comparison"].difference.estimate == pytest.approx(100 / 3)
    assert rows["average"].difference.estimate == pytest.approx((50 + 100 / 3) / 2)
    # stratified: differences [0, 1] (stderr 0.5) and [0, 1, 0] (stderr sqrt(1/3 / 3) = 1/3)
    assert rows["average"].difference.stderr == pytest.approx(100 * math.sqrt(0.25 + 1 / 9) / 2)
    assert [r.subset for r in bc.rows] == ["presence", "comparison", "overall", "average"]


def test_same_id_other_target_is_an_error(tmp_path):
    changed = [dict(r) for r in RUN_B]
    changed[1] = {**changed[1], "target": "purple", "options": ["purple", *COLORS[1:]]}
    a = write_run(tmp_path / "a" / "vstar", RUN_A)
    b = write_run(tmp_path / "b" / "vstar", changed)
    with pytest.raises(FlexEvalError, match="direct_attributes/sa_1.*different data"):
        compare_runs(a, b)


def test_tag_folders_compare_shared_benchmarks_and_name_the_rest(tmp_path):
    write_run(tmp_path / "a" / "vstar", RUN_A)
    write_run(tmp_path / "b" / "vstar", RUN_B)
    rs = [{"key": "1", "id": "1", "subset": "presence", "target": "yes", "prediction": "yes", "meta": {}}]
    write_run(tmp_path / "a" / "rsvqa_hrben", rs, bench="rsvqa_hrben")
    c = compare_runs(tmp_path / "a", tmp_path / "b")
    assert [bc.benchmark for bc in c.benches] == ["vstar"]
    assert c.only_a == ["rsvqa_hrben"] and c.only_b == []


def test_cli_compare_text_and_json(tmp_path):
    a = write_run(tmp_path / "a" / "vstar", RUN_A)
    b = write_run(tmp_path / "b" / "vstar", RUN_B, protocol="official")
    cli = CliRunner()
    r = cli.invoke(app, ["compare", str(a), str(b)])
    assert r.exit_code == 0, r.output
    assert "flipped items (score differs): 3" in r.output and "protocol official" in r.output
    assert "only in A: 1 items" in r.output and "relative_position/sa_6" in r.output
    overall = next(line for line in r.output.splitlines() if line.startswith("overall"))
    assert overall.split()[:5] == ["overall", "5", "60.00", "80.00", "+20.00"]
    r = cli.invoke(app, ["compare", str(a), str(b), "--json"])
    data = json.loads(r.output)
    assert data["benches"][0]["rows"][2]["difference"]["estimate"] == pytest.approx(20.0)
    r = cli.invoke(app, ["compare", str(a), str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "not a folder" in r.output


def test_float_noise_is_not_a_flip_and_real_changes_are():
    """22 items differ as floats; 12 only by summation order (0.9 vs sum of ten 0.09 = 0.8999999999999998,
    1.0 vs 0.9999999999999999), 10 by a real change of the VQA score: 10 flips, 6 up and 4 down."""
    bench = get_benchmark("textvqa")
    noise_b = sum([0.09] * 10)
    assert noise_b != 0.9 and abs(noise_b - 0.9) < 1e-15  # the planted noise is real float noise
    pairs = [(0.9, noise_b)] * 8 + [(1.0, sum([0.1] * 10))] * 4  # noise only
    pairs += [(0.0, 0.3), (0.3, 0.6), (0.6, 0.9), (0.9, 1.0), (0.0, 1.0), (0.3, 1.0)]  # up
    pairs += [(1.0, 0.9), (0.6, 0.0), (0.9, 0.6), (0.3, 0.0)]  # down
    pairs += [(0.6, 0.6)] * 3  # identical

    def recs(side):
        return [{"id": f"q{k}", "subset": "val", "target": "x", "score": p[side]} for k, p in enumerate(pairs)]

    bc = compare_records(bench, recs(0), recs(1), "paper", "paper")
    assert sum(1 for a, b in pairs if a != b) == 22
    assert [f["id"] for f in bc.flipped] == [f"q{k}" for k in range(12, 22)]
    overall = next(r for r in bc.rows if r.subset == "overall")
    assert (overall.up, overall.down, overall.n) == (6, 4, 25)
    assert overall.difference.estimate == pytest.approx(100 * (0.3 * 3 + 0.1 + 1.0 + 0.7 - 0.1 - 0.6 - 0.3 - 0.3) / 25)
