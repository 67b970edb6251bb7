"""Where the model looks (the seed's appendix A.2): attention maps over the original image.

The maps come from the model's one fast path (`FlexLlava.attention_maps`): for a query row and
each asked layer, the head-summed post-softmax low-res attention over the 576 image tokens (a
24x24 map of the PADDED square the model sees) and, at layers >= S, the high-res tokens selected
from it. This module maps both back onto the original image frame and draws them.

Which query row `--token` means (rows are the model's forward rows; generation is greedy):
- `prompt-end`: the row of the last prompt token (`ASSISTANT:`'s last token). Its output predicts
  the first answer token; generation's first selection is made from it.
- `answer` (default): the row whose input is the first answer token (the first generated token),
  i.e. the answer's first token attending to the image; same as `0`.
- `N` (integer >= 0): the row whose input is generated token N (0-based); the answer must have at
  least N + 1 tokens (the end-of-sequence token counts).
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flexeval.errors import FlexEvalError
from flexeval.results.store import write_bytes_atomic

STYLES = ("flexeval", "release", "both")
TOKENS_HELP = "answer (row of the first answer token) | prompt-end (row of the last prompt token) | N (row of generated token N)"
DISPLAY_LONG_SIDE = 640  # px of the drawn image: legible, and small PNGs


# ---------------------------------------------------------------- options

def parse_layers(spec: str, num_layers: int) -> list[int]:
    """`all` or a comma list of 0-based layer indices."""
    if spec.strip().lower() == "all":
        return list(range(num_layers))
    try:
        layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError as e:
        raise FlexEvalError(f"--layers must be 'all' or comma-separated integers like 8,16,24, not {spec!r}") from e
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad or not layers:
        raise FlexEvalError(f"--layers {spec}: the model has layers 0..{num_layers - 1} (0-based); got {bad or 'none'}")
    return sorted(set(layers))


def parse_token(spec: str) -> int:
    """-> how many generated tokens the query row's call is fed: -1 for prompt-end, N for token N."""
    s = str(spec).strip().lower()
    if s == "prompt-end":
        return -1
    if s == "answer":
        return 0
    if s.isdigit():
        return int(s)
    raise FlexEvalError(f"--token must be one of: {TOKENS_HELP}; not {spec!r}")


def continuation_for(token: int, generated_ids: list[int], where: str) -> list[int]:
    """The generated tokens the teacher-forced call is fed so that its last row is the asked one."""
    if token < 0:
        return []
    if len(generated_ids) < token + 1:
        raise FlexEvalError(f"{where}: the answer has {len(generated_ids)} tokens, so --token {token} (the row of "
                            f"generated token {token}) does not exist; use a smaller N, 'answer' or 'prompt-end'")
    return list(generated_ids[: token + 1])


def token_label(token: int) -> str:
    return "last prompt token" if token < 0 else ("first answer token" if token == 0 else f"answer token {token}")


# ---------------------------------------------------------------- geometry

def square_to_frame(grid: torch.Tensor, orig_size: tuple[int, int], out_hw: tuple[int, int],
                    mode: str = "bilinear") -> np.ndarray:
    """A map over the pad-to-square image (grid [g, g], row-major, row 0 at the top) sampled at the
    pixel centres of an out_hw = (H, W) raster over the ORIGINAL image frame (w, h) = orig_size.

    pad_to_square pastes the image at ((side - w) // 2, (side - h) // 2) of a side = max(w, h)
    square (model/image.py); every later resize is of the whole square, so this is the one offset.
    """
    w, h = orig_size
    side = max(w, h)
    off_x, off_y = (side - w) // 2, (side - h) // 2
    out_h, out_w = out_hw
    xs = (off_x + (torch.arange(out_w, dtype=torch.float64) + 0.5) * w / out_w) / side  # 0..1 over the square
    ys = (off_y + (torch.arange(out_h, dtype=torch.float64) + 0.5) * h / out_h) / side
    gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
    sample_at = torch.stack([gx, gy], dim=-1)[None].float()  # grid_sample wants (x, y)
    out = F.grid_sample(grid.float()[None, None], sample_at, mode=mode, padding_mode="border", align_corners=False)
    return out[0, 0].numpy()


def lowres_grid(flat: torch.Tensor) -> torch.Tensor:
    n = int(round(math.sqrt(flat.numel())))
    return flat.reshape(n, n)


# ---------------------------------------------------------------- computing maps

@dataclass
class MapResult:
    answer: str
    generated_ids: list[int]
    maps: object  # model.flex_llava.AttentionMaps
    token: int


def compute_maps(model, prompts: list[str], images: list, token: int, layers: list[int], max_new_tokens: int,
                 names: list[str]) -> list[MapResult]:
    """Greedy answers, then the asked row's maps: one batched maps call (every continuation has token + 1
    tokens, so the rows that use high-res are the same for all samples)."""
    gens = generate_answers(model, prompts, images, max(max_new_tokens, token + 1))
    conts = [continuation_for(token, g.token_ids, n) for g, n in zip(gens, names)]
    maps = model.attention_maps(prompts, images, conts, layers)
    return [MapResult(g.text, g.token_ids, m, token) for g, m in zip(gens, maps)]


def generate_answers(model, prompts: list[str], images: list, max_new_tokens: int) -> list:
    """Greedy answers to finished prompts (FlexLlava.generate_prompts)."""
    return model.generate_prompts(prompts, images, [max_new_tokens] * len(prompts))


# ---------------------------------------------------------------- drawing

def display_size(orig_size: tuple[int, int]) -> tuple[int, int]:
    w, h = orig_size
    scale = min(1.0, DISPLAY_LONG_SIDE / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def start_figure(image):
    """pyplot (Agg backend) and the image as the panels show it: (plt, original size, (h, w) shown, pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orig = image.size
    dw, dh = display_size(orig)
    return plt, orig, (dh, dw), np.asarray(image.convert("RGB").resize((dw, dh)))


def draw_map(ax, shown, flat_map, mask, orig, hw: tuple[int, int], linewidth: float):
    """One panel: the image, the map over it, the selected high-res blocks outlined; -> the map's artist."""
    ax.imshow(shown)
    im = ax.imshow(square_to_frame(lowres_grid(flat_map), orig, hw), cmap="jet", alpha=0.45, interpolation="nearest")
    if mask is not None:
        sel = square_to_frame(lowres_grid(mask.float()), orig, hw, mode="nearest")
        if sel.max() > 0.5 and sel.min() < 0.5:
            ax.contour(sel, levels=[0.5], colors="white", linewidths=linewidth)
    return im


def render(image, result: MapResult, question: str, layers: list[int], out: Path, title_extra: str = "") -> Path:
    """One panel per layer: the original image, the map over it (bilinear, colour bar), the high-res
    tokens selected at that layer outlined; question, answer, layer and selected ratio in the titles."""
    plt, orig, (dh, dw), shown = start_figure(image)
    n = len(layers)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    panel_w = 4.2
    panel_h = panel_w * 0.8 * dh / dw + 0.5  # the colour bar takes ~20% of a panel's width
    fig, axes = plt.subplots(rows, cols, figsize=(max(panel_w * cols, 5.5), panel_h * rows + 1.3), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, layers):
        mask = result.maps.masks.get(layer)
        im = draw_map(ax, shown, result.maps.maps[layer], mask, orig, (dh, dw), linewidth=1.6)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        if mask is not None:
            ratio = f"selected {float(mask.float().mean()):.1%} of high-res"
        else:
            ratio = "no selection at this layer"
        ax.set_title(f"layer {layer}: {ratio}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    q = textwrap.shorten(question.replace("\n", " "), 150)
    printable = "".join(c if c.isprintable() else "?" for c in result.answer.replace("\n", " "))
    a = textwrap.shorten(printable, 80) or "(empty)"
    width = int(max(panel_w * cols, 5.5) * 13)  # characters that fit the figure at fontsize 10
    lines = [textwrap.fill(f"Q: {q}", width), textwrap.fill(f"A: {a}{title_extra}", width),
             textwrap.fill(f"map of the {token_label(result.token)}'s row; outline: selected high-res blocks", width)]
    text = "\n".join(lines)
    fig_h = fig.get_size_inches()[1]
    fig.suptitle(text, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - (text.count("\n") + 1.6) * 0.19 / fig_h))
    return save_figure(fig, Path(out), dpi=110)


def check_style(style: str, token: str | None, layers: str | None) -> tuple[str, str]:
    """-> the --token and --layers to use: the release style reads the last prompt row, every layer,
    unless told otherwise."""
    if style not in STYLES:
        raise FlexEvalError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    release = style == "release"
    return token or ("prompt-end" if release else "answer"), layers or ("all" if release else "8,9,10,11")


def draw(image, result: MapResult, question: str, layers: list[int], out: Path, style: str,
         title_extra: str = "") -> list[Path]:
    """--style flexeval: `render` (continuous map + selected blocks); release: the release visualiser's
    grid (flexeval/analysis/release_style.py); both: the two, the release one as <name>-release.png."""
    from flexeval.analysis.release_style import render_release

    written = []
    if style in ("flexeval", "both"):
        written.append(render(image, result, question, layers, out, title_extra))
    if style in ("release", "both"):
        path = out if style == "release" else out.with_name(f"{out.stem}-release.png")
        q = textwrap.shorten(question.replace("\n", " "), 150)
        heading = (f"Q: {q}{title_extra}\nrelease style: {token_label(result.token)}'s row, top 20%, min-max, "
                   f"> 64/255, 8x8 max pool; title: layer|mean")
        written.append(render_release(image, result.maps.maps, layers, path, heading))
    return written


def draw_strip(model, prompt: str, image, pil, question: str, strip: int, out: Path, max_new_tokens: int) -> Path:
    """--strip LAYER: one map per generated answer token at that layer (flexeval/analysis/token_strip.py)."""
    from flexeval.analysis.token_strip import render_strip, strip_maps

    layer = parse_layers(str(strip), model.cfg.num_layers)[0]
    result = strip_maps(model, prompt, image, layer, max_new_tokens)
    return render_strip(pil, result, layer, question, out.with_name(f"{out.stem}-strip-layer{layer}.png"))


def save_figure(fig, path: Path, dpi: int) -> Path:
    """Save a matplotlib figure as PNG atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())  # temp + rename, the user's file mode (flexeval/results/store.py)
    return path


# ---------------------------------------------------------------- the two CLI modes

def _load(model: str, dtype: str, device: str, selection: str | None):
    from flexeval.model import RunOptions, load_pretrained

    return load_pretrained(model, dtype=dtype, device=device, options=RunOptions(selection=selection))


def attention_for_image(model: str, image: Path, prompt: str, layers: str, token: str, out: Path,
                        dtype: str = "auto", device: str = "auto", selection: str | None = None,
                        max_new_tokens: int = 16, style: str = "flexeval", strip: int | None = None,
                        max_image_pixels: int | None = None) -> dict:
    """`flexeval attention --image`: one picture; the model puts the prompt in its template (LLaVA v1)."""
    from flexeval.benchmarks.base import open_image
    from flexeval.requests import Generate

    if not Path(image).is_file():
        raise FlexEvalError(f"image {image} not found")
    tok = parse_token(token)
    m = _load(model, dtype, device, selection)
    picked = parse_layers(layers, m.cfg.num_layers)
    from flexeval.model.length import check_request_length

    pil = open_image(str(image), **({"max_pixels": max_image_pixels} if max_image_pixels else {}))
    text = m.prompt_text(Generate(question=prompt))
    check_request_length(m, Generate(question=prompt, max_new_tokens=max(max_new_tokens, tok + 1)), text)
    processed = m.preprocess(pil)
    res = compute_maps(m, [text], [processed], tok, picked, max_new_tokens, [str(image)])[0]
    written = draw(pil, res, prompt, picked, Path(out), style)
    if strip is not None:
        written.append(draw_strip(m, text, processed, pil, prompt, strip, Path(out), max_new_tokens))
    return {"out": str(out), "answer": res.answer, "layers": picked, "token": token_label(tok),
            "written": [str(p) for p in written]}


def attention_for_bench(bench: str, model: str, data_dir: Path | None, ids: str | None, limit: int | None,
                        layers: str, token: str, out: Path, dtype: str = "auto", device: str = "auto",
                        selection: str | None = None, protocol: str | None = None, tag: str | None = None,
                        batch_size: int = 4, max_new_tokens: int | None = None, style: str = "flexeval",
                        strip: int | None = None, max_image_pixels: int | None = None) -> list[Path]:
    """`flexeval attention --bench`: pictures of chosen items, under <out>/<model tag>/<bench>/attention/, run
    by the execution core (analysis/maps_work.py AttentionWork: resumable, locked, run.json, torchrun)."""
    from flexeval.analysis.maps_work import AttentionWork
    from flexeval.benchmarks import get_benchmark
    from flexeval.evaluate import RunConfig, on_cluster, results_folder, run_benchmark
    from flexeval.items import IdList

    b = get_benchmark(bench)
    protocol = b.check_protocol(protocol)
    data_dir = Path(data_dir or Path("data") / b.name)
    wanted = [x.strip() for x in ids.split(",") if x.strip()] if ids else None
    if wanted:
        known = {s.id for s in b.load(data_dir, protocol=protocol)}
        missing = [x for x in wanted if x not in known]
        if missing:
            raise FlexEvalError(f"--ids: {', '.join(missing)} not in {b.name} at {data_dir}"
                                + (f" (ids look like {next(iter(known))!r})" if known else ""))
    tok = parse_token(token)
    cfg = RunConfig(bench=b.name, model=model, data_dir=data_dir, out=Path(out), limit=None if wanted else limit,
                    batch_size=str(batch_size), dtype=dtype, device=device, selection=selection, tag=tag, quiet=True,
                    **({"max_image_pixels": max_image_pixels} if max_image_pixels else {}))

    def body(cfg: RunConfig, cluster) -> list[Path]:
        m = _load(model, dtype, cfg.device, selection)
        work = AttentionWork(parse_layers(layers, m.cfg.num_layers), tok, max_new_tokens,
                             results_folder(cfg, m, b) / AttentionWork.folder, style=style, strip=strip, model=m,
                             max_image_pixels=cfg.max_image_pixels)
        chosen = IdList(Path("--ids"), tuple(wanted), {}) if wanted else None
        run_benchmark(b, m, cfg, data_dir, protocol, ids=chosen, cluster=cluster, work=work)
        return work.written

    return on_cluster(cfg, body)[0]


# ---------------------------------------------------------------- the planted-hot-spot check

PLANTED_SIZES = {"wide": (1600, 900), "tall": (700, 1400), "square": (1000, 1000)}


def planted_hotspot(orig_size: tuple[int, int], marker_xy: tuple[int, int], image_size: int = 1008) -> dict:
    """A generated image with a red disc at `marker_xy`, through the model's real image path
    (model/image.py preprocess); the 24x24 cell the disc lands in is found from the preprocessed
    pixels, an attention map is forced to that one cell (and the high-res tokens under it selected),
    and both are mapped back to the original frame as the pictures do. -> image, maps and where the
    hot spot lands vs where the disc is."""
    from PIL import Image, ImageDraw

    from flexeval.model.image import CLIP_MEAN, CLIP_STD, preprocess

    w, h = orig_size
    img = Image.new("RGB", (w, h), (70, 110, 90))
    draw = ImageDraw.Draw(img)
    for k in range(0, w, max(1, w // 10)):  # a faint grid, so the frame is visible in the picture
        draw.line([(k, 0), (k, h)], fill=(90, 130, 110), width=2)
    rad = max(w, h) // 120
    x0, y0 = marker_xy
    draw.ellipse([x0 - rad, y0 - rad, x0 + rad, y0 + rad], fill=(255, 0, 0))
    pixels = preprocess(img, image_size).pixels
    rgb = pixels * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
    red = (rgb[0] > 0.8) & (rgb[1] < 0.3) & (rgb[2] < 0.3)
    ys, xs = torch.nonzero(red, as_tuple=True)
    cell_px = image_size / 24
    row, col = int(ys.float().mean() / cell_px), int(xs.float().mean() / cell_px)
    lowres = torch.zeros(24, 24)
    lowres[row, col] = 1.0
    hd = torch.zeros(72, 72, dtype=torch.bool)
    hd[row * 3:row * 3 + 3, col * 3:col * 3 + 3] = True
    heat = square_to_frame(lowres, orig_size, (h, w))
    fy, fx = np.unravel_index(int(np.argmax(heat)), heat.shape)
    sel = square_to_frame(hd.float(), orig_size, (h, w), mode="nearest") > 0.5
    sy, sx = np.nonzero(sel)
    return {"image": img, "cell": (row, col), "expected": (x0, y0), "found": (int(fx), int(fy)),
            "selected_box": (int(sx.min()), int(sy.min()), int(sx.max()), int(sy.max())),
            "cell_side_px": max(w, h) / 24, "lowres": lowres.flatten(), "hd": hd.flatten()}


def planted_check_png(out: Path) -> Path:
    """The check picture: wide, tall and square images, each with a planted one-cell map; the hot spot
    and the outline must sit on the red disc."""
    from flexeval.model.flex_llava import AttentionMaps

    out = Path(out)
    paths = []
    for name, (w, h) in PLANTED_SIZES.items():
        r = planted_hotspot((w, h), (int(w * 0.7), int(h * 0.3)))
        res = MapResult(answer=f"red disc at {r['expected']}, hot spot at {r['found']}, cell {r['cell']}",
                        generated_ids=[], maps=AttentionMaps({0: r["lowres"]}, {0: r["hd"]}, 72 * 72), token=0)
        paths.append(render(r["image"], res, f"planted hot spot, {name} {w}x{h}", [0],
                            out.with_name(f"{out.stem}-{name}.png")))
    return _stack_pngs(paths, out)


def _stack_pngs(paths: list[Path], out: Path) -> Path:
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in paths]
    canvas = Image.new("RGB", (sum(i.width for i in ims), max(i.height for i in ims)), "white")
    x = 0
    for im in ims:
        canvas.paste(im, (x, 0))
        x += im.width
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    write_bytes_atomic(out, buf.getvalue())
    for p in paths:
        p.unlink()
    return out
