"""The high-res K/V cache across decode steps (model/hires_cache.py, model/decode.py): the same
output as the literal reference in every selection mode, at batch 1 and batched, with rows that
stop early, with the step run sync-free; the blocks projected once; the budget's fallback."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import gen_items

import flexeval.model.flex_llava as flex_llava
from flexeval.model import reference
from flexeval.model.hires_cache import block_layout
from flexeval.model.selection import center_selection
from flexeval.speed.counting import count_work
from flexeval.speed.decode_check import HostSync, check, guarded_steps

N_NEW = 5
IDX = [0, 1, 3]  # wide, tall, small: different prompt lengths (left padding) and paddings


def _model(variant, selection, eos=None, budget=None):
    m = variant(selection=selection)
    if eos is not None:
        tok = copy.copy(m.tokenizer)
        tok.eos_id = eos
        m = type(m)(m.lm, m.vision, tok, m.cfg, m.run_options, m.device, m.dtype)
    else:
        m = m.with_options(m.run_options)
    m.sync_free_decode = True  # the CUDA loop: no early exit, cut at EOS afterwards
    if budget is not None:
        m.hires_cache_bytes = budget
    return m


@pytest.fixture()
def caches(monkeypatch):
    """Every HiResKVCache flex_llava creates, in order."""
    made = []
    inner = flex_llava.new_hires_cache

    def recording(*args, **kw):
        c = inner(*args, **kw)
        made.append(c)
        return c

    monkeypatch.setattr(flex_llava, "new_hires_cache", recording)
    return made


@pytest.mark.parametrize("n_cells", [9, 8])
def test_blocks_are_the_selection_cells_at_every_zoom(n_cells):
    for hd_grid in (48, 72, 96):
        tokens, valid = block_layout(hd_grid, n_cells)
        seen = torch.zeros(hd_grid * hd_grid, dtype=torch.long)
        for k in range(n_cells ** 2):
            cells = torch.zeros(1, 1, n_cells, n_cells)
            cells.view(-1)[k] = 1
            want = F.interpolate(cells, size=(hd_grid, hd_grid), mode="nearest").flatten().nonzero().flatten()
            assert torch.equal(tokens[k][valid[k]], want), (hd_grid, k)
            seen[want] += 1
        assert bool((seen == 1).all())  # a partition of the tokens
    tokens, valid = block_layout(72)
    assert tokens.shape == (81, 64) and bool(valid.all())


@pytest.mark.parametrize("selection", ["attention", "center", "all"])
def test_cached_generation_equals_the_reference_batched_alone_and_with_early_eos(selection, variant, samples,
                                                                               release_images, caches):
    prompts, images = [samples[i].asked for i in IDX], [release_images[i] for i in IDX]
    plain = _model(variant, selection).generate(gen_items(prompts, images, N_NEW))
    eos = plain[0].token_ids[2]  # the first sample stops after 3 tokens
    assert any(eos not in r.token_ids for r in plain[1:]), [r.token_ids for r in plain]
    m = _model(variant, selection, eos=eos)
    batched = m.generate(gen_items(prompts, images, N_NEW))
    assert len(batched[0].token_ids) == plain[0].token_ids.index(eos) + 1 < N_NEW
    for b, i in enumerate(IDX):
        alone = m.generate(gen_items([prompts[b]], [images[b]], N_NEW))[0]
        ref_ids, _ = reference.generate(m, samples[i].prompt, images[b], N_NEW)
        assert batched[b].token_ids == alone.token_ids == ref_ids, (selection, samples[i].name)
        assert batched[b].hd_selected_ratio == pytest.approx(alone.hd_selected_ratio, abs=1e-7)
    assert caches and all(c.mode == selection and c.fallbacks == 0 for c in caches)


def _projected(model, prompts, images, n_new):
    with count_work(model) as counted:
        res = model.generate(gen_items(prompts, images, n_new))
    return counted["hires_projected_tokens"], [r.token_ids for r in res]


def test_center_projects_once_per_sample_and_layer(variant, samples, release_images):
    m = _model(variant, "center")
    hd_layers = m.cfg.num_layers - m.options.select_layer - 1
    centre = int(center_selection(1, 1, 72, "cpu").sum())
    for b in (1, 2):
        prompts, images = [samples[0].asked] * b, [release_images[0]] * b
        one, _ = _projected(m, prompts, images, 1)
        eight, toks = _projected(m, prompts, images, 8)
        assert len(toks[0]) == 8
        assert one == eight == b * hd_layers * centre


@pytest.mark.parametrize("selection", ["attention", "random"])
def test_blocks_are_projected_once_and_a_full_budget_falls_back(selection, variant, samples, release_images, caches):
    prompts, images = [samples[i].asked for i in IDX], [release_images[i] for i in IDX]
    cached, toks = _projected(_model(variant, selection), prompts, images, N_NEW)
    uncached, toks0 = _projected(_model(variant, selection, budget=0), prompts, images, N_NEW)
    m = _model(variant, selection)
    block_bytes = (64 if selection == "attention" else 81) * m.cfg.num_kv_heads * m.cfg.head_dim * 2 * 4 * (m.cfg.num_layers - m.options.select_layer - 1)
    small, toks_small = _projected(_model(variant, selection, budget=6 * block_bytes), prompts, images, N_NEW)
    assert toks == toks0 == toks_small
    full, none_fit, some_fit = caches[0], caches[1], caches[2]
    assert full.slots == full.n_blocks == (81 if selection == "attention" else 64) and none_fit.slots == 0 and some_fit.slots == 6
    assert full.fallbacks == 0 and none_fit.fallbacks > 0 and some_fit.fallbacks > 0
    # the union of blocks, once, is less than every step's selection again (random's draws barely overlap)
    assert cached < uncached if selection == "attention" else cached <= uncached
    assert cached <= 3 * 81 * 64 * 3  # at most every block once per sample and layer (3 samples, layers 9-11)


@pytest.fixture()
def syncs_raise():
    """Inside every decode step, reading a tensor on the host raises HostSync."""
    with guarded_steps(torch.device("cpu")):
        yield


@pytest.mark.parametrize("selection", ["center", "all", "none"])
def test_a_decode_step_reads_nothing_back_on_the_host(selection, variant, samples, release_images, syncs_raise):
    prompts, images = [samples[i].asked for i in IDX], [release_images[i] for i in IDX]
    m = _model(variant, selection)
    got = m.generate(gen_items(prompts, images, 4))
    want = variant(selection=selection).generate(gen_items(prompts, images, 4))  # the CPU loop, early exit
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert all(len(r.token_ids) == 4 for r in got)


def test_the_sync_guard_catches_the_block_cache_count(variant, samples, release_images, syncs_raise):
    """Attention selection still asks the host how many blocks are new (one sync per high-res layer)."""
    with pytest.raises(HostSync):
        _model(variant, "attention").generate(gen_items([samples[0].asked], [release_images[0]], 3))


def test_decode_check_reports_no_sync_for_the_static_path():
    res = check("tiny", "cpu", "float32", batch=2, new_tokens=3, compile_step=False, repeat=1)
    assert res["host_sync_in_step"] is None and res["eager_ms_per_call"] > 0 and res["batch"] == 2


@pytest.mark.parametrize("every, calls", [(0, 8), (1, 2), (4, 4)])
def test_done_is_read_back_only_between_steps_and_the_output_is_the_same(every, calls, variant, samples,
                                                                         release_images, monkeypatch):
    """A row that emits EOS at its 2nd token, max_new_tokens 8: never asking runs all 7 steps, asking every
    step stops after the 1st, every 4th after the 3rd: the same tokens each time (cut at EOS after the loop)."""
    import flexeval.model.decode as decode
    from flexeval.model.llama import Backbone

    first = _model(variant, "center").generate(gen_items([samples[0].asked], [release_images[0]], 2))[0].token_ids
    m = _model(variant, "center", eos=first[1])
    monkeypatch.setattr(decode, "done_check_every", lambda model: every)
    n = [0]
    inner = Backbone.forward

    def counted(self, *args, **kw):
        n[0] += 1
        return inner(self, *args, **kw)

    monkeypatch.setattr(Backbone, "forward", counted)
    got = m.generate(gen_items([samples[0].asked], [release_images[0]], 8))[0].token_ids
    assert got == first and n[0] == calls  # the prefill and the steps run


def test_the_static_step_compiles_as_one_graph_for_every_step(variant, samples, release_images, monkeypatch):
    """What --compile relies on (checked on the CPU with torch.compile's default backend): a centre decode
    step traces with fullgraph=True (no graph break, so no host read) into ONE graph for all steps and calls
    (nothing in it changes from step to step but tensor values), with the eager tokens."""
    from torch._dynamo.utils import counters

    import flexeval.model.decode as decode

    torch._dynamo.reset()
    m = _model(variant, "center")
    items = gen_items([samples[i].asked for i in IDX[:2]], [release_images[i] for i in IDX[:2]], 4)
    eager = [r.token_ids for r in m.generate(items)]
    inner = decode.step_function
    monkeypatch.setattr(decode, "step_function", lambda model, trace_cls: torch.compile(
        inner(model, trace_cls), fullgraph=True, dynamic=False))
    counters.clear()
    assert [r.token_ids for r in m.generate(items)] == eager
    assert [r.token_ids for r in m.generate(items)] == eager
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
