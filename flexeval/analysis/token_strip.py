"""`flexeval attention --strip`: where the model looks while it generates each answer token (the seed's A.2).

One layer, one panel per generated token: panel k is the map of the row that PRODUCES token k, i.e.
the last prompt token's row for the first token and the row of token k - 1 after that (the rows
`--token prompt-end`, 0, 1, ... of `flexeval attention`), with the high-res blocks selected at that
layer outlined. Each panel is its own teacher-forced call (`FlexLlava.attention_maps` over the prompt
and the first k generated tokens), so every map is exactly generation's for that step.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

PANELS_PER_ROW = 8


@dataclass
class StripResult:
    answer: str
    pieces: list[str]  # the generated tokens as the tokenizer spells them
    maps: list  # one AttentionMaps per generated token (the row producing it)


def strip_maps(model, prompt: str, image, layer: int, max_new_tokens: int) -> StripResult:
    """Greedy answer, then the maps of every row that produced one of its tokens, at `layer`."""
    from flexeval.analysis.attention import generate_answers

    gen = generate_answers(model, [prompt], [image], max_new_tokens)[0]
    maps = [model.attention_maps([prompt], [image], [list(gen.token_ids[:k])], [layer])[0]
            for k in range(len(gen.token_ids))]
    return StripResult(gen.text, [model.tokenizer.piece(int(t)) for t in gen.token_ids], maps)


def render_strip(image, result: StripResult, layer: int, question: str, out: Path) -> Path:
    """Panels in rows of PANELS_PER_ROW, each titled with the token it produces."""
    from flexeval.analysis.attention import draw_map, save_figure, start_figure

    plt, orig, (dh, dw), shown = start_figure(image)
    n = max(1, len(result.maps))
    cols = min(PANELS_PER_ROW, n)
    rows = math.ceil(n / cols)
    panel_w = 2.4
    fig, axes = plt.subplots(rows, cols, figsize=(max(panel_w * cols, 6), (panel_w * dh / dw + 0.45) * rows + 1.1),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, m) in enumerate(zip(axes.flat, result.maps)):
        draw_map(ax, shown, m.maps[layer], m.masks.get(layer), orig, (dh, dw), linewidth=1.2)
        piece = "".join(c if c.isprintable() else "?" for c in result.pieces[k]).replace("\u2581", " ")
        ax.set_title(f"{k}: -> {piece.strip() or repr(piece)}", fontsize=8)
    q = textwrap.shorten(question.replace("\n", " "), 120)
    a = textwrap.shorten(result.answer.replace("\n", " "), 80) or "(empty)"
    fig.suptitle(f"Q: {q}\nA: {a}\nlayer {layer}: panel k is the row producing token k "
                 f"(prompt end, then token k-1); outline: high-res blocks selected", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_size_inches()[1]))
    return save_figure(fig, Path(out), dpi=100)
