"""Bad data meets a clear error before the model loads, or a counted row: V* options and orphan images,
TextVQA repeated ids, empty datasets, a --tag escaping --out, the image pixel limit, `run --check`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from flexeval.benchmarks import get_benchmark
from flexeval.benchmarks.base import DEFAULT_MAX_IMAGE_PIXELS, image_header_problem, open_image
from flexeval.checks import check_samples, check_tag
from flexeval.cli import app
from flexeval.errors import FlexEvalError


@pytest.fixture(scope="module")
def vstar_data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-clean"), n=2, seed=3)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def _set_options(js: Path, options) -> None:
    item = json.loads(js.read_text())
    item["options"] = options
    js.write_text(json.dumps(item))


@pytest.mark.parametrize("options, says", [
    ([], "field 'options' must be a list of >= 2 strings"),
    (["red", ""], "options[1] = '' is not a non-empty string"),
    (["red", "blue", "red"], "options[2] = 'red' repeats options[0]"),
    (["red", 7], "options[1] = 7 is not a non-empty string"),
])
def test_vstar_bad_options_are_refused_naming_file_and_field(vstar_data, tmp_path, options, says):
    data = _copy(vstar_data, tmp_path)
    js = data / "direct_attributes" / "sa_1.json"
    _set_options(js, options)
    with pytest.raises(FlexEvalError) as e:
        get_benchmark("vstar").load(data)
    assert str(js) in str(e.value) and says in str(e.value) and "restore the release file" in str(e.value)


def test_vstar_lists_every_broken_item_and_orphan_image_at_once(vstar_data, tmp_path):
    data = _copy(vstar_data, tmp_path)
    _set_options(data / "direct_attributes" / "sa_1.json", ["a", "a"])
    _set_options(data / "relative_position" / "sa_4.json", ["only one"])
    orphan = data / "relative_position" / "sa_99.png"
    Image.new("RGB", (8, 8)).save(orphan)
    with pytest.raises(FlexEvalError) as e:
        get_benchmark("vstar").load(data)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "sa_1.json" in msg and "sa_4.json" in msg
    assert f"{orphan}: an image without its JSON (sa_99.json)" in msg


def _textvqa(tmp_path, edit) -> Path:
    data = get_benchmark("textvqa").make_sample(tmp_path / "tv", n=4, seed=0)
    path = data / "TextVQA_0.5.1_val.json"
    doc = json.loads(path.read_text())
    edit(doc["data"])
    path.write_text(json.dumps(doc))
    return data


def test_textvqa_repeated_question_id_is_refused(tmp_path):
    def repeat_id(entries):
        entries[2]["question_id"] = entries[0]["question_id"]

    data = _textvqa(tmp_path, repeat_id)
    with pytest.raises(FlexEvalError) as e:
        get_benchmark("textvqa").load(data)
    qid = json.loads((data / "TextVQA_0.5.1_val.json").read_text())["data"][0]["question_id"]
    assert f"question_id {qid} (items 0 and 2)" in str(e.value) and "TextVQA_0.5.1_val.json" in str(e.value)


def test_textvqa_identical_items_are_an_error_not_a_store_traceback(tmp_path):
    data = _textvqa(tmp_path, lambda entries: entries.append(dict(entries[1])))
    r = CliRunner().invoke(app, ["run", "-b", "textvqa", "-d", str(data), "-m", str(tmp_path / "no-model"),
                                 "--check", "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "repeated question_id" in r.output and "Traceback" not in r.output
    assert "(items 1 and 4)" in r.output


def test_check_samples_refuses_empty_and_repeated_ids():
    from flexeval.benchmarks.base import Sample

    with pytest.raises(FlexEvalError, match="0 items found in /d"):
        check_samples("vstar", [], Path("/d"))
    s = Sample(id="a", subset="x", question="q", image=None, target="t")
    with pytest.raises(FlexEvalError, match=r"'a' \(items 0 and 2\)"):
        check_samples("vstar", [s, Sample(id="b", subset="x", question="q", image=None, target="t"), s], Path("/d"))


def test_empty_vstar_dataset_is_an_error_not_an_empty_table(tmp_path):
    for s in ("direct_attributes", "relative_position"):
        (tmp_path / "vstar" / s).mkdir(parents=True)
    r = CliRunner().invoke(app, ["run", "-b", "vstar", "-d", str(tmp_path / "vstar"), "-m", str(tmp_path / "m"),
                                 "--check", "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "vstar: 0 items found in" in r.output


@pytest.mark.parametrize("tag", ["../../x", "a/b", "..", ".hidden", "", "/abs"])
def test_a_tag_that_is_not_one_folder_name_is_refused(tag):
    with pytest.raises(FlexEvalError, match="is not a plain folder name"):
        check_tag(tag)


def test_tag_escape_is_refused_before_anything_is_written(tmp_path, vstar_data):
    out = tmp_path / "deep" / "out"
    r = CliRunner().invoke(app, ["run", "-b", "vstar", "-d", str(vstar_data), "-m", str(tmp_path / "none"),
                                 "--out", str(out), "--tag", "../../x"])
    assert r.exit_code == 1 and "--tag '../../x' is not a plain folder name" in r.output
    assert not (tmp_path / "x").exists() and not out.exists()


def test_image_over_the_pixel_limit_is_refused_with_its_size(tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (20000, 20000)).save(big)  # 400 Mpx, a few kB on disk
    with pytest.raises(FlexEvalError) as e:
        open_image(str(big), where="vstar/sa_1")
    assert DEFAULT_MAX_IMAGE_PIXELS == 40_000_000
    assert "vstar/sa_1 is 20000x20000 = 400.0 Mpx, over the limit of 40 Mpx" in str(e.value)
    assert "--max-image-pixels" in str(e.value)
    # the real V* maximum (5759x1440) is under the default; the limit is configurable both ways
    real = tmp_path / "real.png"
    Image.new("1", (5759, 1440)).save(real)
    assert open_image(str(real)).size == (5759, 1440)
    with pytest.raises(FlexEvalError, match="over the limit of 8 Mpx"):
        open_image(str(real), max_pixels=8_000_000)
    assert image_header_problem(str(big), max_pixels=400_000_000) is None  # (a 1.2 GB decode is not tested)


def test_check_lists_all_data_model_and_output_problems_at_once(vstar_data, release_dir, tmp_path):
    data = _copy(vstar_data, tmp_path)
    _set_options(data / "direct_attributes" / "sa_2.json", ["x", ""])
    Image.new("RGB", (4, 4)).save(data / "direct_attributes" / "lonely.jpg")
    model = tmp_path / "model"
    shutil.copytree(release_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["extra"]["zoom_ratio"] = "5"
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:5000])
    blocker = tmp_path / "out-is-a-file"
    blocker.write_text("")
    r = CliRunner().invoke(app, ["run", "--check", "-b", "vstar", "-d", str(data), "-m", str(model),
                                 "--out", str(blocker / "results")])
    assert r.exit_code == 1, r.output
    assert "options[1] = '' is not a non-empty string" in r.output
    assert "lonely.jpg: an image without its JSON" in r.output
    assert "extra.zoom_ratio = '5' is not supported" in r.output and "choose 2 or 3 or 4" in r.output
    assert "model.safetensors" in r.output and "cut off" in r.output
    assert "is not a folder; choose another --out" in r.output
    assert "4 problem(s):" in r.output  # the V* message holds both data problems
    assert "Traceback" not in r.output
