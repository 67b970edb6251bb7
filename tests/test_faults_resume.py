"""Issue 24, class 6: a batch torn by a kill or a full disk is computed again whole, in the composition
of the uninterrupted run (a batched forward's numerics depend on its batch), and skipped rows, which a
rerun computes again, take no model slot: the model sees the same batches either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexeval.benchmarks import get_benchmark
from flexeval.evaluate import RunConfig, run_benchmarks
from flexeval.results.batches import log_path, whole_batches_end


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return get_benchmark("vstar").make_sample(tmp_path_factory.mktemp("vstar-resume"), n=3, seed=7)


def _cfg(model, data, out) -> RunConfig:
    return RunConfig(bench="vstar", model=str(model), data_dir=data, out=out, workers=0, quiet=True,
                     batch_size="2", tag="t")


@pytest.fixture()
def calls(monkeypatch):
    """The batches the model is asked, as lists of (prompt, options); optionally a stop at the n-th call."""
    from flexeval.model.flex_llava import FlexLlava

    real, seen, stop = FlexLlava.choose, [], {"at": None}

    def recording(self, batch, *a, **k):
        seen.append([(req.question, tuple(req.options)) for req, _ in batch])
        if stop["at"] == len(seen):
            raise KeyboardInterrupt
        return real(self, batch, *a, **k)

    monkeypatch.setattr(FlexLlava, "choose", recording)
    return seen, stop


def test_a_torn_batch_is_recomputed_whole_in_its_batch(release_dir, data, tmp_path, calls):
    seen, stop = calls
    run_benchmarks(_cfg(release_dir, data, tmp_path / "full"))
    full_batches = list(seen)
    assert [len(b) for b in full_batches] == [2, 2, 2]
    seen.clear()
    stop["at"] = 3  # killed while the third batch runs: two whole batches are stored
    with pytest.raises(KeyboardInterrupt):
        run_benchmarks(_cfg(release_dir, data, tmp_path / "cut"))
    shard = next((tmp_path / "cut" / "t" / "vstar" / "shards").glob("*.jsonl"))
    end = whole_batches_end(shard)
    assert end == shard.stat().st_size and len(shard.read_bytes().splitlines()) == 4
    # the kill landed inside the 2nd batch's write: its first line whole, its second torn, the log one behind
    lines = shard.read_bytes().splitlines(keepends=True)
    shard.write_bytes(b"".join(lines[:3]) + lines[3][:25])
    log_path(shard).write_text("".join(f"{n}\n" for n in log_path(shard).read_text().split()[:1]))
    seen.clear()
    stop["at"] = None
    run = run_benchmarks(_cfg(release_dir, data, tmp_path / "cut"))[0]
    assert run["timing"]["ran"] == 4 and run["timing"]["reused"] == 2  # batch 2 again, whole; then batch 3
    assert seen == full_batches[1:]  # the same compositions as the uninterrupted run
    assert (tmp_path / "cut" / "t" / "vstar" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "full" / "t" / "vstar" / "predictions.jsonl").read_bytes()


def test_a_shard_without_a_batch_log_reads_every_whole_line(release_dir, data, tmp_path):
    """Shards written before the log existed: every complete line is done (as before)."""
    run_benchmarks(_cfg(release_dir, data, tmp_path / "old"))
    shard = next((tmp_path / "old" / "t" / "vstar" / "shards").glob("*.jsonl"))
    log_path(shard).unlink()
    lines = shard.read_bytes().splitlines(keepends=True)
    shard.write_bytes(b"".join(lines[:3]) + lines[3][:25])
    run = run_benchmarks(_cfg(release_dir, data, tmp_path / "old"))[0]
    assert run["timing"]["reused"] == 3 and run["timing"]["ran"] == 3


def test_skipped_rows_take_no_model_slot(release_dir, data, tmp_path, calls):
    seen, _ = calls
    broken = tmp_path / "data"
    import shutil

    shutil.copytree(data, broken)
    image = sorted(p for p in broken.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[1]
    image.write_bytes(b"not an image")
    run_benchmarks(_cfg(release_dir, broken, tmp_path / "out"))
    assert [len(b) for b in seen] == [2, 2, 1]  # 5 decodable items in batches of 2; the broken one rides along
    first = list(seen)
    seen.clear()
    again = run_benchmarks(_cfg(release_dir, broken, tmp_path / "out"))[0]  # the skipped row is run again ...
    assert again["timing"]["ran"] == 1 and again["stats"]["skipped"] == 1
    assert seen == [] and first  # ... without a model call: it is skipped again, no batch is shifted
