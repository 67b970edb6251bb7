"""Strict JSON for everything a run writes: a non-finite number (NaN, +-inf) becomes null.

Python's json writes bare `NaN` / `Infinity`, which strict readers (JavaScript, jq, pandas with
the C parser in strict mode, Go, serde) reject. Writing null instead loses the kind of the value,
so the object that held it says so: `"non_finite_values": {"<path>": "NaN" | "Infinity" | "-Infinity"}`,
with paths like `option_nll[2]` or `accuracy[1].accuracy`.
"""

from __future__ import annotations

import math
from typing import Any

NON_FINITE_KEY = "non_finite_values"


def _kind(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def replace_non_finite(obj: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """(a copy of obj with each non-finite float replaced by None, {path: kind} of those replaced)."""
    found: dict[str, str] = {}

    def walk(x: Any, where: str) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            found[where] = _kind(x)
            return None
        if isinstance(x, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return x

    return walk(obj, path), found


def strict_object(obj: Any) -> Any:
    """obj ready for json.dumps(allow_nan=False): non-finite floats as null, listed under
    `non_finite_values` when obj is a dict (an earlier list there is kept and extended)."""
    clean, found = replace_non_finite(obj)
    if found and isinstance(clean, dict):
        clean[NON_FINITE_KEY] = {**(clean.get(NON_FINITE_KEY) or {}), **found}
    return clean
