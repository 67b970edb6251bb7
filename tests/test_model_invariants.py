"""Invariants of the model: selection none is plain LLaVA-1.5 (checked against transformers' own
LlavaForConditionalGeneration), batch invariance, no state between calls, the ablations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import batch_rows, choice_items, gen_items, rel_diff

from flexeval.model.tokenizer import IMAGE_TOKEN_ID

HD_TOKENS = 72 * 72
SELECT_LAYERS = ["8", "9", "10", "11"]



# ---- selection none == plain LLaVA-1.5, independently computed by transformers ----

@pytest.fixture(scope="module")
def hf_llava(llava_hf_dir):
    """transformers' LlavaForConditionalGeneration on the tiny llava-hf checkpoint, eager attention."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(str(llava_hf_dir), dtype=torch.float32,
                                                         attn_implementation="eager").eval()


def hf_logits(hf, ids: list[int], pixels: torch.Tensor) -> torch.Tensor:
    """Logits [T, V] of transformers' Llava for our prompt ids (with IMAGE_TOKEN_ID) and a [3, 336, 336] tensor.

    The placeholder is the unk id 0, the tiny config's image_token_index (never a text token; see
    test_model_loading).
    """
    placeholder = 0
    assert placeholder not in ids
    hf.config.image_token_id = placeholder
    hf.model.config.image_token_id = placeholder
    p = ids.index(IMAGE_TOKEN_ID)
    n_img = (hf.config.vision_config.image_size // hf.config.vision_config.patch_size) ** 2
    assert n_img == 576
    full = ids[:p] + [placeholder] * n_img + ids[p + 1:]
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([full]), attention_mask=torch.ones(1, len(full), dtype=torch.long),
                 pixel_values=pixels[None].float())
    return out.logits[0]


def test_llava_selection_none_equals_transformers_llava(llava_model, hf_llava, samples, baseline_images):
    for i in (0, 1, 3):
        s, im = samples[i], baseline_images[i]
        assert im.pixels.shape == (3, 336, 336)  # baseline preprocesses at 336 directly
        ids = llava_model.tokenizer.encode_prompt(s.prompt)
        ref = hf_logits(hf_llava, ids, im.pixels)
        res, ours = llava_model.generate(gen_items([s.asked], [im], 1), return_prefill_logits=True)
        assert ours.shape[1:] == ref.shape
        assert rel_diff(ours[0], ref) <= 1e-4, s.name
        assert rel_diff(ours[0, -1], ref[-1]) <= 1e-4
        assert res[0].token_ids == [int(ref[-1].argmax())]
        assert res[0].selected_per_layer == {} and res[0].hd_selected_ratio is None
    # negative control: the image matters, so the match above is not vacuous
    other = hf_logits(hf_llava, ids, baseline_images[0].pixels)
    assert rel_diff(other, ref) > 1e-3


@pytest.fixture(scope="module")
def hf_release(release_model, llava_hf_dir, release_dir):
    """transformers' Llava carrying the RELEASE checkpoint's LLM/projector (k_proj_hd/v_proj_hd dropped)."""
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(str(llava_hf_dir), dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    # the CLIP tower is the same for the same seed, whatever the format
    clip = load_file(str(release_dir / "clip-vit-tiny" / "model.safetensors"))
    hf_sd = hf.state_dict()
    for k, v in clip.items():
        assert torch.equal(hf_sd["model.vision_tower." + k.removeprefix("vision_model.")], v), k
    mapped = {}
    for k, v in load_file(str(release_dir / "model.safetensors")).items():
        if "_proj_hd" in k:
            continue
        if k.startswith("model.mm_projector."):
            idx, rest = k[len("model.mm_projector."):].split(".", 1)
            mapped[f"model.multi_modal_projector.linear_{ {'0': 1, '2': 2}[idx] }.{rest}"] = v
        elif k == "lm_head.weight":
            mapped[k] = v
        else:
            mapped["model.language_model." + k[len("model."):]] = v
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert unexpected == []
    assert all(k.startswith("model.vision_tower.") for k in missing)
    return hf


def test_release_selection_none_equals_transformers_llava(variant, hf_release, samples, release_images):
    """Selection none must equal the plain model run on the low-res tokens (spec section 5): the
    release's low-res view is the 1008 px tensor downsampled to 336 (bilinear, antialias)."""
    model = variant(selection="none")
    for i in (0, 1, 2):
        s, im = samples[i], release_images[i]
        assert im.pixels.shape == (3, 1008, 1008)
        low = F.interpolate(im.pixels[None], size=(336, 336), mode="bilinear", antialias=True, align_corners=False)[0]
        ref = hf_logits(hf_release, model.tokenizer.encode_prompt(s.prompt), low)
        res, ours = model.generate(gen_items([s.asked], [im], 1), return_prefill_logits=True)
        assert rel_diff(ours[0], ref) <= 1e-4, s.name
        assert res[0].token_ids == [int(ref[-1].argmax())]
        assert res[0].selected_per_layer == {}


def test_release_selection_none_equals_stripped_llava(variant, stripped_model, samples, release_images):
    """Same weights without k_proj_hd/v_proj_hd and `extra`, fed the same 1008 px tensor."""
    model = variant(selection="none")
    assert stripped_model.cfg.format == "llava" and not stripped_model.cfg.has_hd
    idx = [0, 1, 3]
    prompts, images = [samples[i].asked for i in idx], [release_images[i] for i in idx]
    a, la = model.generate(gen_items(prompts, images, 5), return_prefill_logits=True)
    b, lb = stripped_model.generate(gen_items(prompts, images, 5), return_prefill_logits=True)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert rel_diff(la, lb) <= 1e-5
    opts = [samples[i].options for i in idx]
    na = [x for r in model.choose(choice_items(prompts, images, opts)) for x in r.option_nll]
    nb = [x for r in stripped_model.choose(choice_items(prompts, images, opts)) for x in r.option_nll]
    assert na == pytest.approx(nb, rel=1e-5)


# ---- batch invariance ----

def test_batch_of_five_equals_one_by_one(release_model, samples, release_images):
    prompts = [s.asked for s in samples]
    batch, lb = release_model.generate(gen_items(prompts, release_images, 6), return_prefill_logits=True)
    batch_nll = release_model.choose(choice_items(prompts, release_images, [s.options for s in samples]))
    for i, s in enumerate(samples):
        one, lo = release_model.generate(gen_items([s.asked], [release_images[i]], 6), return_prefill_logits=True)
        assert batch[i].token_ids == one[0].token_ids, s.name
        assert batch[i].selected_per_layer == one[0].selected_per_layer, s.name
        assert batch[i].n_prompt_tokens == one[0].n_prompt_tokens
        assert batch[i].hd_selected_ratio == pytest.approx(one[0].hd_selected_ratio, rel=1e-6)
        n = lo.shape[1]
        assert rel_diff(lb[i, -n:], lo[0]) <= 1e-4  # float32 summation order differs with padding
        nll = release_model.choose(choice_items([s.asked], [release_images[i]], [s.options]))[0]
        assert batch_nll[i].option_nll == pytest.approx(nll.option_nll, rel=1e-5), s.name
        assert batch_nll[i].hd_selected_ratio == pytest.approx(nll.hd_selected_ratio, rel=1e-6)


def test_option_scores_independent_of_other_options(release_model, samples, release_images):
    """Options share a prefix cache and run as blocks of one call: each block sees only itself."""
    s, im = samples[4], release_images[4]  # options of different token lengths
    both = release_model.choose(choice_items([s.asked], [im], [s.options]))[0].option_nll
    rev = release_model.choose(choice_items([s.asked], [im], [s.options[::-1]]))[0].option_nll
    alone = [release_model.choose(choice_items([s.asked], [im], [[o]]))[0].option_nll[0] for o in s.options]
    assert both == pytest.approx(rev[::-1], rel=1e-5)
    assert both == pytest.approx(alone, rel=1e-5)


def test_shorter_generation_is_a_prefix(release_model, samples, release_images):
    prompts = [s.asked for s in samples[:3]]
    long = release_model.generate(gen_items(prompts, release_images[:3], 6))
    short = release_model.generate(gen_items(prompts, release_images[:3], 2))
    for a, b in zip(long, short, strict=True):
        assert a.token_ids[:2] == b.token_ids
        assert a.selected_per_layer == b.selected_per_layer  # prefill selections


# ---- no state between calls ----

def test_no_state_between_calls(release_model, samples, release_images):
    a = ([samples[0].asked], [release_images[0]], [samples[0].options])
    b = ([samples[2].asked, samples[3].asked], [release_images[2], release_images[3]],
         [samples[2].options, samples[3].options])

    def run(args):
        gen, logits = release_model.generate(gen_items(args[0], args[1], 4), return_prefill_logits=True)
        return gen, logits, release_model.choose(choice_items(*args))

    first = run(a)
    other = run(b)
    again = run(a)
    assert [r.token_ids for r in again[0]] == [r.token_ids for r in first[0]]
    assert [r.selected_per_layer for r in again[0]] == [r.selected_per_layer for r in first[0]]
    assert torch.equal(again[1], first[1])
    assert [r.option_nll for r in again[2]] == [r.option_nll for r in first[2]]
    # and B really was a different input (the comparison above would catch reuse of B's image)
    assert other[0][0].selected_per_layer != first[0][0].selected_per_layer


def test_same_prompt_other_image_is_not_the_previous_image(release_model, samples, release_images):
    """The release keeps high-res features on the attention modules; a call with another image must
    not see the previous one: same prompt, image X then Y == Y alone."""
    p = samples[0].asked
    y_alone = release_model.generate(gen_items([p], [release_images[1]], 3), return_prefill_logits=True)
    release_model.generate(gen_items([p], [release_images[0]], 3))
    y_after = release_model.generate(gen_items([p], [release_images[1]], 3), return_prefill_logits=True)
    assert torch.equal(y_alone[1], y_after[1])
    assert y_alone[0][0].selected_per_layer == y_after[0][0].selected_per_layer
    x = release_model.generate(gen_items([p], [release_images[0]], 3), return_prefill_logits=True)
    assert not torch.equal(x[1], y_after[1])


# ---- ablations ----

def _prefill_masks(model, recorded_traces, prompts, images, n_new=1):
    """Results and the prefill's masks, rows in input order."""
    items = gen_items(prompts, images, n_new)
    with recorded_traces() as traces:
        res = model.generate(items)
    rows = batch_rows(model, items)
    return res, {layer: m[rows] for layer, m in traces[0].masks.items()}


def test_random_selection_deterministic_and_batch_independent(variant, recorded_traces, samples, release_images):
    model = variant(selection="random", seed=3)
    p, im = [s.asked for s in samples], release_images
    _, m_all = _prefill_masks(model, recorded_traces, p, im)
    _, m_again = _prefill_masks(model, recorded_traces, p, im)
    _, m_sub = _prefill_masks(model, recorded_traces, [p[3], p[0]], [im[3], im[0]])
    _, m_one = _prefill_masks(model, recorded_traces, [p[0]], [im[0]])
    assert sorted(m_all) == [8, 9, 10, 11]
    for layer in m_all:
        assert torch.equal(m_all[layer], m_again[layer])
        assert torch.equal(m_all[layer][0], m_sub[layer][1]) and torch.equal(m_all[layer][3], m_sub[layer][0])
        assert torch.equal(m_all[layer][0], m_one[layer][0])
    # another seed draws differently
    _, m_seed = _prefill_masks(variant(selection="random", seed=4), recorded_traces, p, im)
    assert any(not torch.equal(m_all[k], m_seed[k]) for k in m_all)
    # an 8x8 grid of 9x9 high-res blocks, each cell with p = 0.1
    cells = torch.stack([m.reshape(-1, 8, 9, 8, 9) for m in m_all.values()]).flatten(0, 1)  # [n, 8, 9, 8, 9]
    first = cells[:, :, :1, :, :1]
    assert torch.equal(cells, first.expand_as(cells))
    frac = float(first.float().mean())
    assert 0.03 <= frac <= 0.2, frac
    # layers draw independently
    assert not torch.equal(m_all[8], m_all[9])


def test_random_selection_in_likelihood_is_deterministic(variant, samples, release_images):
    model = variant(selection="random", seed=1)
    p, im, o = [s.asked for s in samples[:3]], release_images[:3], [s.options for s in samples[:3]]
    a = model.choose(choice_items(p, im, o))
    b = model.choose(choice_items(p[::-1], im[::-1], o[::-1]))[::-1]
    assert [x for r in a for x in r.option_nll] == pytest.approx([x for r in b for x in r.option_nll], rel=1e-5)
    assert [r.hd_selected_ratio for r in a] == pytest.approx([r.hd_selected_ratio for r in b], rel=1e-6)


def test_all_selects_every_token(variant, recorded_traces, samples, release_images):
    model = variant(selection="all")
    res, masks = _prefill_masks(model, recorded_traces, [samples[0].asked, samples[3].asked],
                                [release_images[0], release_images[3]], n_new=3)
    for r in res:
        assert r.selected_per_layer == {k: HD_TOKENS for k in SELECT_LAYERS}
        assert r.hd_selected_ratio == pytest.approx(1.0)
    assert all(bool(m.all()) for m in masks.values())
    ch = model.choose(choice_items([samples[0].asked], [release_images[0]], [samples[0].options]))[0]
    assert ch.hd_selected_ratio == pytest.approx(1.0)


def test_center_selects_the_central_3x3_blocks(variant, recorded_traces, samples, release_images):
    model = variant(selection="center")
    res, masks = _prefill_masks(model, recorded_traces, [samples[1].asked], [release_images[1]], n_new=2)
    want = torch.zeros(72, 72, dtype=torch.bool)
    want[24:48, 24:48] = True  # blocks 3..5 of the 9x9 grid, 8x8 high-res tokens each
    for m in masks.values():
        assert torch.equal(m[0, 0].reshape(72, 72), want)
    assert res[0].selected_per_layer == {k: 576 for k in SELECT_LAYERS}
    assert res[0].hd_selected_ratio == pytest.approx(1 / 9)


def test_attention_selection_options_change_selection(variant, release_model, samples, release_images):
    """--threshold and --first-layer reach the selection (counts are monotone in the threshold)."""
    p, im = [samples[0].asked], [release_images[0]]
    base = release_model.generate(gen_items(p, im, 1))[0].selected_per_layer
    low = variant(selection="attention", threshold=10.0).generate(gen_items(p, im, 1))[0].selected_per_layer
    high = variant(selection="attention", threshold=200.0).generate(gen_items(p, im, 1))[0].selected_per_layer
    assert low["8"] >= base["8"] >= high["8"]  # layer S sees the same attention in all three
    assert low["8"] > high["8"]
    first = variant(selection="attention", first_hd_layer=6).generate(gen_items(p, im, 1))[0].selected_per_layer
    assert sorted(first, key=int) == [str(k) for k in range(5, 12)]
