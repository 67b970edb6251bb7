"""Attention maps from the fast path (FlexLlava.attention_maps, one teacher-forced call) against the
literal reference (generation's calls one by one, every layer's full attention matrix).

Held equal for every layer (below, at and above the first select layer S = 8), for the last
prompt row and for the row of a later answer token, batched with mixed aspect ratios, for the
FlexAttention checkpoint and for plain LLaVA-1.5 (no high-res at all).
"""

from __future__ import annotations

import pytest
import torch

from flexeval.analysis.attention import generate_answers
from flexeval.model import reference

ALL_LAYERS = list(range(12))
CONTINUATION = [5, 9]  # two answer tokens fed by hand: the map is of the row whose input is 9


def _rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def picked(samples):
    return [0, 1]  # wide, tall (batched together: different padding axes)


@pytest.mark.parametrize("continuation", [[], CONTINUATION], ids=["prompt-end", "answer-token-2"])
def test_fast_maps_equal_the_reference(release_model, samples, release_images, picked, continuation):
    fast = release_model.attention_maps([samples[i].prompt for i in picked], [release_images[i] for i in picked],
                                        [continuation] * len(picked), ALL_LAYERS)
    for b, i in enumerate(picked):
        ref = reference.attention_maps(release_model, samples[i].prompt, release_images[i], continuation)
        assert sorted(fast[b].maps) == ALL_LAYERS
        for layer in ALL_LAYERS:
            got, want = fast[b].maps[layer], ref.maps[layer][0]
            assert got.shape == (576,)
            assert _rel(got, want) < 1e-4, (samples[i].name, layer)
        # selections are made at S..11 only, from exactly these maps
        assert sorted(fast[b].masks) == [8, 9, 10, 11]
        for layer, mask in fast[b].masks.items():
            assert torch.equal(mask, ref.selections[layer][0]), (samples[i].name, layer)
        # every head's row sums to 1 over all keys, so the head sum over the image is at most num_heads
        assert all(0 < float(m.sum()) <= 4 + 1e-5 for m in fast[b].maps.values())


def test_plain_llava_maps_equal_the_reference(llava_model, samples, baseline_images, picked):
    fast = llava_model.attention_maps([samples[i].prompt for i in picked], [baseline_images[i] for i in picked],
                                      [CONTINUATION[:1]] * len(picked), [0, 7, 11])
    for b, i in enumerate(picked):
        ref = reference.attention_maps(llava_model, samples[i].prompt, baseline_images[i], CONTINUATION[:1])
        assert fast[b].masks == {} and fast[b].n_hd_tokens == 0
        for layer in (0, 7, 11):
            assert _rel(fast[b].maps[layer], ref.maps[layer][0]) < 1e-4


@pytest.mark.parametrize("selection", ["attention", "random"])
def test_maps_are_generations_maps(variant, samples, release_images, recorded_traces, selection):
    """The teacher-forced call reproduces generation: the prompt-end selections equal generate()'s prefill
    selections, and the answer token's equal those of generate()'s first decode call (also the seeded
    random ablation, whose draw is keyed by the prompt and the row's position)."""
    model = variant(selection=selection)
    prompt, image = samples[0].prompt, release_images[0]
    with recorded_traces() as traces:
        gen = generate_answers(model, [prompt], [image], 3)[0]
    first = model.attention_maps([prompt], [image], [[]], [8])[0]
    second = model.attention_maps([prompt], [image], [gen.token_ids[:1]], [8])[0]
    calls = [t for t in traces if t.masks]  # generate's forward calls: prefill, decode 1, decode 2
    for layer in (8, 9, 10, 11):
        assert torch.equal(first.masks[layer], calls[0].masks[layer][0, 0])
        assert torch.equal(second.masks[layer], calls[1].masks[layer][0, 0])


def test_continuations_of_one_call_must_match_in_length(release_model, samples, release_images):
    with pytest.raises(ValueError, match="same length"):
        release_model.attention_maps([samples[0].prompt] * 2, release_images[:2], [[], [5]], [8])
