"""What lmms-eval and lm-eval users expect from `flexeval run`: benchmark lists, fractional
limits, offsets, id files, generation kwargs. Plain parsing and filtering; the runner applies them.
("Selection" is kept for the high-res tokens a layer attends to; here it is the items to run.)

The items a run evaluates, per benchmark, in this order (the benchmark's own item order is kept throughout):
1. `--ids FILE`: only the items whose id is listed (one id a line; blank lines ignored). With
   several benchmarks a line may be prefixed `<benchmark>:` (e.g. `vstar:direct_attributes/sa_1`);
   such a line concerns that benchmark only, an unprefixed line every benchmark. A prefixed id
   its benchmark lacks is an error naming it, before that benchmark runs; so is an unprefixed id
   with one benchmark. With several, an unprefixed id need only exist in one of them; one that
   exists in none is an error raised after the runs (check_unprefixed_ids_found).
2. `--offset K`: drop the first K of the items left.
3. `--limit N` (N >= 1): keep the first N; `--limit x` with 0 < x < 1: keep the first
   ceil(x * items left), at least 1 - lm-evaluation-harness's rounding (`math.ceil(n * limit)`).
   A fraction is the first part of the benchmark in its order, not a random sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from flexeval.errors import FlexEvalError

# The input recipes (release, native) are the model side's (model/loading.py); `flexeval list` shows them.
from flexeval.model.loading import RECIPES  # noqa: E402,F401

# Decoding is greedy only. Keys lmms-eval/lm-eval pass, with the values that mean greedy anyway.
GREEDY_VALUES = {"temperature": 0.0, "do_sample": False, "num_beams": 1, "top_p": 1.0, "top_k": None}
GEN_KWARGS = ("max_new_tokens", *GREEDY_VALUES)


def parse_limit(value: str | int | float | None) -> int | float | None:
    """An integer N >= 1 (items) or a fraction 0 < x < 1; anything else is an error."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError as e:
        raise FlexEvalError(f"--limit must be a number of items (e.g. 50) or a fraction 0 < x < 1 "
                            f"(e.g. 0.1), not {text!r}") from e
    if 0 < number < 1:
        return number
    if number >= 1 and number == int(number):
        return int(number)
    raise FlexEvalError(f"--limit {text}: give a whole number of items >= 1 or a fraction 0 < x < 1")


def limit_count(limit: int | float | None, n_items: int) -> int:
    """How many items `--limit` keeps of `n_items`."""
    if limit is None:
        return n_items
    if isinstance(limit, float) and limit < 1:
        return min(n_items, max(1, math.ceil(n_items * limit))) if n_items else 0
    return min(n_items, int(limit))


@dataclass(frozen=True)
class IdList:
    """The ids of an --ids file: per benchmark (prefixed lines) and for all (unprefixed)."""

    path: Path
    common: tuple[str, ...]
    by_bench: dict[str, tuple[str, ...]]

    def wanted(self, bench_name: str) -> list[str]:
        return [*self.common, *self.by_bench.get(bench_name, ())]


def read_id_file(path: Path | None, bench_names: list[str]) -> IdList | None:
    from flexeval.benchmarks import get_benchmark

    if path is None:
        return None
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise FlexEvalError(f"--ids file {path} does not exist; give a text file with one item id a line") from e
    except UnicodeDecodeError as e:
        raise FlexEvalError(f"--ids file {path} is not UTF-8 text ({e})") from e
    common: list[str] = []
    by_bench: dict[str, list[str]] = {}
    for line in lines:
        text = line.strip()
        if not text:
            continue
        prefix, sep, rest = text.partition(":")
        bench = None
        if sep:
            try:
                bench = get_benchmark(prefix).name
            except FlexEvalError:
                bench = None  # a colon inside an id, not a benchmark prefix
        if bench is None:
            common.append(text)
        elif bench not in bench_names:
            raise FlexEvalError(f"--ids file {path}: line {text!r} names benchmark {bench}, which this run does "
                                f"not include ({', '.join(bench_names)}); add it to --bench or drop the line")
        else:
            by_bench.setdefault(bench, []).append(rest.strip())
    if not common and not by_bench:
        raise FlexEvalError(f"--ids file {path} lists no ids; write one item id a line")
    return IdList(path, tuple(common), {k: tuple(v) for k, v in by_bench.items()})


def items_to_run(samples: list, bench_name: str, ids: IdList | None, offset: int, limit: int | float | None,
                 n_benches: int = 1) -> tuple[list, dict]:
    """The items a run evaluates (see the module docstring) and a record of how they were chosen, for
    run.json: {loaded, [ids_file, after_ids, common_ids_found], offset, limit, kept}."""
    if offset < 0:
        raise FlexEvalError(f"--offset must be >= 0, not {offset}")
    info: dict = {"loaded": len(samples)}
    if ids is not None:
        known = {s.id for s in samples}
        wanted_prefixed = ids.by_bench.get(bench_name, ())
        unknown = [i for i in wanted_prefixed if i not in known]
        if n_benches == 1:
            unknown += [i for i in ids.common if i not in known]
        if unknown:
            shown = ", ".join(unknown[:20]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
            raise FlexEvalError(f"--ids file {ids.path}: {bench_name} has no item with id {shown}; "
                                f"ids are the `id` field of predictions.jsonl (`flexeval list` shows the data)")
        wanted = set(ids.wanted(bench_name))
        samples = [s for s in samples if s.id in wanted]
        info.update(ids_file=str(ids.path), after_ids=len(samples))
        if n_benches > 1:  # for check_unprefixed_ids_found, after all benchmarks ran
            info["common_ids_found"] = sorted(set(ids.common) & known)
    if offset and offset >= len(samples):  # a typo past the end was an empty table and exit 0
        raise FlexEvalError(f"--offset {offset} is past the end: {bench_name} has {len(samples)} item(s)"
                            f"{' after --ids' if ids is not None else ''}; give --offset 0..{max(len(samples) - 1, 0)}")
    samples = samples[offset:]
    keep = limit_count(limit, len(samples))
    info.update(offset=offset, limit=limit, kept=keep)
    return samples[:keep], info




def parse_key_values(spec: str, option: str, example: str) -> dict[str, str]:
    """`a=1,b=x` -> {"a": "1", "b": "x"} (keys with `-` read as `_`), as lm-eval's --gen_kwargs and
    --model_args are typed; a part without `=` or a key given twice is an error."""
    out: dict[str, str] = {}
    for part in str(spec).split(","):
        key, sep, value = part.strip().partition("=")
        key = key.strip().replace("-", "_")
        if not part.strip():
            continue
        if not sep or not key:
            raise FlexEvalError(f"{option} {spec!r}: {part.strip()!r} is not key=value (e.g. {example})")
        if key in out:
            raise FlexEvalError(f"{option}: {key} is given twice; give it once")
        out[key] = value.strip()
    return out


def new_token_limit(max_new_tokens: int | None, gen_kwargs: str | None) -> int | None:
    """--max-new-tokens, or --gen-kwargs max_new_tokens=N (lm-eval's spelling of the same); both must agree."""
    generation = parse_gen_kwargs(gen_kwargs)
    if "max_new_tokens" not in generation:
        return max_new_tokens
    if max_new_tokens not in (None, generation["max_new_tokens"]):
        raise FlexEvalError(f"--max-new-tokens {max_new_tokens} and --gen-kwargs "
                            f"max_new_tokens={generation['max_new_tokens']} disagree; give one")
    return generation["max_new_tokens"]


def parse_gen_kwargs(spec: str | None) -> dict:
    """`max_new_tokens=64,temperature=0` -> {"max_new_tokens": 64}. Greedy-only: a sampling setting
    is an error that says so; settings that mean greedy anyway are accepted and dropped."""
    if not spec:
        return {}
    out: dict = {}
    for key, value in parse_key_values(spec, "--gen-kwargs", "max_new_tokens=64").items():
        if key not in GEN_KWARGS:
            raise FlexEvalError(f"--gen-kwargs: unknown key {key!r}; known: {', '.join(GEN_KWARGS)}")
        if key == "max_new_tokens":
            try:
                n = int(value)
            except ValueError as e:
                raise FlexEvalError(f"--gen-kwargs max_new_tokens={value!r}: give a whole number >= 1") from e
            if n < 1:
                raise FlexEvalError(f"--gen-kwargs max_new_tokens={n}: give a whole number >= 1")
            out["max_new_tokens"] = n
        elif not _is_greedy(key, value):
            raise FlexEvalError(f"--gen-kwargs {key}={value}: flexeval decodes greedily only (deterministic, "
                                f"as the release's eval scripts); drop {key} or set it to "
                                f"{_greedy_text(key)}")
    return out


def _is_greedy(key: str, value: str) -> bool:
    v = value.lower()
    if key == "do_sample":
        return v in ("false", "0")
    if key == "top_k":
        return v in ("none", "0")
    try:
        return float(v) == float(GREEDY_VALUES[key])
    except ValueError:
        return False


def _greedy_text(key: str) -> str:
    return {"do_sample": "false", "top_k": "none", "temperature": "0", "num_beams": "1", "top_p": "1.0"}[key]


def check_unprefixed_ids_found(ids: IdList | None, item_records: list[dict]) -> None:
    """With several benchmarks, an unprefixed id that none of them has is an error (raised after the
    runs, whose results are kept: only then is every benchmark's list of ids known)."""
    if ids is None or len(item_records) < 2:
        return
    found = {i for record in item_records for i in record.get("common_ids_found", ())}
    unknown = [i for i in ids.common if i not in found]
    if unknown:
        raise FlexEvalError(f"--ids file {ids.path}: no benchmark of this run has an item with id "
                            f"{', '.join(unknown[:20])}" + (f", ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
                            + "; the other ids ran and their results are written")
