"""The fast batched path (fast.py / flex_llava.py) against the literal reference (reference.py).

Spec section 9: logits within 1e-4 relative, identical greedy tokens, identical selections, in
generation (only the last row of each call uses high-res keys) and likelihood scoring (every
answer-predicting row uses high-res keys with its own selection), for batch sizes 1 and 5 with
mixed image sizes / aspect ratios and prompt lengths.
"""

from __future__ import annotations

import pytest
import torch
from conftest import batch_rows, choice_items, gen_items, rel_diff

from flexeval.model import reference

N_NEW = 6
RTOL = 1e-4
HD_TOKENS = 72 * 72
SELECT_LAYERS = [8, 9, 10, 11]  # S = 8 makes the first selection; the tiny model has 12 layers



# ---- reference results, one sample at a time (computed once per module) ----

@pytest.fixture(scope="module")
def ref_gen(release_model, samples, release_images):
    return [reference.generate(release_model, s.prompt, im, N_NEW)
            for s, im in zip(samples, release_images, strict=True)]


@pytest.fixture(scope="module")
def ref_nll(release_model, samples, release_images):
    """[sample][option] -> (mean nll, RefOutput)."""
    return [[reference.option_nll(release_model, s.prompt, im, o) for o in s.options]
            for s, im in zip(samples, release_images, strict=True)]


# ---- fast results: batch 5 (all samples) and batch 1 (each sample alone) ----

def _fast_generate(model, recorded_traces, samples, images, indices):
    """-> per sample: (GenerationResult, prefill logits [T_batch, V] of its batch row, prefill masks)."""
    items = gen_items([samples[i].asked for i in indices], [images[i] for i in indices], N_NEW)
    with recorded_traces() as traces:
        res, pl = model.generate(items, return_prefill_logits=True)
    prefill, rows = traces[0], batch_rows(model, items)
    out = {}
    for b, i in enumerate(indices):
        out[i] = (res[b], pl[b], {layer: m[rows[b], 0] for layer, m in prefill.masks.items()})
    return out


@pytest.fixture(scope="module", params=["batch1", "batch5"])
def fast_gen(request, release_model, recorded_traces, samples, release_images):
    n = len(samples)
    if request.param == "batch5":
        return _fast_generate(release_model, recorded_traces, samples, release_images, list(range(n)))
    out = {}
    for i in range(n):
        out.update(_fast_generate(release_model, recorded_traces, samples, release_images, [i]))
    return out


def _fast_score(model, recorded_traces, samples, images, indices):
    """-> per sample: (ChoiceResult, [per option: {layer: [rows, N] masks}])."""
    tok = model.tokenizer
    items = choice_items([samples[i].asked for i in indices], [images[i] for i in indices],
                         [samples[i].options for i in indices])
    with recorded_traces() as traces:
        res = model.choose(items)
    assert len(traces) == 1
    batch_row = batch_rows(model, items)
    masks = traces[0].masks
    suffixes = {i: [tok.encode_option(samples[i].prompt, o)[1] for o in samples[i].options] for i in indices}
    block = max(len(s) for i in indices for s in suffixes[i])  # rows per option block (flex_llava layout)
    out = {}
    for b, i in enumerate(indices):
        per_option = []
        for k, suffix in enumerate(suffixes[i]):
            rows = slice(k * block, k * block + len(suffix))
            per_option.append({layer: m[batch_row[b], rows] for layer, m in masks.items()})
        out[i] = (res[b], per_option)
    return out


@pytest.fixture(scope="module", params=["batch1", "batch5"])
def fast_score(request, release_model, recorded_traces, samples, release_images):
    n = len(samples)
    if request.param == "batch5":
        return _fast_score(release_model, recorded_traces, samples, release_images, list(range(n)))
    out = {}
    for i in range(n):
        out.update(_fast_score(release_model, recorded_traces, samples, release_images, [i]))
    return out


# ---- generation ----

def test_generation_prefill_logits_match_reference(fast_gen, ref_gen, samples):
    t_batch = max(ref.logits.shape[0] for _, ref in ref_gen)
    for i, (_, ref) in enumerate(ref_gen):
        res, pl, _ = fast_gen[i]
        n = ref.logits.shape[0]
        assert res.n_prompt_tokens == n
        assert pl.shape[0] >= n and pl.shape[0] in (n, t_batch)  # left-padded to the batch's longest
        d = rel_diff(pl[-n:], ref.logits)
        assert d <= RTOL, f"{samples[i].name}: prefill logits differ by {d:.2e} (relative)"
        # the high-res row (last) on its own, so a mismatch there cannot hide behind the other rows' scale
        assert rel_diff(pl[-1], ref.logits[-1]) <= RTOL, samples[i].name


def test_generation_greedy_tokens_identical(fast_gen, ref_gen, samples):
    for i, (ids, _) in enumerate(ref_gen):
        assert len(ids) == N_NEW
        assert fast_gen[i][0].token_ids == ids, samples[i].name


def test_generation_selection_masks_identical(fast_gen, ref_gen, samples):
    for i, (_, ref) in enumerate(ref_gen):
        res, _, masks = fast_gen[i]
        assert sorted(ref.selections) == SELECT_LAYERS
        assert sorted(masks) == SELECT_LAYERS
        for layer in SELECT_LAYERS:
            want = ref.selections[layer]
            assert want.shape == (1, HD_TOKENS)
            assert torch.equal(masks[layer], want[0]), f"{samples[i].name}: layer {layer} mask differs"
            assert res.selected_per_layer[str(layer)] == int(want.sum())


def test_generation_selections_are_non_degenerate(ref_gen, samples):
    """Guard that the equivalence above is meaningful: real, varied selections."""
    counts = torch.tensor([[int(ref.selections[layer].sum()) for layer in SELECT_LAYERS] for _, ref in ref_gen])
    ratio = counts.float() / HD_TOKENS
    assert bool((counts > 0).all()) and bool((counts < HD_TOKENS).all()), counts
    assert 0.03 <= float(ratio.mean()) <= 0.8, ratio
    assert float(ratio.min()) >= 0.03, ratio
    for i in range(len(samples)):  # differs across layers for every image
        masks = [ref_gen[i][1].selections[layer][0] for layer in SELECT_LAYERS]
        assert any(not torch.equal(masks[0], m) for m in masks[1:]), samples[i].name
    for layer in SELECT_LAYERS:  # differs across images for every layer
        masks = [ref.selections[layer][0] for _, ref in ref_gen]
        assert any(not torch.equal(masks[0], m) for m in masks[1:]), layer


# ---- likelihood scoring ----

def test_likelihood_nll_match_reference(fast_score, ref_nll, samples):
    for i, per_option in enumerate(ref_nll):
        got = fast_score[i][0].option_nll
        want = [nll for nll, _ in per_option]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert abs(g - w) <= RTOL * abs(w), f"{samples[i].name}: {got} vs {want}"
        assert min(range(len(got)), key=got.__getitem__) == min(range(len(want)), key=want.__getitem__)


def test_likelihood_selection_masks_identical(fast_score, ref_nll, release_model, samples):
    tok = release_model.tokenizer
    for i, per_option in enumerate(ref_nll):
        for k, (_, ref) in enumerate(per_option):
            n_rows = len(tok.encode_option(samples[i].prompt, samples[i].options[k])[1])
            fast_masks = fast_score[i][1][k]
            assert sorted(ref.selections) == SELECT_LAYERS and sorted(fast_masks) == SELECT_LAYERS
            for layer in SELECT_LAYERS:
                want = ref.selections[layer]
                assert want.shape == (n_rows, HD_TOKENS)
                assert torch.equal(fast_masks[layer], want), f"{samples[i].name} option {k} layer {layer}"


def test_likelihood_selections_are_non_degenerate(ref_nll, samples):
    all_masks = [ref.selections[layer] for per_option in ref_nll for _, ref in per_option for layer in SELECT_LAYERS]
    ratio = torch.cat([m.float().mean(1) for m in all_masks])
    assert float(ratio.min()) > 0 and float(ratio.max()) < 1, ratio
    assert 0.03 <= float(ratio.mean()) <= 0.8
    # multi-token options: every row has its own selection, and they are not all the same
    nll, ref = ref_nll[4][0]  # "left side of it"
    rows = ref.selections[SELECT_LAYERS[-1]]
    assert rows.shape[0] >= 3
    assert any(not torch.equal(rows[0], r) for r in rows[1:])


# ---- other selection modes and options the reference implements ----

@pytest.mark.parametrize("options", [dict(selection="all"), dict(selection="center"),
                                     dict(selection="attention", first_hd_layer=4, threshold=120.0)],
                         ids=["all", "center", "first4-thr120"])
def test_other_modes_match_reference(options, variant, samples, release_images, recorded_traces):
    model = variant(**options)
    idx = [1, 3]  # tall and small: different lengths, left padding in the batch
    items = gen_items([samples[i].asked for i in idx], [release_images[i] for i in idx], 3)
    with recorded_traces() as traces:
        res, pl = model.generate(items, return_prefill_logits=True)
    rows = batch_rows(model, items)
    for b, i in enumerate(idx):
        ids, ref = reference.generate(model, samples[i].prompt, release_images[i], 3)
        assert res[b].token_ids == ids
        n = ref.logits.shape[0]
        assert rel_diff(pl[b, -n:], ref.logits) <= RTOL
        assert sorted(ref.selections) == sorted(traces[0].masks)
        for layer, want in ref.selections.items():
            assert torch.equal(traces[0].masks[layer][rows[b], 0], want[0]), (options, layer)
        nll = model.choose(choice_items([samples[i].asked], [release_images[i]], [samples[i].options]))[0].option_nll
        want = [reference.option_nll(model, samples[i].prompt, release_images[i], o)[0] for o in samples[i].options]
        assert all(abs(g - w) <= RTOL * abs(w) for g, w in zip(nll, want, strict=True)), (nll, want)
    if "first_hd_layer" in options:
        assert sorted(traces[0].masks) == list(range(3, 12))


def test_high_res_keys_change_the_output(release_model, variant, samples, release_images):
    """Attention selection must really feed high-res keys: the high-res row's logits move vs none."""
    i = 0
    items = gen_items([samples[i].asked], [release_images[i]], 1)
    _, with_hd = release_model.generate(items, return_prefill_logits=True)
    _, none = variant(selection="none").generate(items, return_prefill_logits=True)
    assert with_hd.shape == none.shape
    assert rel_diff(with_hd[0, -1], none[0, -1]) > 1e-2
    # rows before the last use no high-res keys in generation: identical to none
    assert rel_diff(with_hd[0, :-1], none[0, :-1]) <= 1e-5
