"""TextVQA: both release layouts, the OCR-free prompt, soft-score table, errors."""

import json

import pytest
from PIL import Image

from flexeval.benchmarks import get_benchmark
from flexeval.benchmarks.base import ImageRef, Sample
from flexeval.benchmarks.textvqa import TextVQA
from flexeval.errors import FlexEvalError
from flexeval.model import FlexLlava

bench = TextVQA()


def test_json_layout(tmp_path):
    bench.make_sample(tmp_path, n=7, seed=2)
    doc = json.loads((tmp_path / "TextVQA_0.5.1_val.json").read_text())
    samples = bench.load(tmp_path)
    assert [s.id for s in samples] == [str(34602 + i) for i in range(7)]
    for s, entry in zip(samples, doc["data"], strict=True):
        assert s.question == entry["question"] and s.target == entry["answers"] and len(s.target) == 10
        assert s.image == str(tmp_path / "train_images" / f"{entry['image_id']}.jpg")
        img = Image.open(s.image)
        assert img.format == "JPEG" and img.size == (320, 272)
    assert len({s.meta["image_id"] for s in samples}) < 7  # some images carry several questions


def test_parquet_layout_matches_json(tmp_path):
    bench.make_sample(tmp_path / "j", n=6, seed=4, fmt="json")
    bench.make_sample(tmp_path / "p", n=6, seed=4, fmt="parquet")
    assert (tmp_path / "p" / "data" / "validation-00000-of-00001.parquet").is_file()
    from_json, from_parquet = bench.load(tmp_path / "j"), bench.load(tmp_path / "p")
    assert [s.id for s in from_parquet] == [s.id for s in from_json]
    assert [s.target for s in from_parquet] == [s.target for s in from_json]
    for a, b in zip(from_json, from_parquet, strict=True):
        # parquet images stay in the file (read lazily) yet fingerprint like the file on disk
        assert isinstance(b.image, ImageRef) and b.image.read() == open(a.image, "rb").read()
        assert b.fingerprint() == a.fingerprint()
    # what every rank holds after loading: references, not the images (a rank reads only its own)
    import pickle

    image_bytes = sum(len(open(p, "rb").read()) for p in {s.image for s in from_json})
    assert sum(s.image.nbytes for s in from_parquet) >= image_bytes  # each parquet row embeds its image
    assert len(pickle.dumps(from_parquet)) < image_bytes / 5


def test_ocr_tokens_never_reach_the_prompt(tmp_path):
    import pyarrow.parquet as pq

    bench.make_sample(tmp_path, n=3, seed=0, fmt="parquet")
    assert "ocr_tokens" in pq.read_table(tmp_path / "data" / "validation-00000-of-00001.parquet").column_names
    for s in bench.load(tmp_path):
        assert "SECRET_OCR_TOKEN" not in bench.request(s, "paper").question
        assert "SECRET_OCR_TOKEN" not in json.dumps(s.meta)


def test_prompt():
    s = Sample(id="1", subset="val", question="what brand is this?", image=None, target=["nokia"] * 10)
    req = bench.request(s, "paper")
    assert req.question == "what brand is this?\nAnswer the question using a single word or phrase."
    assert FlexLlava.prompt_text(req) == ("A chat between a curious human and an artificial intelligence assistant. The "
                          "assistant gives helpful, detailed, and polite answers to the human's questions. "
                          "USER: <image>\nwhat brand is this?\nAnswer the question using a single word or "
                          "phrase. ASSISTANT:")
    assert req.max_new_tokens == 64


def rec(prediction, answers):
    return {"id": "1", "subset": "val", "question": "q", "target": answers, "options": [],
            "prediction": prediction, "meta": {}}


def test_score_and_table():
    answers = ["nokia"] * 3 + ["coca cola"] * 7
    records = [rec(" The Nokia. ", answers),        # 3 matches -> 0.9
               rec("Coca-Cola", ["coca cola"] * 1 + ["x"] * 9),  # 1 match -> 0.3
               rec("coca cola", answers),           # 7 matches -> 1.0
               rec(None, answers)]                  # no reply -> 0
    scores = [bench.score(r, "paper")["score"] for r in records]
    assert scores == pytest.approx([0.9, 0.3, 1.0, 0.0])
    rows = bench.table([{**r, "score": x} for r, x in zip(records, scores, strict=True)], "paper")
    assert [r["subset"] for r in rows] == ["val", "overall"]
    assert rows[1]["n"] == 4 and rows[1]["correct"] == pytest.approx(2.2)
    assert rows[1]["accuracy"] == pytest.approx(55.0)


def test_missing_folder(tmp_path):
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path)
    msg = str(e.value)
    assert "TextVQA_0.5.1_val.json" in msg and "train_images" in msg and "validation-*.parquet" in msg
    assert "flexeval data fetch --bench textvqa" in msg


def test_missing_image(tmp_path):
    bench.make_sample(tmp_path, n=3, seed=0)
    victim = sorted((tmp_path / "train_images").glob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(FlexEvalError, match=victim.name):
        bench.load(tmp_path)


def test_missing_field(tmp_path):
    bench.make_sample(tmp_path, n=3, seed=0)
    path = tmp_path / "TextVQA_0.5.1_val.json"
    doc = json.loads(path.read_text())
    del doc["data"][1]["answers"]
    path.write_text(json.dumps(doc))
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path)
    assert "TextVQA_0.5.1_val.json" in str(e.value) and "'answers'" in str(e.value)


def test_bad_json(tmp_path):
    bench.make_sample(tmp_path, n=2, seed=0)
    (tmp_path / "TextVQA_0.5.1_val.json").write_text('{"data": [')
    with pytest.raises(FlexEvalError, match="TextVQA_0.5.1_val.json is not valid JSON"):
        bench.load(tmp_path)


def test_fetch_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FlexEvalError) as e:
        bench.fetch(tmp_path / "t")
    assert "lmms-lab/textvqa" in str(e.value) and "data/validation-*.parquet" in str(e.value)


def test_registry_and_counts():
    assert isinstance(get_benchmark("textvqa"), TextVQA)
    assert bench.expected_counts == {"val": 5000, "overall": 5000}
    assert bench.protocols == ("paper",)
