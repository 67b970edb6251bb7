"""The `flexeval` command line (typer). Every command runs inside the one error path of
flexeval/cli_common.py: a FlexEvalError is printed as one line (exit 1), Ctrl-C and a full disk say
what was kept (exit 130 / 1). Model flags are also accepted as `--model-args key=value,...`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from flexeval.checks import check_at_least, check_writable
from flexeval.cli_common import MODEL_ARGS_HELP, MODEL_KNOBS, FlexEvalTyper, apply_model_args
from flexeval.cli_data import data_app, model_app
from flexeval.errors import FlexEvalError

app = FlexEvalTyper(add_completion=False, no_args_is_help=True,
                  help="Evaluate FlexAttention / LLaVA-1.5 models on high-resolution VQA benchmarks.")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")

DEFAULT_MODEL = "senfu/llava-v1.5-7b-flexattn"
MODEL_KIND_HELP = ("auto (LLaVA-1.5 / FlexAttention / llava-hf formats: FlexLlava; other transformers vision-language "
                   "checkpoints: transformers) | flexattention | hf")
IMAGE_OPTION_HELP = ("KEY=VALUE for a transformers image processor's own settings, repeatable: tiles (InternVL "
                     "max_patches=6, Idefics3 do_image_splitting=false), sizes; checked against the processor")
RECIPE_HELP = ("release: LLaVA-1.5's eval recipe (pad to square, v1 template, chunked tokenisation; the default for "
               "LLaVA-1.5 formats) | native: the checkpoint's own processor, chat template and tokenizer (transformers)")
# The options of the commands that load any model (run, inspect): one declaration each.
MODEL_KIND_OPTION = typer.Option("auto", "--model-kind", help=MODEL_KIND_HELP)
RECIPE_OPTION = typer.Option(None, "--recipe", help=RECIPE_HELP)
TRUST_REMOTE_CODE_OPTION = typer.Option(False, "--trust-remote-code",
                                        help="allow a checkpoint's own Python code (transformers models)")
MIN_PIXELS_OPTION = typer.Option(None, "--min-pixels", help="transformers image processors with a pixel budget "
                                 "(Qwen-VL): lower bound")
MAX_PIXELS_OPTION = typer.Option(None, "--max-pixels", help="transformers image processors with a pixel budget "
                                 "(Qwen-VL): upper bound")
IMAGE_OPTION_OPTION = typer.Option(None, "--image-option", help=IMAGE_OPTION_HELP)
MODEL_ARGS_OPTION = typer.Option(None, "--model-args", help=MODEL_ARGS_HELP)


@app.command()
def run(
    ctx: typer.Context,
    bench: str = typer.Option(..., "--bench", "-b",
                              help="vstar | magnifierbench | textvqa | rsvqa_hrben | all, or a list: vstar,textvqa; "
                                   "hrbench_4k | hrbench_8k | a plugin's; or a file: path/to/mcq.tsv | vqa.jsonl"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="checkpoint folder or hub id"),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", "-d", help="benchmark folder (with --bench all: a root holding one folder per benchmark)"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="results root"),
    limit: Optional[str] = typer.Option(None, "--limit", help="only the first N items, or a fraction 0<x<1 of them (ceil)"),
    batch_size: str = typer.Option("auto", "--batch-size", help="N or 'auto' (largest that fits; backs off on OOM)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="paper (default) | official | ... per benchmark"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | float16 | bfloat16 | float32"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    selection: Optional[str] = typer.Option(None, "--selection", help="attention | random | center | all | none (default: attention; none for plain LLaVA-1.5)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="selection threshold out of 255 (release: 48)"),
    first_layer: Optional[int] = typer.Option(None, "--first-layer", help="first layer that uses high-res keys (release: 9)"),
    zoom: Optional[int] = typer.Option(None, "--zoom", help="zoom ratio 2|3|4 -> 672/1008/1344 px high-res view"),
    split: Optional[str] = typer.Option(None, "--split", help="RSVQA-HRBEN: test_phili (default) | test; GQA: val_balanced (default) | testdev_balanced"),
    workers: Optional[int] = typer.Option(None, "--workers", help="image decoding worker processes (default: cores - 1, at most 8)"),
    tag: Optional[str] = typer.Option(None, "--tag", help="model tag used as the results folder name"),
    seed: int = typer.Option(0, "--seed", help="seed for the random selection ablation"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars, log lines only"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="override the benchmark's generation length"),
    max_image_pixels: int = typer.Option(40_000_000, "--max-image-pixels", help="refuse larger images (a decompression-bomb guard; real V* images reach 8.3 Mpx); such an item is a skipped row"),
    max_non_finite: int = typer.Option(3, "--max-non-finite", help="stop when more items than this give NaN/inf outputs (they always count as wrong)"),
    check: bool = typer.Option(False, "--check", help="validate the data, the model folder and --out without running the model; list every problem"),
    # issue 15: lmms-eval / lm-eval conveniences (flexeval/items.py, benchmarks/question_style.py)
    offset: int = typer.Option(0, "--offset", help="skip the first K items (before --limit)"),
    ids: Optional[Path] = typer.Option(None, "--ids", help="file with one item id a line (optionally bench:id)"),
    gen_kwargs: Optional[str] = typer.Option(None, "--gen-kwargs", help="key=value,... as lm-eval: max_new_tokens (the same as --max-new-tokens); greedy only"),
    question_style: str = typer.Option("release", "--question-style", help="release | lmms-eval (TextVQA: question.capitalize())"),
    model_kind: str = MODEL_KIND_OPTION,
    recipe: Optional[str] = RECIPE_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
    min_pixels: Optional[int] = MIN_PIXELS_OPTION,
    max_pixels: Optional[int] = MAX_PIXELS_OPTION,
    image_option: Optional[list[str]] = IMAGE_OPTION_OPTION,
    model_args: Optional[str] = MODEL_ARGS_OPTION,
    peer_timeout: Optional[float] = typer.Option(None, "--peer-timeout", help="multi-process: stop the run when a rank finishes no batch for max(this, 5 x the longest batch) seconds (default: FLEXEVAL_PEER_TIMEOUT_S or 60)"),
) -> None:
    """Evaluate a model on a benchmark; writes predictions.jsonl, accuracy.csv and run.json."""
    from flexeval.evaluate import RunConfig, run_benchmarks
    from flexeval.items import new_token_limit, parse_limit

    knobs = apply_model_args(ctx, model_args)
    cfg = RunConfig(bench=bench, data_dir=data_dir, out=out, limit=parse_limit(limit), protocol=protocol,
                    split=split, workers=workers, tag=tag, quiet=quiet,
                    max_new_tokens=new_token_limit(max_new_tokens, gen_kwargs),
                    max_image_pixels=max_image_pixels, max_non_finite=max_non_finite, offset=offset, ids_file=ids,
                    question_style=question_style, image_options=tuple(image_option or ()), peer_timeout=peer_timeout,
                    **{k: knobs[k] for k in MODEL_KNOBS})
    if check:
        _check(cfg)
        return
    run_benchmarks(cfg)


def _check(cfg) -> None:
    from flexeval.checks import check_run, format_check

    problems, notes = check_run(cfg)
    typer.echo(format_check(problems, notes))
    if problems:
        raise typer.Exit(1)


@app.command("list")
def list_cmd(data_root: Path = typer.Option(Path("data"), "--data-dir", "-d", help="root holding one folder per benchmark")) -> None:
    """Each benchmark, where its data is expected, whether it is there, and how many items it has."""
    from flexeval.plugins import plugins_listing
    from flexeval.results.report import list_benchmarks_table

    typer.echo(list_benchmarks_table(data_root) + "\n" + plugins_listing())


@app.command()
def rescore(path: Path = typer.Argument(..., help="a benchmark results folder, or a folder above several")) -> None:
    """Recompute accuracy.csv from predictions.jsonl alone (no model)."""
    from flexeval.results.scoring import rescore_tree

    for p in rescore_tree(path):
        typer.echo(f"rescored {p}")


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="results folder of run A (results/<tag>/<bench>, or results/<tag>)"),
    run_b: Path = typer.Argument(..., help="results folder of run B, the same benchmark(s)"),
    show: int = typer.Option(20, "--show", help="flipped items listed per benchmark"),
    json_out: bool = typer.Option(False, "--json", help="print everything as one JSON object"),
) -> None:
    """Paired comparison on the items both runs have: per-subset B - A, its bootstrap interval, flipped items."""
    from flexeval.results.compare import compare_runs, comparison_json, format_comparison

    result = compare_runs(run_a, run_b)
    typer.echo(json.dumps(comparison_json(result)) if json_out else format_comparison(result, show=show).rstrip())


@app.command()
def report(
    results_dir: Path = typer.Argument(Path("results"), help="results root"),
    html: bool = typer.Option(False, "--html", help="also write a browsable static site under RESULTS_DIR/report/"),
    images: bool = typer.Option(True, "--images/--no-images", help="--html: item thumbnails from the data folders"),
) -> None:
    """Print and regenerate summary.csv and summary.md (paper numbers as reference rows); V* target
    coverage (target_coverage.csv/.png) where runs have it; with --html the static site."""
    from flexeval.analysis.coverage_report import write_coverage_summary
    from flexeval.results.report import write_report

    typer.echo(write_report(results_dir))
    write_coverage_summary(results_dir)
    if html:
        from flexeval.results.html import write_html_report

        typer.echo(f"HTML report: {write_html_report(results_dir, images=images)} (open it in a browser)")


@app.command()
def inspect(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="checkpoint folder or hub id (required)"),
    image: Path = typer.Option(..., "--image"),
    prompt: str = typer.Option(..., "--prompt"),
    options: Optional[str] = typer.Option(None, "--options", help='"a|b|..." scored by mean NLL (likelihood mode)'),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    dump_logits: Optional[Path] = typer.Option(None, "--dump-logits", help="safetensors file for prefill logits"),
    raw: bool = typer.Option(False, "--raw", help="use the prompt as is (no conversation template)"),
    selection: Optional[str] = typer.Option(None, "--selection", help="attention | random | center | all | none"),
    model_kind: str = MODEL_KIND_OPTION,
    recipe: Optional[str] = RECIPE_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
    min_pixels: Optional[int] = MIN_PIXELS_OPTION,
    max_pixels: Optional[int] = MAX_PIXELS_OPTION,
    image_option: Optional[list[str]] = IMAGE_OPTION_OPTION,
    model_args: Optional[str] = MODEL_ARGS_OPTION,
    count_flops: bool = typer.Option(False, "--count-flops", help='add "flops": the FLOPs and high-res projected '
                                     "tokens counted while the sample runs"),
) -> None:
    """A window into one sample: generated tokens, selections per layer, option NLLs, logits."""
    from flexeval.analysis.inspect import inspect_sample

    knobs = apply_model_args(ctx, model_args)
    model, dtype, device, selection, model_kind, recipe, trust_remote_code, min_pixels, max_pixels = (
        knobs[k] for k in ("model", "dtype", "device", "selection", "model_kind", "recipe", "trust_remote_code",
                           "min_pixels", "max_pixels"))
    if model is None:
        raise FlexEvalError("flexeval inspect needs --model M (or --model-args pretrained=M)")
    check_at_least(max_new_tokens, "--max-new-tokens")
    result = inspect_sample(model=model, image=image, prompt=prompt,
                            options=options.split("|") if options else None,
                            max_new_tokens=max_new_tokens, dtype=dtype, device=device,
                            dump_logits=dump_logits, raw=raw, selection=selection, model_kind=model_kind,
                            recipe=recipe, min_pixels=min_pixels, max_pixels=max_pixels,
                            trust_remote_code=trust_remote_code, image_options=tuple(image_option or ()),
                            count_flops=count_flops)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for k, v in result.items():
            typer.echo(f"{k}: {v}")


# ---- issue 9: attention maps (A.2) and GQA grounding (A.3) ----

@app.command()
def attention(
    ctx: typer.Context,
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="checkpoint folder or hub id"),
    image: Optional[Path] = typer.Option(None, "--image", help="one image (with --prompt)"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="the question (wrapped in the LLaVA v1 template)"),
    bench: Optional[str] = typer.Option(None, "--bench", "-b", help="instead of --image: items of a benchmark"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", "-d", help="the benchmark's folder"),
    ids: Optional[str] = typer.Option(None, "--ids", help="ID,ID,... items of --bench"),
    limit: Optional[int] = typer.Option(None, "--limit", help="the first N items of --bench"),
    layers: Optional[str] = typer.Option(None, "--layers", help="0-based layers, comma-separated, or 'all' (default 8,9,10,11; release style: all)"),
    token: Optional[str] = typer.Option(None, "--token", help="query row: answer | prompt-end | N (default answer; release style: prompt-end)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="--image: the PNG to write; --bench: results root (default results)"),
    style: str = typer.Option("flexeval", "--style", help="flexeval (map + selected blocks) | release (its visualiser) | both"),
    strip: Optional[int] = typer.Option(None, "--strip", help="LAYER: also one map per generated answer token"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU; as `run`) | float16 | bfloat16 | float32"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    selection: Optional[str] = typer.Option(None, "--selection", help="attention | random | center | all | none"),
    tag: Optional[str] = typer.Option(None, "--tag", help="model tag used as the results folder name"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="answer length (default 16)"),
    model_args: Optional[str] = MODEL_ARGS_OPTION,
    max_image_pixels: int = typer.Option(40_000_000, "--max-image-pixels", help="refuse larger images (as `run`)"),
) -> None:
    """Attention-map pictures: the map of one query row over the original image, one panel per layer."""
    from flexeval.analysis.attention import attention_for_bench, attention_for_image, check_style

    knobs = apply_model_args(ctx, model_args)
    model, dtype, device, selection = (knobs[k] for k in ("model", "dtype", "device", "selection"))
    token, layers = check_style(style, token, layers)
    check_at_least(max_new_tokens, "--max-new-tokens")
    if out is not None:
        check_writable(out.parent if image is not None else out)
    if (image is None) == (bench is None):
        raise FlexEvalError("give either --image IMG --prompt Q --out FILE.png, or --bench B --data-dir D")
    if image is not None:
        if prompt is None or out is None:
            raise FlexEvalError("--image needs --prompt and --out FILE.png")
        info = attention_for_image(model, image, prompt, layers, token, out, dtype, device, selection,
                                   max_new_tokens or 16, style=style, strip=strip,
                                   max_image_pixels=max_image_pixels)
        typer.echo(f"answer: {info['answer']}\n{info['token']}'s row, layers {info['layers']}: {info['written']}")
    else:
        for p in attention_for_bench(bench, model, data_dir, ids, limit, layers, token, out or Path("results"), dtype,
                                     device, selection, tag=tag, max_new_tokens=max_new_tokens, style=style, strip=strip,
                                     max_image_pixels=max_image_pixels):
            typer.echo(f"wrote {p}")


@app.command("attention-check")
def attention_check(out: Path = typer.Option(Path("attention-check.png"), "--out", "-o", help="PNG to write")) -> None:
    """The planted-hot-spot picture (no model): maps forced to the cell of a red disc on wide, tall and square
    images, drawn as `flexeval attention` draws them; hot spot and outline must sit on the disc."""
    from flexeval.analysis.attention import planted_check_png

    typer.echo(f"wrote {planted_check_png(check_writable(out.parent) / out.name)}")


grounding_app = FlexEvalTyper(invoke_without_command=True, no_args_is_help=True,
                              help="GQA grounding score of the attention maps per layer (`flexeval grounding --model M "
                                   "--data-dir D`), or of an attention file (`flexeval grounding score ...`).")
app.add_typer(grounding_app, name="grounding")


@grounding_app.callback()
def grounding(
    ctx: typer.Context,
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="checkpoint folder or hub id; repeat: one curve each"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", "-d", help="GQA folder (val_balanced_questions.json, val_sceneGraphs.json, images/)"),
    layers: str = typer.Option("all", "--layers", help="0-based layers, comma-separated, or 'all'"),
    limit: Optional[int] = typer.Option(None, "--limit", help="only the first N questions (eval.py needs all)"),
    out: Path = typer.Option(Path("results-grounding"), "--out", "-o", help="one folder per model + grounding.csv/png"),
    token: str = typer.Option("answer", "--token", help="answer | prompt-end | N (see `flexeval attention`)"),
    map_size: int = typer.Option(7, "--map-size", help="M of the M x M map scored (the official script's --mapSize, 7 there)"),
    batch_size: str = typer.Option("auto", "--batch-size", help="N or 'auto'"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float16 | bfloat16 | float32"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    selection: Optional[str] = typer.Option(None, "--selection", help="attention | random | center | all | none"),
    workers: Optional[int] = typer.Option(None, "--workers", help="image decoding worker processes"),
    tag: Optional[str] = typer.Option(None, "--tag", help="model tag used as the folder name"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    model_args: Optional[str] = MODEL_ARGS_OPTION,
    runs: Optional[list[Path]] = typer.Option(None, "--from", help="no model: plot runs' grounding.json into --out"),
    max_image_pixels: int = typer.Option(40_000_000, "--max-image-pixels", help="refuse larger images (as `run`)"),
) -> None:
    """Score where the model looks, per layer, with the official GQA grounding definition."""
    if ctx.invoked_subcommand is not None:
        return
    from flexeval.analysis.grounding import read_summaries, write_grounding_tables
    from flexeval.analysis.grounding_run import GroundingConfig, run_grounding

    knobs = apply_model_args(ctx, model_args)
    model, dtype, device, selection, batch_size = (knobs[k] for k in ("model", "dtype", "device", "selection",
                                                                      "batch_size"))
    if runs:  # Fig. 2 from the files of earlier runs (e.g. one per model, in different --out folders)
        return typer.echo("table, plot: {}, {}".format(*write_grounding_tables(out, read_summaries(runs))))
    models = [model] if isinstance(model, str) else list(model or [])
    if not models or data_dir is None:
        raise FlexEvalError("flexeval grounding needs --model M and --data-dir D (or the `score` subcommand)")
    check_writable(out)
    for m in models:
        summary = run_grounding(GroundingConfig(model=m, data_dir=data_dir, out=out, layers=layers, token=token,
                                                map_size=map_size, limit=limit, batch_size=batch_size, dtype=dtype,
                                                device=device, selection=selection, workers=workers,
                                                tag=tag if len(models) == 1 else None, quiet=quiet,
                                                max_image_pixels=max_image_pixels))
        if summary is None:  # another rank of a torchrun launch: rank 0 reports
            return
        typer.echo(f"{summary['model']} (query row {summary['token']}, M={summary['map_size']}):\n"
                   + "\n".join(f"layer {r['layer']:>3}: {r['score']:7.2f}  (n={r['n']})" for r in summary["layers"]))
    typer.echo(f"grounding table: {summary['files']['csv']}\nplot: {summary['files']['png']}")


@grounding_app.command("score")
def grounding_score_cmd(
    questions: Path = typer.Option(..., "--questions", help="val_balanced_questions.json"),
    scenes: Path = typer.Option(..., "--scenes", help="val_sceneGraphs.json"),
    attentions: Path = typer.Option(..., "--attentions", help='[{"questionId": ..., "attention": M x M, x-first}]'),
    map_size: Optional[int] = typer.Option(None, "--map-size", help="check every map is M x M"),
) -> None:
    """The official eval.py --grounding score of a precomputed attention file."""
    from flexeval.analysis.grounding import score_attention_file

    res = score_attention_file(questions, scenes, attentions, map_size)
    typer.echo(f"Grounding: {res['score']:.2f}% ({res['n']} balanced questions)")


@app.command()
def speed(
    ctx: typer.Context,
    arch: str = typer.Option("llava-1.5-7b", "--arch", help="llava-1.5-7b | tiny: that shape with random weights"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a real checkpoint instead of --arch"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | float16 | bfloat16 | float32"),
    out: Path = typer.Option(Path("results/speed"), "--out", "-o", help="folder for speed.csv, speed.json, e2e data"),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="generated tokens per sample (TextVQA-like)"),
    new_tokens: Optional[int] = typer.Option(None, "--new-tokens", hidden=True),  # the old spelling: an error
    repeat: Optional[int] = typer.Option(None, "--repeat", help="timed calls per figure (default: 3 on CUDA, 1 on CPU)"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="batch search cap (default: 64 on CUDA, 4 on CPU)"),
    stage_batch: int = typer.Option(16, "--stage-batch", help="batch of the stage rows (capped by --max-batch)"),
    e2e_items: int = typer.Option(256, "--e2e-items", help="items of the end-to-end run (half V*-like, half TextVQA-like; 0: skip)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="end-to-end data workers (default: the runner's)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU intra-op threads (default: torch's)"),
    profile: bool = typer.Option(False, "--profile", help="also write torch.profiler tables of the best-batch calls"),
    model_args: Optional[str] = MODEL_ARGS_OPTION,
    count_only: bool = typer.Option(False, "--count-only", help="print the counted TFLOP per sample of every row; run nothing"),
    compile_decode: bool = typer.Option(False, "--compile", help="CUDA: the decode step via torch.compile(reduce-overhead)"),
) -> None:
    """Benchmark the fast path: ms/sample, TFLOP/s, ratios vs the reference / none / all, stages, end to end."""
    from flexeval.speed.measure import SpeedConfig, main

    if new_tokens is not None:
        raise FlexEvalError(f"--new-tokens is now --max-new-tokens (one spelling in every command): "
                            f"write --max-new-tokens {new_tokens}")
    knobs = apply_model_args(ctx, model_args)
    check_writable(out)
    model, dtype, device = (knobs[k] for k in ("model", "dtype", "device"))
    main(SpeedConfig(arch=arch, model=model, device=device, dtype=dtype, out=out, max_new_tokens=max_new_tokens,
                     repeat=repeat, max_batch=max_batch, stage_batch=stage_batch, e2e_items=e2e_items,
                     workers=workers, threads=threads, profile=profile, count_only=count_only,
                     compile_decode=compile_decode))


def main() -> None:  # pragma: no cover
    sys.exit(app())
