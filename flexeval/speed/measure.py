"""`flexeval speed`: the speed of the one fast path, its bounds and its ratios, in ONE run.

Figures with their context, never a timed test. On one device, after warm-up (CUDA events on
CUDA, perf_counter on the CPU), median of `repeat` calls:
  a/b. generation (TextVQA-like: ~40 question tokens, `new_tokens` new) and V*-like choice scoring
       (4 options of 2-12 tokens) at batch 1 and at the best batch found (powers of two up to a cap
       or the first out-of-memory), for selection none / attention / center / all;
  c.   the literal reference (model/reference.py, the release's algorithm) at batch 1;
  d.   the stages of a sample: JPEG decode + preprocess (CPU), CLIP (1 + zoom^2 crops), prefill,
       one decode step (with its memory floor);
  e.   end to end: the real runner over a generated benchmark (bench_e2e.py);
plus a fast-vs-reference check on the device, the measured matmul ceiling and copy bandwidth.
Ratios are computed from times of the same run. Writes speed.csv (the rows) and speed.json.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from flexeval.errors import FlexEvalError
from flexeval.execute import is_oom
from flexeval.speed.device import Timer, device_ceilings, free, profile_table
from flexeval.speed.flops import (
    RequestShape,
    choice_flops,
    clip_shape,
    generate_flops,
)
from flexeval.speed.report import COLUMNS, format_table, speed_row, write_results

SELECTIONS = ("none", "attention", "center", "all")
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}  # max relative difference


@dataclass
class SpeedConfig:
    arch: str = "llava-1.5-7b"  # random weights of this shape, unless `model` is given
    model: str | None = None  # a real checkpoint (folder or hub id)
    device: str = "auto"
    dtype: str = "auto"
    out: Path = Path("results/speed")
    max_new_tokens: int = 8
    repeat: int | None = None  # None: 3 on CUDA, 1 on the CPU
    max_batch: int | None = None  # batch search cap; None: 64 on CUDA, 4 on the CPU
    stage_batch: int = 16  # stage rows run at this batch and at the best generation batch
    e2e_items: int = 256
    workers: int | None = None  # e2e data workers; None: the runner's default
    threads: int | None = None  # CPU intra-op threads; None: torch's default
    profile: bool = False  # torch.profiler tables (top kernels) of generate and choice at the best batch
    compile_decode: bool = False  # the decode step through torch.compile(mode="reduce-overhead") on CUDA
    count_only: bool = False  # print the counted TFLOP per sample of every row, run nothing
    seed: int = 0


# ---------------------------------------------------------------- the bench's calls into the model

def call_model(model, kind: str, work: "Workload", batch: int, new_tokens: int = 8):
    """The bench's calls of the fast path: model.generate / model.choose over (request, image) pairs."""
    images = work.images_for(model, batch)
    if kind == "generate":
        return generate_requests(model, work.generate_prompts(batch), images, new_tokens)
    return choose_requests(model, work.choice_prompts(batch), images, work.options)


def generate_requests(model, prompts: list[str], images: list, new_tokens: int, **kw):
    return model.generate_prompts(prompts, images, [new_tokens] * len(prompts), **kw)


def choose_requests(model, prompts: list[str], images: list, options) -> list:
    return model.choose_prompts(prompts, images, [tuple(options)] * len(prompts), [False] * len(prompts))


def call_reference(model, kind: str, work: "Workload", new_tokens: int = 8):
    from flexeval.model import reference

    image = work.images_for(model, 1)[0]
    if kind == "generate":
        return reference.generate(model, work.generate_prompts(1)[0], image, new_tokens)
    return [reference.option_nll(model, work.choice_prompts(1)[0], image, o) for o in work.options]


# ---------------------------------------------------------------- inputs

class Workload:
    """Prompts sized in the model's own tokens, and a pool of V*-like / TextVQA-like images."""

    WORDS = "what is the colour of the small object near the left edge of the red sign in this picture".split()

    def __init__(self, model, seed: int = 0):
        import random

        from flexeval.benchmarks.samples import draw_scene
        from flexeval.benchmarks.wording import SHORT_ANSWER_SUFFIX
        from flexeval.model.conversation import llava_v1_prompt
        from flexeval.speed.end_to_end import TEXTVQA_SIZE, VSTAR_SIZE

        tok = model.tokenizer
        question = self._grow(lambda q: len(tok.encode_chunk(q)) - 1, 40)  # ~40 question tokens
        self.prompt = llava_v1_prompt(question + SHORT_ANSWER_SUFFIX)
        self.options = [self._grow(lambda o: len(tok.encode_option(self.prompt, o)[1]), n) for n in (2, 5, 8, 12)]
        rng = random.Random(seed)
        self.jpegs = []
        for size in (VSTAR_SIZE, TEXTVQA_SIZE):
            buf = io.BytesIO()
            draw_scene(rng, *size, 6)[0].save(buf, format="JPEG", quality=90)
            self.jpegs.append((size, buf.getvalue()))
        self._images: dict[int, list] = {}

    def _grow(self, n_tokens, target: int) -> str:
        words = []
        while not words or n_tokens(" ".join(words)) < target:
            words.append(self.WORDS[len(words) % len(self.WORDS)])
        return " ".join(words)

    def decode_preprocess(self, model, k: int):
        from PIL import Image

        return model.preprocessor(Image.open(io.BytesIO(self.jpegs[k][1])).convert("RGB"))

    def images_for(self, model, batch: int) -> list:
        if model.image_size not in self._images:
            self._images[model.image_size] = [self.decode_preprocess(model, k) for k in range(len(self.jpegs))]
        pool = self._images[model.image_size]
        return [pool[i % len(pool)] for i in range(batch)]

    def generate_prompts(self, batch: int) -> list[str]:
        return [self.prompt] * batch

    def choice_prompts(self, batch: int) -> list[str]:
        return [self.prompt] * batch


# ---------------------------------------------------------------- timing and device ceilings

# ---------------------------------------------------------------- the run

def variants(model) -> dict:
    """The same weights under each selection (None where the checkpoint cannot run it)."""
    from flexeval.model import RunOptions

    out = {}
    for sel in SELECTIONS:
        if sel != "none" and not model.cfg.has_hd:
            out[sel] = None
            continue
        out[sel] = model.with_options(RunOptions(selection=sel))
    return out


def load_model(cfg: SpeedConfig):
    from flexeval.model import RunOptions, load_pretrained
    from flexeval.model.loading import resolve_device, resolve_dtype
    from flexeval.model.random_weights import random_model

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.model:
        return load_pretrained(cfg.model, dtype=dtype, device=device, options=RunOptions())
    return random_model(cfg.arch, device, dtype, RunOptions(selection="center"), seed=cfg.seed)


def request_shape(model, result) -> RequestShape:
    hd_layers = model.cfg.num_layers - model.options.select_layer - 1 if model.use_hd else 0
    n_hd = (model.grid * model.zoom) ** 2
    return RequestShape(prompt_tokens=result.n_prompt_tokens, n_crops=1 + model.zoom ** 2 if model.use_hd else 1,
                        hd_layers=hd_layers, selected=(result.hd_selected_ratio or 0.0) * n_hd)


def flops_per_sample(model, kind: str, work: Workload, results) -> float:
    shape = request_shape(model, results[0])
    if kind == "generate":
        steps = max(len(r.token_ids) for r in results)  # the batch runs until its longest reply ends
        return generate_flops(model.cfg, clip_shape(model.vision), shape, steps)
    suffixes = [len(model.tokenizer.encode_option(work.prompt, o)[1]) for o in work.options]
    return choice_flops(model.cfg, clip_shape(model.vision), shape, suffixes)


def best_batch(model, kind, work, timer, cap, new_tokens) -> tuple[int, list[dict]]:
    """Largest-throughput power of two up to `cap`, stopping at the first out-of-memory."""
    tried, b = [], 1
    while b <= cap:
        try:
            s = timer(lambda bb=b: call_model(model, kind, work, bb, new_tokens), repeat=1)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not is_oom(e):
                raise
            free(model.device)
            tried.append({"batch": b, "oom": True})
            break
        tried.append({"batch": b, "samples_per_s": b / s})
        b *= 2
    fits = [t for t in tried if not t.get("oom")]
    if not fits:
        raise FlexEvalError(f"{kind} does not fit in device memory even at batch 1; use a smaller --arch or dtype")
    return max(fits, key=lambda t: t["samples_per_s"])["batch"], tried


def time_request(model, sel, kind, work, timer, batch, new_tokens, section="a") -> dict:
    """One row; halves the batch on out-of-memory (`all` needs more memory than the search's mode)."""
    while True:
        try:
            results = call_model(model, kind, work, batch, new_tokens)  # also the warm-up
            s = timer(lambda b=batch: call_model(model, kind, work, b, new_tokens), warmup=0)
            break
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not is_oom(e) or batch == 1:
                raise
            free(model.device)
            batch //= 2
    ratio = results[0].hd_selected_ratio if model.use_hd else None
    what = f"{kind} ({new_tokens} new tokens)" if kind == "generate" else f"{kind} ({len(work.options)} options)"
    return speed_row(section, what, sel, batch, s, flops_per_sample(model, kind, work, results), ratio)


def add_ratios(rows: list[dict]) -> None:
    """vs_reference = reference ms / ms (speed-up), vs_none = ms / none ms (cost of high-res),
    vs_all = all ms / ms (speed-up over every high-res token); same kind, same batch label."""
    by = {(r["what"], r["selection"], r["label"]): r for r in rows if "label" in r}
    for r in rows:
        if "label" not in r or r["ms_per_sample"] is None:
            continue
        ref = by.get((r["what"], "reference", "b1"))
        none = by.get((r["what"], "none", r["label"]))
        full = by.get((r["what"], "all", r["label"]))
        if ref and r["section"] != "c":
            r["vs_reference"] = ref["ms_per_sample"] / r["ms_per_sample"]
        if none and none.get("ms_per_sample"):
            r["vs_none"] = r["ms_per_sample"] / none["ms_per_sample"]
        if full and full.get("ms_per_sample"):
            r["vs_all"] = full["ms_per_sample"] / r["ms_per_sample"]


def correctness_check(model, work: Workload, new_tokens: int) -> dict:
    """Fast path vs the literal reference on this device and dtype, batch 1."""
    from flexeval.model import reference

    image = work.images_for(model, 1)
    ids_ref, pre_ref = reference.generate(model, work.prompt, image[0], new_tokens)
    (fast,), logits = generate_requests(model, [work.prompt], image, new_tokens, return_prefill_logits=True)
    ref_logits = pre_ref.logits.float()
    rel = float((logits[0, -ref_logits.shape[0]:].float() - ref_logits).abs().max() / ref_logits.abs().max())
    nll_ref = [reference.option_nll(model, work.prompt, image[0], o)[0] for o in work.options]
    nll_fast = choose_requests(model, [work.prompt], image, work.options)[0].option_nll
    nll_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(nll_fast, nll_ref))
    tol = CHECK_TOLERANCE[model.dtype]
    return {"selection": model.options.selection, "prefill_logits_max_rel_diff": rel,
            "option_nll_max_rel_diff": nll_rel, "same_greedy_tokens": ids_ref == fast.token_ids,
            "tolerance": tol, "passed": rel <= tol and nll_rel <= tol}


def timed_rows(models, main_sel, work, timer, cap, cfg, progress) -> tuple[list[dict], dict, dict]:
    """Sections a, b and c: every kind and selection at b1 and the best batch, then the reference."""
    rows, search, bests = [], {}, {}
    main = models[main_sel]
    for kind in ("generate", "choice"):
        best, search[kind] = best_batch(main, kind, work, timer, cap, cfg.max_new_tokens)
        bests[kind] = best
        progress.say(f"batch search {kind} ({main_sel}): best batch {best} of {[t['batch'] for t in search[kind]]}")
        for sel in SELECTIONS:
            for label, b in [("b1", 1)] + ([("best", best)] if best > 1 else []):
                if models[sel] is None:
                    rows.append({k: None for k in COLUMNS} | {"section": "b", "what": kind, "selection": sel,
                                                              "batch": b, "note": "plain LLaVA-1.5: no high-res"})
                else:
                    r = time_request(models[sel], sel, kind, work, timer, b, cfg.max_new_tokens,
                                     "a" if sel == main_sel else "b")
                    rows.append(r | {"label": label})
                progress.row(rows[-1])
        # warm: the correctness check just ran the same reference kernels
        ref_s = timer(lambda k=kind: call_reference(main, k, work, cfg.max_new_tokens), repeat=max(1, timer.repeat // 2),
                      warmup=0)
        ref_row = next(r for r in rows if r["selection"] == main_sel and r.get("label") == "b1" and kind in r["what"])
        rows.append(speed_row("c", ref_row["what"], "reference", 1, ref_s, note=f"literal reference, {main_sel} selection")
                    | {"label": "b1"})
        progress.row(rows[-1])
    return rows, search, bests


def e2e_rows(e2e: list[dict], main_sel: str) -> list[dict]:
    return [speed_row("e", f"end to end: flexeval run, {e['benchmark']} ({e['items']} items)", main_sel, e["batch"],
                     e["wall_s"] * e["batch"] / e["items"], ratio=e["mean_hd_selected_ratio"],
                     note=f"{e['outside_model_fraction']:.0%} of wall time outside model calls"
                     + (f"; GPU idle {e['gpu_idle_fraction']:.0%}" if e["gpu_idle_fraction"] is not None else ""))
            for e in e2e]


def start_progress(cfg: SpeedConfig):
    """The plan line, printed before anything is loaded (a CPU run is silent for minutes otherwise)."""
    from flexeval.speed.progress import Progress, planned_rows

    one_batch = cfg.max_batch == 1  # then b1 is also the best batch and the stages run at 1
    progress = Progress(planned_rows(len(SELECTIONS), one_batch, 1 if one_batch else 2, bool(cfg.e2e_items)))
    progress.plan(f"load {cfg.model or 'random ' + cfg.arch}, measure the device ceilings, check fast vs reference, "
                  f"search the best batch of generate and choice, time {len(SELECTIONS)} selections x 2 kinds "
                  f"at b1 and the best batch, the reference, the stages"
                  + (f", and {cfg.e2e_items} end-to-end items" if cfg.e2e_items else ""))
    return progress


def run_speed(cfg: SpeedConfig) -> dict:
    from flexeval.results.runinfo import environment_info
    from flexeval.speed.end_to_end import run_end_to_end
    from flexeval.speed.stages import cpu_stage_rows, stage_rows

    progress = start_progress(cfg)
    t_build = time.perf_counter()
    base = load_model(cfg)
    base.compile_decode = cfg.compile_decode
    build_s = time.perf_counter() - t_build
    device = base.device
    on_cuda = device.type == "cuda"
    progress.say(f"model built on {device} in {build_s:.1f} s")
    timer = Timer(device, cfg.repeat or (3 if on_cuda else 1))
    cap = cfg.max_batch or (64 if on_cuda else 4)
    work = Workload(base, cfg.seed)
    models = variants(base)
    for m in filter(None, models.values()):
        m.compile_decode = cfg.compile_decode
    main_sel = "center" if not cfg.model else ("attention" if base.cfg.has_hd else "none")
    main = models[main_sel]
    ceilings = device_ceilings(device, base.dtype, timer)
    progress.say(f"ceilings: matmul {ceilings['matmul_tflops']:.3g} TFLOP/s, copy {ceilings['copy_gb_per_s']:.3g} GB/s")
    checks = [correctness_check(models[s], work, cfg.max_new_tokens) for s in dict.fromkeys([main_sel, "attention"])
              if models.get(s) is not None]
    for ch in checks:
        progress.say(f"check fast vs reference ({ch['selection']}): {'PASS' if ch['passed'] else 'FAIL'}")
    rows, search, bests = timed_rows(models, main_sel, work, timer, cap, cfg, progress)
    profiles = {}
    if cfg.profile:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        for kind, b in bests.items():
            path = Path(cfg.out) / f"profile_{kind}_b{b}.txt"
            path.write_text(profile_table(lambda k=kind, bb=b: call_model(main, k, work, bb, cfg.max_new_tokens), device))
            profiles[kind] = str(path)
    add_ratios(rows)
    for r in cpu_stage_rows(main, work, timer.repeat):
        rows.append(r)
        progress.row(r)
    for b in sorted({min(cfg.stage_batch, cap), bests["generate"]}):  # the decode target is at 16, prefill's at best
        for r in stage_rows(main, work, timer, b, cfg.max_new_tokens, ceilings):
            rows.append(r)
            progress.row(r)
    e2e = run_end_to_end(main, Path(cfg.out), cfg.e2e_items, bests, cfg.workers, cfg.max_new_tokens) if cfg.e2e_items else []
    for r in e2e_rows(e2e, main_sel):
        rows.append(r)
        progress.row(r)
    info = {"device": torch.cuda.get_device_name(device) if on_cuda else "cpu", "dtype": str(base.dtype)[6:],
            "model": base.source, "build_s": build_s, "repeat": timer.repeat, "batch_cap": cap,
            "cpu_threads": torch.get_num_threads(),
            "prompt_tokens": len(base.tokenizer.encode_prompt(work.prompt)) - 1 + base.grid ** 2,
            "option_tokens": [len(base.tokenizer.encode_option(work.prompt, o)[1]) for o in work.options]}
    for r in rows:
        r.pop("label", None)
    return {"info": info, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "environment": environment_info(), "ceilings": ceilings, "checks": checks, "batch_search": search,
            "profiles": profiles, "end_to_end": e2e, "rows": rows}


def main(cfg: SpeedConfig) -> dict:
    if cfg.count_only:
        from flexeval.speed.count_only import count_rows, format_counts

        res = count_rows(cfg.arch, cfg.max_new_tokens)
        print(format_counts(res))
        return res
    if cfg.compile_decode and not str(cfg.device).startswith("cuda"):
        raise FlexEvalError("--compile captures the decode step with CUDA graphs: it needs --device cuda")
    if cfg.max_new_tokens < 3:
        raise FlexEvalError(f"--max-new-tokens {cfg.max_new_tokens}: at least 3 are needed to time a whole decode step")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        res = run_speed(cfg)
    finally:  # the process's own setting again (a caller in the same process computes with it)
        torch.set_num_threads(threads)
    print(format_table(res))
    csv_path, json_path = write_results(res, Path(cfg.out))
    print(f"bench table: {csv_path} and {json_path}")
    return res
