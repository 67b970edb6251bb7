"""The report's pages as HTML text (static; the run list's filters are the one script)."""

from __future__ import annotations

import json
import math
from html import escape

from flexeval.analysis.coverage import COVERAGE_FIELDS

from .assets import VS_LOADER


def page(title: str, body: str, depth: int, head: str = "", attrs: str = "") -> str:
    """A whole page; `depth` = folders below report/ (for the style sheet's relative path)."""
    up = "../" * depth
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<link rel="stylesheet" href="{up}assets/style.css">{head}</head>\n<body{attrs}>\n{body}\n</body></html>\n')


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and digits == 0:
        return str(int(x)) if x.is_integer() else f"{x:.2f}"
    return f"{x:.{digits}f}" if isinstance(x, float) else escape(str(x))


def accuracy_table(rows: list[dict]) -> str:
    head = "<tr><th>subset</th><th>n</th><th>correct</th><th>accuracy %</th><th>stderr</th><th>95% interval</th></tr>"
    body = "".join(
        f'<tr class="acc"><td>{escape(str(r.get("subset")))}</td><td class="num">{fmt(r.get("n"), 0)}</td>'
        f'<td class="num">{fmt(r.get("correct"), 0)}</td><td class="num">{fmt(r.get("accuracy"))}</td>'
        f'<td class="num">{fmt(r.get("stderr"))}</td>'
        f'<td class="num">{fmt(r.get("ci95_low"))} – {fmt(r.get("ci95_high"))}</td></tr>' for r in rows)
    return f'<table class="accuracy">{head}{body}</table>'


def index_html(runs: list, notes: dict, has_plot: bool) -> str:
    parts = ["<h1>flexeval report</h1>",
             f'<p class="muted">{len(runs)} runs. Accuracy in percent; intervals: percentile bootstrap over '
             f'items (seeded). Open a run for its items.</p>']
    if has_plot:
        parts.append('<h2>V* target coverage</h2><p>Overall recall of the target boxes per selecting layer '
                     '(<a href="../target_coverage.csv">target_coverage.csv</a>).</p>'
                     '<img class="coverage-plot" src="../target_coverage.png" alt="target recall per layer">')
    for r in runs:
        meta = " · ".join(f"{k} {escape(str(v))}" for k, v in (("benchmark", r.bench), ("protocol", r.protocol),
                                                               ("selection", r.selection)) if v)
        note = f'<p class="note">{escape(notes[r.slug])}</p>' if notes.get(r.slug) else ""
        parts.append(f'<section class="run" id="{r.slug}"><h2><a href="runs/{r.slug}/index.html">'
                     f'{escape(r.label)} / {escape(r.bench)}</a></h2><p class="muted">{meta} · '
                     f'{len(r.records)} items</p>{note}{accuracy_table(r.accuracy)}</section>')
    return page("flexeval report", "\n".join(parts), 0)


def items_js(slug: str, records: list[dict]) -> str:
    """window.FLEX_ITEMS[slug] = [[k, id, subset, score, prediction (cut to 80 chars)], ...]"""
    rows = []
    for k, r in enumerate(records):
        score = r.get("score")
        score = None if score is None else (int(score) if float(score) in (0.0, 1.0) else round(float(score), 4))
        pred = r.get("prediction")
        pred = "" if pred is None else str(pred)
        rows.append([k, str(r.get("id")), str(r.get("subset")), score, pred[:80]])
    data = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return f"window.FLEX_ITEMS = window.FLEX_ITEMS || {{}};\nwindow.FLEX_ITEMS[{json.dumps(slug)}] = {data};\n"


def coverage_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r["subset"] == "overall"]
    if not rows:
        return ""
    head = "<tr><th>answers</th><th>layer</th><th>n</th>" + "".join(f"<th>{k}</th>" for k in COVERAGE_FIELDS) + "</tr>"
    body = "".join(f'<tr class="coverage"><td>{r["answers"]}</td><td class="num">{r["layer"]}</td>'
                   f'<td class="num">{r["n"]}</td>' + "".join(f'<td class="num">{fmt(r[k], 3)}</td>'
                                                             for k in COVERAGE_FIELDS) + "</tr>" for r in rows)
    return (f'<h2>Target coverage (overall; per subset in target_coverage.csv)</h2>'
            f'<table class="coverage">{head}{body}</table>')


def list_html(run, subsets: list[str], comparable: list, coverage_rows: list[dict], per_page: int) -> str:
    sub_opts = "".join(f'<option value="{escape(s)}">{escape(s)}</option>' for s in subsets)
    vs_opts = "".join(f'<option value="{c.slug}">{escape(c.label)}</option>' for c in comparable)
    body = f"""<p><a href="../../index.html">« all runs</a></p>
<h1>{escape(run.label)} / {escape(run.bench)}</h1>
{accuracy_table(run.accuracy)}
{coverage_table(coverage_rows)}
<h2>Items</h2>
<form id="filters" method="get">
<label>subset <select name="subset"><option value="">all</option>{sub_opts}</select></label>
<label>answers <select name="answers"><option value="">all</option><option value="correct">correct</option>
<option value="wrong">wrong</option></select></label>
<label>compare with <select name="vs"><option value="">(no other run)</option>{vs_opts}</select></label>
<label>items <select name="flipped"><option value="">all</option><option value="flipped">flipped</option>
<option value="same">not flipped</option></select></label>
<button type="submit">apply</button> <span id="vs-status" class="muted"></span></form>
<p id="count"></p>
<table class="items"><thead><tr><th>#</th><th>id</th><th>subset</th><th>prediction</th><th>score</th></tr></thead>
<tbody id="items"></tbody></table>
<nav class="pager" id="pager"></nav>
<script src="items.js"></script>
<script src="../../assets/list.js"></script>"""
    return page(f"{run.label} / {run.bench}", body, 2, head=f"<script>{VS_LOADER}</script>",
                attrs=f' data-run="{run.slug}" data-per-page="{per_page}"')


def _figure(thumb: str | None, size, boxes: list, full: str | None, why: str | None) -> str:
    if thumb is None:
        return f'<p class="note">no image: {escape(why or "not available")}</p>'
    w, h = size
    rects = "".join('<rect class="target-box" x="{:g}" y="{:g}" width="{:g}" height="{:g}"/>'.format(
        *(round(v, 2) for v in b)) for b in boxes)
    scale = min(1.0, 480 / max(w, h))
    svg = (f'<svg class="sample-image" viewBox="0 0 {w} {h}" width="{round(w * scale)}" height="{round(h * scale)}">'
           f'<image href="../../../../thumbs/{thumb}" x="0" y="0" width="{w}" height="{h}"/>{rects}</svg>')
    link = f'<br><a href="file://{escape(full)}">full image</a>' if full else ""
    caption = f"{w}×{h} px" + (f"; {len(boxes)} target box(es) in red" if boxes else "")
    return f"<figure>{svg}<figcaption>{caption}{link}</figcaption></figure>"


def _answers(r: dict) -> str:
    opts, nll = r.get("options") or [], r.get("option_nll")
    if opts and isinstance(nll, list):
        rows = ""
        for o, v in zip(opts, nll):
            cls = " ".join(c for c, on in (("predicted", o == r.get("prediction")), ("target", o == r.get("target"))) if on)
            rows += f'<tr class="option {cls}"><td>{escape(str(o))}</td><td class="num">{fmt(v, 4)}</td></tr>'
        return f'<table class="options"><tr><th>option</th><th>mean NLL</th></tr>{rows}</table>'
    target = r.get("target")
    answers = target if isinstance(target, list) else [target]
    return (f'<p>reply: <b class="prediction">{escape(str(r.get("prediction")))}</b></p>'
            f'<p>answers: {escape(", ".join(str(a) for a in answers))}</p>')


def _coverage(r: dict) -> str:
    tc = r.get("target_coverage")
    if not isinstance(tc, dict):
        return ""
    head = "<tr><th>layer</th>" + "".join(f"<th>{k}</th>" for k in COVERAGE_FIELDS) + "</tr>"
    body = "".join(f"<tr><td>{layer}</td>" + "".join(f'<td class="num">{fmt(tc[k][i], 3)}</td>' for k in COVERAGE_FIELDS)
                   + "</tr>" for i, layer in enumerate(tc["layers"]))
    return f'<h2>Target coverage (prompt-end row)</h2><table class="sample-coverage">{head}{body}</table>'


def sample_html(run, k: int, n: int, r: dict, image: dict, attention: str | None) -> str:
    """One item: image with target boxes, question, options/NLLs or reply/answers, score, coverage, map."""
    nav = (f'<a href="../../index.html">« {escape(run.label)} / {escape(run.bench)}</a> · '
           + (f'<a href="../{(k - 1) // 1000}/{k - 1}.html">previous</a> · ' if k > 0 else "")
           + (f'<a href="../{(k + 1) // 1000}/{k + 1}.html">next</a>' if k + 1 < n else ""))
    score = r.get("score")
    extra = "".join(f'<p class="note">{escape(f)}: {escape(str(r[f]))}</p>' for f in ("skipped", "non_finite") if r.get(f))
    att = (f'<h2>Attention maps</h2><img class="attention" src="{escape(attention)}" alt="attention maps">'
           if attention else '<p class="muted">No attention picture for this item (write one with '
                             '<code>flexeval attention --bench ... --ids ITEM</code>).</p>')
    body = f"""<p>{nav}</p>
<h1>{escape(str(r.get("id")))} <span class="muted">({escape(str(r.get("subset")))})</span></h1>
{_figure(image.get("thumb"), image.get("size"), image.get("boxes", []), image.get("full"), image.get("why"))}
<h2>Question</h2><p class="question">{escape(str(r.get("question")))}</p>
{_answers(r)}
<p>score: <b class="score">{fmt(score)}</b>{'' if r.get("hd_selected_ratio") is None else
    f' · high-res tokens selected: {100 * r["hd_selected_ratio"]:.1f}%'}</p>
{extra}{_coverage(r)}{att}"""
    return page(f"{r.get('id')} · {run.label}", body, 4)
