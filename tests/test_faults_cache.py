"""Issue 24, class 1: every setting that can change a record is part of its key or its folder, and a
skipped row is never a cached result (tiny release model, in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexeval.benchmarks import get_benchmark
from flexeval.evaluate import RunConfig, run_benchmarks


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-cache"), n=2, seed=3)


def _cfg(model, data, out, **kw) -> RunConfig:
    return RunConfig(bench="vstar", model=str(model), data_dir=data, out=out, workers=0, quiet=True,
                     batch_size=kw.pop("batch_size", "2"), **kw)


def _records(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]


def test_a_skipped_row_is_recomputed_by_the_rerun_its_message_recommends(release_dir, data, tmp_path, capfd):
    out = tmp_path / "out"
    first = run_benchmarks(_cfg(release_dir, data, out, tag="t", max_image_pixels=1000))[0]
    assert first["stats"]["skipped"] == 4
    assert "raise --max-image-pixels" in _records(out / "t" / "vstar")[0]["skipped"]
    capfd.readouterr()
    again = run_benchmarks(_cfg(release_dir, data, out, tag="t"))[0]  # the fix the message names
    assert "0 already done, 4 to run" in capfd.readouterr().err
    assert again["stats"]["skipped"] == 0 and again["timing"]["ran"] == 4
    recs = _records(out / "t" / "vstar")
    assert all(r["prediction"] in r["options"] and "skipped" not in r for r in recs)
    # The computed records now win over the skipped ones still in the shard: a third run reuses all.
    third = run_benchmarks(_cfg(release_dir, data, out, tag="t"))[0]
    assert third["timing"]["ran"] == 0 and _records(out / "t" / "vstar") == recs
    # ... and the same bytes as a run that never skipped anything
    clean = tmp_path / "clean"
    run_benchmarks(_cfg(release_dir, data, clean, tag="t"))
    assert (clean / "t" / "vstar" / "predictions.jsonl").read_bytes() == \
        (out / "t" / "vstar" / "predictions.jsonl").read_bytes()


def test_random_selection_seeds_get_their_own_folders_and_other_selections_ignore_the_seed(release_dir, data,
                                                                                       tmp_path, capfd):
    out = tmp_path / "out"
    name = Path(release_dir).name
    runs = {seed: run_benchmarks(_cfg(release_dir, data, out, selection="random", seed=seed))[0] for seed in (0, 5)}
    assert runs[0]["model"]["tag"] == f"{name}-sel-random"
    assert runs[5]["model"]["tag"] == f"{name}-sel-random-seed5"
    assert runs[0]["config_fingerprint"] != runs[5]["config_fingerprint"]
    for seed in (0, 5):  # each folder keeps its own seed's records
        assert json.loads((out / runs[seed]["model"]["tag"] / "vstar" / "run.json").read_text())["model"][
            "options"]["seed"] == seed
    # the attention selection has no use for a seed: same folder, same cache, nothing recomputed
    a = run_benchmarks(_cfg(release_dir, data, out, seed=0))[0]
    b = run_benchmarks(_cfg(release_dir, data, out, seed=7))[0]
    assert a["model"]["tag"] == b["model"]["tag"] == name
    assert b["config_fingerprint"] == a["config_fingerprint"] and b["timing"]["ran"] == 0


def test_replacing_another_configurations_results_is_said(release_dir, data, tmp_path, capfd):
    out = tmp_path / "out"
    run_benchmarks(_cfg(release_dir, data, out, tag="t", dtype="float32"))
    capfd.readouterr()
    run_benchmarks(_cfg(release_dir, data, out, tag="t", dtype="bfloat16"))
    err = capfd.readouterr().err.replace("\n", "")
    assert "holds the results of another configuration" in err and "differs in dtype" in err
    run_benchmarks(_cfg(release_dir, data, out, tag="t", dtype="bfloat16"))  # the same again: no such line
    assert "another configuration" not in capfd.readouterr().err
