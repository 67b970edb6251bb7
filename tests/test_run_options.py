"""--bench lists, --limit fractions, --offset, --ids, --gen-kwargs, --question-style (flexeval/items.py)."""

from __future__ import annotations

import pytest

from flexeval.benchmarks import select_benchmarks
from flexeval.benchmarks.base import Sample
from flexeval.benchmarks.question_style import styled_sample
from flexeval.errors import FlexEvalError
from flexeval.items import (
    check_unprefixed_ids_found,
    items_to_run,
    limit_count,
    parse_gen_kwargs,
    parse_limit,
    read_id_file,
)


def samples(n, prefix="s"):
    return [Sample(id=f"{prefix}{i}", subset="x", question="q", image=None, target="t") for i in range(n)]


def test_bench_lists():
    assert [b.name for b in select_benchmarks("vstar")] == ["vstar"]
    assert [b.name for b in select_benchmarks("vstar, TextVQA,v*")] == ["vstar", "textvqa"]  # aliases, case, repeats
    assert [b.name for b in select_benchmarks("vstar,all")] == ["vstar", "magnifierbench", "textvqa", "rsvqa_hrben"]
    with pytest.raises(FlexEvalError, match="unknown benchmark 'nope'"):
        [b.name for b in select_benchmarks("vstar,nope")]
    with pytest.raises(FlexEvalError, match="empty name"):
        [b.name for b in select_benchmarks("vstar,")]


def test_limit_integer_or_fraction():
    assert parse_limit(None) is None
    assert parse_limit("50") == 50 and isinstance(parse_limit("50"), int)
    assert parse_limit("0.1") == 0.1
    for bad in ("0", "-3", "1.5", "ten", "0.0"):
        with pytest.raises(FlexEvalError, match="--limit"):
            parse_limit(bad)
    # ceil, as lm-eval: 0.1 x 191 = 19.1 -> 20; 0.5 x 3 = 1.5 -> 2; at least one item; never more than there are
    assert limit_count(0.1, 191) == 20
    assert limit_count(0.5, 3) == 2
    assert limit_count(0.001, 5) == 1
    assert limit_count(0.5, 0) == 0
    assert limit_count(10, 4) == 4 and limit_count(None, 7) == 7


def test_offset_then_limit_keep_the_benchmark_order():
    items = samples(10)
    chosen, info = items_to_run(items, "vstar", None, offset=3, limit=0.5)
    # 7 left after the offset; ceil(3.5) = 4: s3..s6
    assert [s.id for s in chosen] == ["s3", "s4", "s5", "s6"]
    assert info == {"loaded": 10, "offset": 3, "limit": 0.5, "kept": 4}
    with pytest.raises(FlexEvalError, match="--offset"):
        items_to_run(items, "vstar", None, offset=-1, limit=None)


def test_ids_file_selects_and_names_unknown_ids(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("s7\n\n  s2  \ns7\n")
    ids = read_id_file(f, ["vstar"])
    chosen, info = items_to_run(samples(10), "vstar", ids, offset=0, limit=None)
    assert [s.id for s in chosen] == ["s2", "s7"]  # benchmark order, not file order; once each
    assert info["after_ids"] == 2
    f.write_text("s1\nnope-1\ns3\nnope-2\n")
    with pytest.raises(FlexEvalError, match=r"ids.txt.*vstar has no item with id nope-1, nope-2"):
        items_to_run(samples(5), "vstar", read_id_file(f, ["vstar"]), offset=0, limit=None)
    f.write_text("\n\n")
    with pytest.raises(FlexEvalError, match="lists no ids"):
        read_id_file(f, ["vstar"])
    with pytest.raises(FlexEvalError, match="does not exist"):
        read_id_file(tmp_path / "missing.txt", ["vstar"])


def test_ids_with_several_benchmarks(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("vstar:direct_attributes/sa_1\ntextvqa:34602\n34603\nodd:id\n")
    ids = read_id_file(f, ["vstar", "textvqa"])
    assert ids.by_bench == {"vstar": ("direct_attributes/sa_1",), "textvqa": ("34602",)}
    assert ids.common == ("34603", "odd:id")  # "odd" is no benchmark: the colon is part of the id
    v = [Sample(id="direct_attributes/sa_1", subset="d", question="q", image=None, target="t")]
    t = [Sample(id=i, subset="x", question="q", image=None, target="t") for i in ("34602", "34603", "odd:id")]
    chosen_v, info_v = items_to_run(v, "vstar", ids, 0, None, n_benches=2)
    chosen_t, info_t = items_to_run(t, "textvqa", ids, 0, None, n_benches=2)
    assert [s.id for s in chosen_v] == ["direct_attributes/sa_1"]
    assert [s.id for s in chosen_t] == ["34602", "34603", "odd:id"]
    check_unprefixed_ids_found(ids, [info_v, info_t])  # every unprefixed id was found somewhere
    info_t["common_ids_found"] = ["34603"]
    with pytest.raises(FlexEvalError, match="no benchmark of this run has an item with id odd:id"):
        check_unprefixed_ids_found(ids, [info_v, info_t])
    with pytest.raises(FlexEvalError, match="names benchmark magnifierbench"):
        f.write_text("magnifierbench:x\n")
        read_id_file(f, ["vstar", "textvqa"])
    f.write_text("vstar:direct_attributes/sa_9\n")
    with pytest.raises(FlexEvalError, match="vstar has no item with id direct_attributes/sa_9"):
        items_to_run(v, "vstar", read_id_file(f, ["vstar", "textvqa"]), 0, None, n_benches=2)


def test_gen_kwargs_greedy_only():
    assert parse_gen_kwargs(None) == {}
    assert parse_gen_kwargs("max_new_tokens=64") == {"max_new_tokens": 64}
    # lmms-eval's V* settings: all mean greedy, so they are accepted and change nothing
    assert parse_gen_kwargs("max_new_tokens=16,temperature=0,top_p=1.0,num_beams=1,do_sample=false") == \
        {"max_new_tokens": 16}
    with pytest.raises(FlexEvalError, match="greedily only.*temperature"):
        parse_gen_kwargs("temperature=0.7")
    with pytest.raises(FlexEvalError, match="greedily only"):
        parse_gen_kwargs("num_beams=4")
    with pytest.raises(FlexEvalError, match="unknown key 'until'.*max_new_tokens"):
        parse_gen_kwargs("until=ASSISTANT:")
    with pytest.raises(FlexEvalError, match="not key=value"):
        parse_gen_kwargs("max_new_tokens")
    with pytest.raises(FlexEvalError, match="whole number"):
        parse_gen_kwargs("max_new_tokens=0")


def test_question_style_lmms_eval_capitalises_textvqa_only():
    s = Sample(id="1", subset="x", question="What does the Nokia sign say?", image=None, target=["a"])
    # str.capitalize: first letter upper, EVERY other letter lower (as lmms-eval's textvqa_doc_to_text)
    assert styled_sample("textvqa", s, "lmms-eval").question == "What does the nokia sign say?"
    assert styled_sample("textvqa", s, "release") is s
    assert styled_sample("vstar", s, "lmms-eval") is s
    with pytest.raises(FlexEvalError, match="--question-style"):
        styled_sample("textvqa", s, "vlmevalkit")
