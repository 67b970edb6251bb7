"""`flexeval` with a test hook: the rank FLEXEVAL_TEST_HANG_RANK blocks forever inside its
(FLEXEVAL_TEST_HANG_AFTER + 1)-th model call, as a rank stuck in a CUDA kernel or a dead NFS read
would; its other threads (flexeval's watcher) keep running. Run as a script under torchrun:

    torchrun ... tests/helpers/hang_rank.py run --bench ...
"""

from __future__ import annotations

import os
import time

import flexeval.model


def _hang_after(model, calls_before: int):
    count = [0]
    for name in ("choose", "generate"):
        if not hasattr(model, name):
            continue

        def call(*args, _inner=getattr(model, name), **kwargs):
            count[0] += 1
            if count[0] > calls_before:
                print(f"[test hook] rank {os.environ['RANK']} (pid {os.getpid()}) hangs in a model call", flush=True)
                while True:
                    time.sleep(3600)
            return _inner(*args, **kwargs)

        setattr(model, name, call)
    return model


def _install() -> None:
    load = flexeval.model.load_model

    def load_model(*args, **kwargs):
        model = load(*args, **kwargs)
        if os.environ.get("RANK") == os.environ.get("FLEXEVAL_TEST_HANG_RANK"):
            _hang_after(model, int(os.environ.get("FLEXEVAL_TEST_HANG_AFTER", "1")))
        return model

    flexeval.model.load_model = load_model


if __name__ == "__main__":
    _install()
    from flexeval.cli import main

    main()
