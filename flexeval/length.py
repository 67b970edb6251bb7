"""Items longer than the model's positions become counted, reported skipped rows before any batch runs
(issue 24; the check is model/length.py). Chosen over an error: one overlong item of 62k is a data
problem of that item, like an over-limit image, not a reason to stop the run; it scores 0, is
counted per subset in run.json `stats.skipped_per_subset`, and the log line names it."""

from __future__ import annotations

from typing import Callable


def set_aside_overlong(items: list, model, store, record: Callable, progress=None) -> list:
    """Store the items whose request is over the model's position limit as skipped rows (one append);
    return the others, which run as usual. `record(item)` is the line of an item (execute.sample_record)."""
    from flexeval.model.length import length_problem, max_positions

    limit = max_positions(model) if hasattr(model, "tokenizer") else None
    if limit is None:
        return items
    over, rest = [], []
    for it in items:
        why = length_problem(model, it.request, limit)
        if why:
            it.record = {"prediction": "", "skipped": why}
            over.append(it)
        else:
            rest.append(it)
    if over:
        store.append([record(it) for it in over])
        if progress is not None:
            progress.done(len(over))
    return rest
