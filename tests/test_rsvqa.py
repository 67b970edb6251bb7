"""RSVQA-HRBEN: join by id, active/type filtering, splits, strict vs lenient scoring, table, errors."""

import json

import pytest
from PIL import Image

from flexeval.benchmarks import get_benchmark
from flexeval.benchmarks.base import Sample
from flexeval.benchmarks.rsvqa import RSVQAHRBEN
from flexeval.errors import FlexEvalError

bench = RSVQAHRBEN()


def write_split(root, split, questions, answers):
    root.mkdir(parents=True, exist_ok=True)
    (root / f"USGS_split_{split}_questions.json").write_text(json.dumps({"questions": questions}))
    (root / f"USGS_split_{split}_answers.json").write_text(json.dumps({"answers": answers}))
    (root / f"USGS_split_{split}_images.json").write_text(json.dumps({"images": []}))


def hand_fixture(root):
    """Answers listed so a join by position is wrong: question 0 -> answer id 2, question 1 -> 0."""
    q = [
        {"id": 0, "img_id": 0, "type": "presence", "question": "Is there a road?", "answers_ids": [2], "active": True},
        {"id": 1, "img_id": 0, "type": "comp", "question": "Are there more roads than buildings?",
         "answers_ids": [0], "active": True},
        {"id": 2, "img_id": 1, "type": "count", "question": "How many roads are there?", "answers_ids": [1],
         "active": True},
        {"id": 3, "img_id": 1, "type": "presence", "question": "Is there a water area?", "answers_ids": [3],
         "active": False},
        {"id": 4, "img_id": 1, "type": "area", "question": "What is the area covered by roads?",
         "answers_ids": [4], "active": True},
    ]
    a = [
        {"id": 0, "question_id": 1, "answer": "no", "active": True},
        {"id": 1, "question_id": 2, "answer": "7", "active": True},
        {"id": 2, "question_id": 0, "answer": "yes", "active": True},
        {"id": 3, "question_id": 3, "answer": "yes", "active": False},
        {"id": 4, "question_id": 4, "answer": "12m2", "active": True},
    ]
    write_split(root, "test_phili", q, a)
    (root / "Data").mkdir(exist_ok=True)
    for i in (0, 1):
        Image.new("RGB", (512, 512), (i * 90, 120, 60)).save(root / "Data" / f"{i}.tif", format="TIFF")
    return q, a


def test_join_by_id_and_filtering(tmp_path):
    hand_fixture(tmp_path)
    samples = bench.load(tmp_path)
    # Only the active presence/comp questions 0 and 1; their answers come from ids 2 and 0
    # (a by-position join would give "no" and "7").
    assert [(s.id, s.subset, s.target) for s in samples] == [("0", "presence", "yes"), ("1", "comparison", "no")]
    assert samples[0].image == str(tmp_path / "Data" / "0.tif")
    assert samples[0].meta == {"type": "presence", "img_id": 0, "split": "test_phili"}


def test_answer_pointing_elsewhere_is_an_error(tmp_path):
    q, a = hand_fixture(tmp_path)
    q[0]["answers_ids"] = [99]
    write_split(tmp_path, "test_phili", q, a)
    with pytest.raises(FlexEvalError, match="answers_ids\\[0\\] = 99"):
        bench.load(tmp_path)


def test_sample_data_layout(tmp_path):
    bench.make_sample(tmp_path, n=4, seed=1)
    questions = json.loads((tmp_path / "USGS_split_test_phili_questions.json").read_text())["questions"]
    answers = json.loads((tmp_path / "USGS_split_test_phili_answers.json").read_text())["answers"]
    assert [q["id"] for q in questions] == list(range(len(questions)))  # list index == id
    assert [a["id"] for a in answers] == list(range(len(answers)))
    assert {q["type"] for q in questions} == {"presence", "comp", "count", "area"}
    assert any(not q["active"] for q in questions)
    assert all(q["answers_ids"][0] != q["id"] for q in questions)  # a position join is always wrong
    for split in ("train", "val", "test", "test_phili"):
        for part in ("questions", "answers", "images"):
            assert (tmp_path / f"USGS_split_{split}_{part}.json").is_file()
    img = Image.open(next((tmp_path / "Data").glob("*.tif")))
    assert img.format == "TIFF" and img.size == (512, 512) and img.mode == "RGB"


@pytest.mark.parametrize("split", [None, "test"])
def test_loader_on_sample_data(tmp_path, split):
    bench.make_sample(tmp_path, n=4, seed=1)
    name = split or "test_phili"
    questions = json.loads((tmp_path / f"USGS_split_{name}_questions.json").read_text())["questions"]
    answers = json.loads((tmp_path / f"USGS_split_{name}_answers.json").read_text())["answers"]
    # Expected answers through the OTHER side of the link (answer.question_id), not answers_ids.
    truth = {a["question_id"]: a["answer"] for a in answers}
    wanted = [q for q in questions if q["active"] and q["type"] in ("presence", "comp")]
    samples = bench.load(tmp_path, split=split)
    assert [s.id for s in samples] == [str(q["id"]) for q in wanted]  # release order
    assert [s.target for s in samples] == [truth[q["id"]] for q in wanted]
    assert sum(s.subset == "presence" for s in samples) == 4 and sum(s.subset == "comparison" for s in samples) == 4
    assert {s.meta["split"] for s in samples} == {name}
    positional = [answers[int(s.id)]["answer"] for s in samples]
    assert positional != [s.target for s in samples]


def test_splits_differ_and_count_report(tmp_path):
    bench.make_sample(tmp_path, n=3, seed=0)
    phili, test = bench.load(tmp_path), bench.load(tmp_path, split="test")
    assert not {s.id for s in phili} & {s.id for s in test}
    assert bench.count_report(phili)["expected"] == {"overall": 62554}
    assert bench.count_report(test)["expected"] == {"overall": 131468}
    assert bench.count_report(test)["mismatch"] == {"overall": {"expected": 131468, "loaded": 6}}
    with pytest.raises(FlexEvalError, match="no split 'dev'"):
        bench.load(tmp_path, split="dev")


def rec(prediction, target="yes", subset="presence"):
    return {"id": "1", "subset": subset, "question": "q", "target": target, "options": [],
            "prediction": prediction, "meta": {}}


@pytest.mark.parametrize("prediction, paper, lenient", [
    ("yes", 1.0, 1.0),
    (" Yes \n", 1.0, 1.0),     # surrounding whitespace stripped, case ignored
    ("YES", 1.0, 1.0),
    ("Yes.", 0.0, 1.0),        # trailing punctuation: wrong under paper, right under lenient
    ("yes!", 0.0, 1.0),
    ("Yes, there is.", 0.0, 0.0),
    ("no", 0.0, 0.0),
    (None, 0.0, 0.0),
])
def test_scoring(prediction, paper, lenient):
    assert bench.score(rec(prediction), "paper")["score"] == paper
    assert bench.score(rec(prediction), "lenient")["score"] == lenient


def test_table_average_row():
    # presence 2/3 = 66.6667, comparison 1/2 = 50: average = 58.3333 (not the micro 3/5 = 60).
    records = [rec("yes"), rec("yes"), rec("no"), rec("no", "no", "comparison"), rec("yes", "no", "comparison")]
    scored = [{**r, **bench.score(r, "paper")} for r in records]
    rows = bench.table(scored, "paper")
    assert [r["subset"] for r in rows] == ["presence", "comparison", "average", "overall"]
    presence, comparison, average, overall = rows
    assert (presence["n"], presence["correct"]) == (3, 2) and comparison["accuracy"] == 50.0
    assert average["n"] == 5 and average["correct"] == 3 and average["accuracy"] == pytest.approx(58.3333)
    assert overall["accuracy"] == 60.0


def test_prompt():
    s = Sample(id="1", subset="presence", question="Is there a road?", image=None, target="yes")
    req = bench.request(s, "paper")
    assert req.question == "Is there a road?\nAnswer the question using a single word or phrase."
    assert req.system is None  # LLaVA's own system line: the model's template supplies it
    assert req.max_new_tokens == 16


def test_missing_files(tmp_path):
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path)
    msg = str(e.value)
    assert "USGS_split_test_phili_questions.json" in msg and "Data/" in msg
    assert "flexeval data fetch --bench rsvqa_hrben" in msg


def test_missing_image(tmp_path):
    hand_fixture(tmp_path)
    (tmp_path / "Data" / "0.tif").unlink()
    with pytest.raises(FlexEvalError, match="0.tif"):
        bench.load(tmp_path)


def test_missing_field(tmp_path):
    q, a = hand_fixture(tmp_path)
    del q[1]["type"]
    write_split(tmp_path, "test_phili", q, a)
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path)
    assert "USGS_split_test_phili_questions.json" in str(e.value) and "'type'" in str(e.value)


def test_missing_answer_field(tmp_path):
    q, a = hand_fixture(tmp_path)
    del a[2]["answer"]
    write_split(tmp_path, "test_phili", q, a)
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path)
    assert "USGS_split_test_phili_answers.json" in str(e.value) and "'answer'" in str(e.value)


def test_fetch_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FlexEvalError) as e:
        bench.fetch(tmp_path / "r")
    msg = str(e.value)
    assert "6344367" in msg and "USGS_split_test_phili_questions.json" in msg and "Images.tar" in msg


def test_registry():
    for name in ("rsvqa_hrben", "rsvqa", "RSVQA-HRBEN", "hrben"):
        assert isinstance(get_benchmark(name), RSVQAHRBEN)
    assert bench.protocols == ("paper", "lenient")


def test_fetch_from_a_fake_zenodo(tmp_path, monkeypatch):
    """fetch() against a stand-in for the Zenodo API: lists the record, downloads the test JSONs
    and Images.tar (md5-checked), extracts Data/*.tif; the result loads. No network involved."""
    import hashlib
    import io
    import tarfile

    import flexeval.benchmarks.zenodo as zenodo

    src = tmp_path / "src"
    bench.make_sample(src, n=2, seed=0)
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tf:
        for tif in sorted((src / "Data").glob("*.tif")):
            tf.add(tif, arcname=f"Data/{tif.name}")
        tf.add(src / "USGS_split_val_images.json", arcname="Other/ignored.json")
    blobs = {"Images.tar": tar_buf.getvalue()}
    for path in src.glob("USGS_split_*.json"):
        blobs[path.name] = path.read_bytes()
    listing = {"files": [{"key": k, "size": len(v), "checksum": "md5:" + hashlib.md5(v).hexdigest(),
                          "links": {"self": f"https://zenodo.test/{k}"}} for k, v in blobs.items()]}
    fetched = []

    def fake_urlopen(url, timeout=None):
        if url.endswith("/records/6344367"):
            return io.BytesIO(json.dumps(listing).encode())
        key = url.rsplit("/", 1)[1]
        fetched.append(key)
        return io.BytesIO(blobs[key])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FLEXEVAL_OFFLINE", raising=False)
    monkeypatch.setattr(zenodo.urllib.request, "urlopen", fake_urlopen)
    out = tmp_path / "out"
    bench.fetch(out)
    assert sorted(fetched) == sorted(["Images.tar"] + [f"USGS_split_{s}_{p}.json" for s in ("test", "test_phili")
                                                         for p in ("questions", "answers", "images")])
    assert not (out / "Images.tar").exists() and not (out / "Other").exists()
    assert [s.target for s in bench.load(out)] == [s.target for s in bench.load(src)]
