"""Rows that stop early: EOS mid-batch and per-request max_new_tokens.

The tiny model never emits its real EOS, so the test gives the tokenizer another EOS id: a token
one sample emits in the middle of its reply. That row must stop there, and its tokens AND its
hd_selected_ratio must be the same alone, in a batch whose other rows go on, and in the literal
reference (the ratio computed here from the reference's own selection masks, one forward call
at a time).
"""

from __future__ import annotations

import copy

import pytest
from conftest import gen_items

from flexeval.model import reference

N_NEW = 6


@pytest.fixture(scope="module")
def plain_tokens(release_model, samples, release_images):
    res = release_model.generate(gen_items([s.asked for s in samples], release_images, N_NEW))
    return [r.token_ids for r in res]


@pytest.fixture(scope="module")
def eos_model(release_model, plain_tokens):
    """The release weights with EOS := a token sample 0 emits at step 3 that some other sample never emits."""
    candidates = [t for t in plain_tokens[0][1:4] if t not in plain_tokens[0][:1]
                  and any(t not in other for other in plain_tokens[1:])]
    assert candidates, plain_tokens
    tok = copy.copy(release_model.tokenizer)
    tok.eos_id = candidates[0]
    m = release_model
    return type(m)(m.lm, m.vision, tok, m.cfg, m.run_options, m.device, m.dtype)


def _reference_ratio(model, prompt, image, n_new):
    """(tokens, mean over forward calls and layers of the selected fraction of the high-res tokens)."""
    calls = []
    ids, _ = reference.generate(model, prompt, image, n_new, calls=calls)
    fractions = [float(mask.float().mean()) for call in calls for mask in call.selections.values()]
    return ids, sum(fractions) / len(fractions), len(calls)


def test_a_row_that_emits_eos_stops_alone_batched_and_in_the_reference(eos_model, samples, release_images,
                                                                        plain_tokens):
    eos = eos_model.tokenizer.eos_id
    prompts = [s.prompt for s in samples]
    batched = eos_model.generate(gen_items([s.asked for s in samples], release_images, N_NEW))
    stopped = [i for i, toks in enumerate(plain_tokens) if eos in toks and toks.index(eos) < N_NEW - 1]
    running = [i for i in range(len(samples)) if i not in stopped]
    assert 0 in stopped and running  # some rows stop early, others go on in the same batch
    for i in range(len(samples)):
        want = plain_tokens[i][: plain_tokens[i].index(eos) + 1] if i in stopped else plain_tokens[i]
        alone = eos_model.generate(gen_items([samples[i].asked], [release_images[i]], N_NEW))[0]
        ref_ids, ref_ratio, n_calls = _reference_ratio(eos_model, prompts[i], release_images[i], N_NEW)
        assert batched[i].token_ids == alone.token_ids == ref_ids == want, samples[i].name
        assert n_calls == len(want)  # one forward call per emitted token but the last
        assert batched[i].hd_selected_ratio == pytest.approx(alone.hd_selected_ratio, abs=1e-7), samples[i].name
        assert alone.hd_selected_ratio == pytest.approx(ref_ratio, abs=1e-6), samples[i].name
        assert batched[i].n_prompt_tokens == alone.n_prompt_tokens


def test_each_request_keeps_its_own_max_new_tokens(release_model, samples, release_images, plain_tokens):
    questions = [s.asked for s in samples]
    limits = [2, 6, 1, 4, 3]
    batched = release_model.generate(gen_items(questions, release_images, limits))
    for i, n in enumerate(limits):
        alone = release_model.generate(gen_items([questions[i]], [release_images[i]], n))[0]
        assert batched[i].token_ids == alone.token_ids == plain_tokens[i][:n], samples[i].name
        assert batched[i].hd_selected_ratio == pytest.approx(alone.hd_selected_ratio, abs=1e-7)
        if n == 1:  # the prefill's high-res row alone: the ratio is its per-layer mean selection
            per_layer = alone.selected_per_layer.values()
            assert alone.hd_selected_ratio == pytest.approx(sum(per_layer) / len(per_layer) / 72 ** 2, abs=1e-7)


def test_results_come_back_in_input_order(release_model, samples, release_images):
    """The model runs the batch longest prompt first; the caller still gets its own order back."""
    prompts = [s.prompt for s in samples]
    items = gen_items([s.asked for s in samples], release_images, 2)
    order = release_model.batch_order([r for r, _ in items])
    lengths = [len(release_model.tokenizer.encode_prompt(p)) for p in prompts]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True) and order != list(range(len(items)))
    forward = release_model.generate(items)
    backward = release_model.generate(items[::-1])[::-1]
    assert [r.token_ids for r in forward] == [r.token_ids for r in backward]
    assert [r.n_prompt_tokens for r in forward] == [n + 575 for n in lengths]  # 576 image tokens replace <image>
