"""The results-folder lock on a filesystem whose flock does not work: said as such, with what to
do, for the run lock and the prediction shards alike; FLEXEVAL_NO_LOCK=1 runs without it."""

from __future__ import annotations

import errno
import os

import pytest

from flexeval.errors import FlexEvalError
from flexeval.results import lock
from flexeval.results.lock import hold_run_lock
from flexeval.results.store import PredictionStore


def _flock_fails(code):
    def flock(fd, op):
        raise OSError(code, os.strerror(code))
    return flock


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_flock_is_named_with_what_to_do(tmp_path, monkeypatch, code):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(lock.fcntl, "flock", _flock_fails(code))
    folder = tmp_path / "out" / "tiny" / "vstar"
    with pytest.raises(FlexEvalError) as caught:
        hold_run_lock(folder)
    text = str(caught.value)
    assert f"the filesystem of {folder} does not support file locks" in text and os.strerror(code) in text
    assert "in use by another run" not in text
    assert "local disk" in text and "FLEXEVAL_NO_LOCK=1" in text
    with pytest.raises(FlexEvalError, match=r"shards does not support file locks .*FLEXEVAL_NO_LOCK=1"):
        PredictionStore(folder, "cfg").append([{"key": "k1", "prediction": "A"}])


def test_a_lock_held_by_a_live_run_still_says_in_use(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(lock.fcntl, "flock", _flock_fails(errno.EWOULDBLOCK))
    with pytest.raises(FlexEvalError, match="is in use by another run"):
        hold_run_lock(tmp_path / "out")


def test_without_locks_when_the_user_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(lock.fcntl, "flock", _flock_fails(errno.ENOLCK))
    monkeypatch.setenv(lock.NO_LOCK_ENV, "1")
    held = hold_run_lock(tmp_path / "out")
    assert f'"pid": {os.getpid()}' in (tmp_path / "out" / lock.LOCK_NAME).read_text()
    held.release()
