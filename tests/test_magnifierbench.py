"""MagnifierBench: release parser quirks, both protocols, every loader layout, errors."""

import io
import json

import pytest
from PIL import Image

from flexeval.benchmarks import get_benchmark
from flexeval.benchmarks.base import ImageRef
from flexeval.benchmarks.magnifierbench import MagnifierBench, parse_choice, strict_choice
from flexeval.errors import FlexEvalError
from flexeval.model import FlexLlava

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
INSTRUCTION = "What color is the car? A. red, B. blue, C. green, D. white"
REFORMATTED = "What color is the car?\nA. red\nB. blue\nC. green\nD. white"

bench = MagnifierBench()


def _image_bytes(image):
    return image.read() if isinstance(image, ImageRef) else image


def record(prediction, target="C", n_images=1, question=INSTRUCTION):
    return {"id": "x", "subset": "test", "question": question, "target": target, "options": [],
            "prediction": prediction, "meta": {"n_images": n_images}}


@pytest.mark.parametrize("reply, parsed", [
    ("Answer: C", "A"),          # 'A' of "Answer" is found before 'C'
    ("The answer is B", "B"),
    ("The answer is B, not A", "B"),
    ("(C)", "C"),
    ("c", "C"),                  # no capital letter: the upper-cased fallback finds it
    ("none", "other"),           # N, O, N, E: no letter A-D anywhere
    ("", "other"),
])
def test_release_parser(reply, parsed):
    assert parse_choice(reply, REFORMATTED) == parsed


@pytest.mark.parametrize("reply, strict", [
    ("C", "C"), ("(C)", "C"), ("C.", "C"), ("[D]", "D"), (" B \n", "B"),
    ("c", None), ("Answer: C", None), ("CD", None), ("E", None),
])
def test_strict_parse(reply, strict):
    assert strict_choice(reply) == strict


def test_option_text_step_differs_between_protocols():
    # "green" has no letter A-D. Official: the option-text regex matches the comma-separated
    # instruction -> C. Paper: it runs on the reformatted text, never matches; "GREEN" has no A-D.
    assert bench.score(record("green"), "official")["parsed"] == "C"
    assert bench.score(record("green"), "official")["score"] == 1.0
    paper = bench.score(record("green"), "paper")
    assert paper["parsed"] == "other" and paper["score"] == 0.0
    # "blue" agrees: the paper fallback finds 'B' in "BLUE", the official option step finds "blue".
    assert bench.score(record("blue", "B"), "paper")["parsed"] == "B"
    assert bench.score(record("blue", "B"), "official")["parsed"] == "B"


def test_score_fields():
    assert bench.score(record("C"), "paper") == {"score": 1.0, "parsed": "C", "strict": "C", "strict_score": 1.0}
    assert bench.score(record("c"), "paper") == {"score": 1.0, "parsed": "C", "strict": None, "strict_score": 0.0}


def test_image_count_rules():
    # Paper: several images -> scored on the first; none -> wrong. Official: != 1 -> skipped, wrong.
    assert bench.score(record("C", n_images=2), "paper")["score"] == 1.0
    assert bench.score(record("C", n_images=2), "official") == {
        "score": 0.0, "parsed": "skipped", "strict": None, "strict_score": 0.0}
    assert bench.score(record(None, n_images=0), "paper")["score"] == 0.0
    assert bench.score(record("C", n_images=0), "official")["score"] == 0.0


def test_prompts():
    from flexeval.benchmarks.base import Sample

    s = Sample(id="1", subset="test", question=INSTRUCTION, image=None, target="C")
    paper = bench.request(s, "paper")
    assert paper.question == f"{REFORMATTED}\nAnswer with the option's letter from the given choices directly."
    assert FlexLlava.prompt_text(paper) == (f"{SYSTEM} USER: <image>\n{REFORMATTED}\n"
                            "Answer with the option's letter from the given choices directly. ASSISTANT:")
    assert paper.max_new_tokens == 512 and paper.image_mode == "pad"
    official = bench.request(s, "official")
    assert FlexLlava.prompt_text(official) == (f"{SYSTEM} USER: <image>\nAnswer with the option letter from the given "
                               f"choices directly. {INSTRUCTION} ASSISTANT:")
    assert official.image_mode == "crop"
    with pytest.raises(FlexEvalError, match="no protocol 'lenient'"):
        bench.request(s, "lenient")


def test_table_rows():
    records = [record("C"), record("c"), record("Answer: C"), record("green"), record("C", n_images=0)]
    # paper: C right, c right (fallback), "Answer: C" -> A wrong, green -> other wrong, no image wrong
    # strict: only "C" -> 1. Disagreements: c (C vs none), "Answer: C" (A vs none) -> 2 of 5.
    scored = [{**r, **bench.score(r, "paper")} for r in records]
    rows = bench.table(scored, "paper")
    assert [r["subset"] for r in rows] == ["test", "overall", "overall_strict", "parse_disagreements"]
    assert rows[1]["n"] == 5 and rows[1]["correct"] == 2 and rows[1]["accuracy"] == 40.0
    assert rows[2]["correct"] == 1 and rows[2]["accuracy"] == 20.0
    assert rows[3]["n"] == 5 and rows[3]["correct"] == 2 and rows[3]["accuracy"] == 40.0
    assert bench.table(records, "paper") == rows  # unscored records are scored on the fly


# ------------------------------------------------------------------------------------- loaders
@pytest.mark.parametrize("fmt", ["parquet", "disk", "mimicit"])
def test_loaders_on_sample_data(tmp_path, fmt):
    bench.make_sample(tmp_path, n=6, seed=3, fmt=fmt)
    samples = bench.load(tmp_path)
    assert [s.id for s in samples] == [f"magnifier_{i:04d}" for i in range(6)]
    assert [s.meta["n_images"] for s in samples] == [1, 2, 0, 1, 1, 1]
    assert samples[2].image is None
    for s in samples:
        assert s.subset == "test" and s.target in "ABCD"
        assert " A. " in s.question and ", D. " in s.question  # unformatted instruction
        if s.image is not None:
            assert isinstance(s.image, ImageRef if fmt == "parquet" else bytes)  # parquet: read lazily
            img = Image.open(io.BytesIO(_image_bytes(s.image)))
            assert img.format == "JPEG" and img.size[1] == 270


def test_layouts_hold_the_same_items(tmp_path):
    loaded, fingerprints = {}, {}
    for fmt in ("parquet", "disk", "mimicit"):
        bench.make_sample(tmp_path / fmt, n=5, seed=7, fmt=fmt)
        samples = bench.load(tmp_path / fmt)
        loaded[fmt] = [(s.id, s.question, s.target, _image_bytes(s.image), s.meta["n_images"]) for s in samples]
        fingerprints[fmt] = [s.fingerprint() for s in samples]
    assert loaded["parquet"] == loaded["disk"] == loaded["mimicit"]
    # the lazily read parquet image fingerprints like the bytes held by the save_to_disk loader
    assert fingerprints["parquet"] == fingerprints["disk"]


def test_parquet_layout_is_the_hub_one(tmp_path):
    import pyarrow.parquet as pq

    bench.make_sample(tmp_path, n=4, seed=0)
    table = pq.read_table(tmp_path / "data" / "test-00000-of-00001.parquet")
    assert table.column_names == ["id", "instruction", "images", "answer"]
    assert str(table.schema.field("images").type) == "list<element: struct<bytes: binary, path: string>>"
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["images"]["feature"]["_type"] == "Image"


def test_mimicit_layout(tmp_path):
    bench.make_sample(tmp_path, n=4, seed=0, fmt="mimicit")
    data = json.loads((tmp_path / "data_instructions.json").read_text())["data"]
    images = json.loads((tmp_path / "images.json").read_text())
    first = data["magnifier_0000"]
    assert set(first) == {"instruction", "answer", "image_ids", "rel_ins_ids"}
    assert first["image_ids"][0] in images and isinstance(images[first["image_ids"][0]], str)


def test_deterministic(tmp_path):
    a = bench.load(bench.make_sample(tmp_path / "a", n=4, seed=5))
    b = bench.load(bench.make_sample(tmp_path / "b", n=4, seed=5))
    assert [s.fingerprint() for s in a] == [s.fingerprint() for s in b]


# -------------------------------------------------------------------------------------- errors
def test_missing_folder(tmp_path):
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path / "nowhere")
    msg = str(e.value)
    assert "data/test-*.parquet" in msg and "data_instructions.json" in msg
    assert "flexeval data fetch --bench magnifierbench" in msg


def test_missing_images_json(tmp_path):
    bench.make_sample(tmp_path, n=2, seed=0, fmt="mimicit")
    (tmp_path / "images.json").unlink()
    with pytest.raises(FlexEvalError, match="images.json"):
        bench.load(tmp_path)


def test_missing_field_mimicit(tmp_path):
    bench.make_sample(tmp_path, n=2, seed=0, fmt="mimicit")
    path = tmp_path / "data_instructions.json"
    doc = json.loads(path.read_text())
    del doc["data"]["magnifier_0001"]["answer"]
    path.write_text(json.dumps(doc))
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path)
    assert "data_instructions.json" in str(e.value) and "'answer'" in str(e.value)


def test_missing_column_parquet(tmp_path):
    import pyarrow.parquet as pq

    bench.make_sample(tmp_path, n=2, seed=0)
    path = tmp_path / "data" / "test-00000-of-00001.parquet"
    pq.write_table(pq.read_table(path).drop(["instruction"]), path)
    with pytest.raises(FlexEvalError) as e:
        bench.load(tmp_path)
    assert "test-00000-of-00001.parquet" in str(e.value) and "'instruction'" in str(e.value)


def test_bad_json(tmp_path):
    bench.make_sample(tmp_path, n=2, seed=0, fmt="mimicit")
    (tmp_path / "data_instructions.json").write_text("{not json")
    with pytest.raises(FlexEvalError, match="data_instructions.json is not valid JSON"):
        bench.load(tmp_path)


def test_fetch_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FlexEvalError, match="Otter-AI/MagnifierBench"):
        bench.fetch(tmp_path / "mb")


def test_registry():
    assert isinstance(get_benchmark("MagnifierBench"), MagnifierBench)
    assert isinstance(get_benchmark("magnifier"), MagnifierBench)
    assert bench.expected_counts["overall"] == 283
