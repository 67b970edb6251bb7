"""Transformers vision-language models as baselines (model/hf_vlm.py), on tiny random checkpoints of
three real families saved with save_pretrained: llava-hf (LLaVA-1.5), LLaVA-NeXT (AnyRes tiles) and
Qwen2-VL (native resolution, M-RoPE). References are written here from transformers' own pieces:
the processor as `AutoProcessor` builds it (Qwen2-VL: its image processor and tokenizer by hand,
since its AutoProcessor needs torchvision, which this venv does not have) and a plain greedy loop
of full forwards without a cache."""

from __future__ import annotations

import random
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from flexeval.errors import FlexEvalError

FAMILIES = ("llava-hf", "llava-next", "qwen2-vl")
QUESTIONS = ["What is the color of the cup?\nAnswer the question using a single word or phrase.",
             "Is the flag on the left or right side of the kite?", "How many bags?"]
SIZES = [(300, 200), (150, 260), (200, 200)]
OPTIONS = ("red", "blue green", "yes", "the left side")
# What each chat template writes before an option in the assistant turn (read off the templates).
OPTION_PREFIX = {"llava-hf": " ", "llava-next": " ", "qwen2-vl": ""}


@pytest.fixture(scope="module")
def images():
    from flexeval.benchmarks.samples import draw_scene

    rng = random.Random(3)
    return [draw_scene(rng, w, h, 3)[0] for w, h in SIZES]


def gen(q, n=5):
    return SimpleNamespace(question=q, max_new_tokens=n)


def choice(q, options=OPTIONS, append_eos=False):
    return SimpleNamespace(question=q, options=options, append_eos=append_eos)


# ---- the reference: transformers' own processor and a plain loop ----

class Reference:
    def __init__(self, folder, family):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.family = family
        self.model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()
        if family == "qwen2-vl":
            from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

            self.tok = AutoTokenizer.from_pretrained(str(folder))
            self.ip = Qwen2VLImageProcessorPil.from_pretrained(str(folder))
            self.template = (folder / "chat_template.jinja").read_text()
        else:
            self.processor = AutoProcessor.from_pretrained(str(folder))
            self.tok = self.processor.tokenizer

    def prompt(self, q):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        if self.family == "qwen2-vl":
            return self.tok.apply_chat_template(msgs, chat_template=self.template, tokenize=False,
                                                add_generation_prompt=True)
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def inputs(self, q, image, continuation=""):
        if self.family != "qwen2-vl":
            if not continuation:  # the documented one-call path
                msgs = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": q}]}]
                return dict(self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                               return_dict=True, return_tensors="pt"))
            text = self.prompt(q) + continuation  # the whole string, as that path tokenises it
            return dict(self.processor(text=[text], images=[image], return_tensors="pt",
                                       add_special_tokens=not text.startswith(self.tok.bos_token)))
        vis = self.ip(images=[image], return_tensors="pt")
        n_image = int(vis["image_grid_thw"][0].prod()) // self.ip.merge_size ** 2
        text = self.prompt(q).replace("<|image_pad|>", "<|image_pad|>" * n_image) + continuation
        ids = self.tok(text, return_tensors="pt")["input_ids"]
        pad_id = self.tok.convert_tokens_to_ids("<|image_pad|>")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == pad_id).long(),
                **vis}

    @torch.no_grad()
    def greedy(self, q, image, n, eos):
        enc = self.inputs(q, image)
        t = enc["input_ids"].shape[1]
        for _ in range(n):
            nxt = int(self.model(**enc, use_cache=False).logits[0, -1].argmax())
            for k in ("input_ids", "attention_mask", "mm_token_type_ids"):
                if k in enc:
                    add = nxt if k == "input_ids" else (1 if k == "attention_mask" else 0)
                    enc[k] = torch.cat([enc[k], torch.tensor([[add]])], 1)
            if nxt == eos:
                break
        return enc["input_ids"][0, t:].tolist(), enc["input_ids"][0, :t].tolist()

    @torch.no_grad()
    def option_nll(self, q, image, option):
        head = self.inputs(q, image)["input_ids"].shape[1]
        enc = self.inputs(q, image, OPTION_PREFIX[self.family] + option)
        ids = enc["input_ids"][0]
        logp = F.log_softmax(self.model(**enc, use_cache=False).logits[0].float(), -1)
        return float(torch.stack([-logp[k - 1, ids[k]] for k in range(head, len(ids))]).mean())


@pytest.fixture(scope="module")
def references(hf_dirs):
    return {f: Reference(d, f) for f, d in hf_dirs.items()}


# ---- detection through the real loading path ----

def test_families_load_as_transformers_models_with_their_kind(hf_models, hf_dirs):
    from flexeval.model import FlexLlava, load_model
    from flexeval.model.hf_vlm import HFVisionModel

    kinds = {f: m.kind for f, m in hf_models.items()}
    assert kinds == {"llava-hf": "hf:llava", "llava-next": "hf:llava_next", "qwen2-vl": "hf:qwen2_vl"}
    assert {type(m.model).__name__ for m in hf_models.values()} == {
        "LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration", "Qwen2VLForConditionalGeneration"}
    # auto: a llava-hf checkpoint stays on FlexLlava (release recipe); the others go to transformers
    assert isinstance(load_model(hf_dirs["llava-hf"], dtype="float32", device="cpu"), FlexLlava)
    assert isinstance(load_model(hf_dirs["qwen2-vl"], dtype="float32", device="cpu"), HFVisionModel)
    forced = load_model(hf_dirs["llava-hf"], dtype="float32", device="cpu", model_kind="hf")
    assert isinstance(forced, HFVisionModel) and forced.recipe == "native"


@pytest.mark.parametrize("kw, words", [
    ({"family": "qwen2-vl", "recipe": "release"}, ["--recipe release", "--recipe native"]),
    ({"family": "qwen2-vl", "model_kind": "flexattention"}, ["FlexLlava", "--model-kind hf"]),
    ({"family": "llava-hf", "model_kind": "flexattention", "recipe": "native"}, ["--model-kind hf"]),
    ({"family": "llava-hf", "model_kind": "torch"}, ["--model-kind", "auto, flexattention, hf"]),
    ({"family": "llava-hf", "recipe": "lmms"}, ["--recipe", "release", "native"]),
    ({"family": "llava-hf", "max_pixels": 10000}, ["--max-pixels", "FlexLlava"]),
    ({"family": "llava-hf", "recipe": "native", "max_pixels": 10000}, ["--max-pixels", "CLIPImageProcessor"]),
    ({"family": "llava-next", "min_pixels": 10000}, ["--min-pixels", "LlavaNextImageProcessor"]),
])
def test_bad_kind_recipe_or_knob_is_a_clear_error(hf_dirs, kw, words):
    from flexeval.model import load_model

    kw = dict(kw)
    with pytest.raises(FlexEvalError) as e:
        load_model(hf_dirs[kw.pop("family")], dtype="float32", device="cpu", **kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_checkpoint_without_chat_template_is_a_clear_error(hf_dirs, tmp_path):
    from flexeval.model import load_model

    dst = tmp_path / "no-template"
    shutil.copytree(hf_dirs["llava-next"], dst, ignore=shutil.ignore_patterns("chat_template.*"))
    assert "chat_template" not in (dst / "tokenizer_config.json").read_text()
    with pytest.raises(FlexEvalError) as e:
        load_model(dst, dtype="float32", device="cpu")
    assert str(dst) in str(e.value) and "chat template" in str(e.value)


# ---- Generate ----

@pytest.mark.parametrize("family", FAMILIES)
def test_generation_equals_a_plain_greedy_loop_and_is_batch_invariant(hf_models, references, images, family):
    m, ref = hf_models[family], references[family]
    batch = m.generate([(gen(q), im) for q, im in zip(QUESTIONS, images)])
    for q, im, res in zip(QUESTIONS, images, batch):
        want, prompt_ids = ref.greedy(q, im, 5, m.eos_ids[0])
        assert res.token_ids == want
        assert res.prompt == ref.prompt(q) and res.prompt_ids == prompt_ids
        assert res.text == ref.tok.decode(want, skip_special_tokens=True).strip()
    singles = [m.generate([(gen(q), im)])[0] for q, im in zip(QUESTIONS, images)]
    assert [r.token_ids for r in singles] == [r.token_ids for r in batch]
    assert len({len(r.prompt_ids) for r in batch}) > 1  # left padding was exercised


def test_generation_stops_at_eos_and_at_each_request_length(hf_models, images):
    import copy

    m = hf_models["qwen2-vl"]
    free = m.generate([(gen(QUESTIONS[0], 8), images[0])])[0].token_ids
    short, long_ = m.generate([(gen(QUESTIONS[0], 2), images[0]), (gen(QUESTIONS[0], 8), images[0])])
    assert short.token_ids == free[:2] and long_.token_ids == free
    stopper = copy.copy(m)
    stopper.eos_ids = [free[3]]  # a token the model does emit, taken as EOS: the reply ends at its first use
    got = stopper.generate([(gen(QUESTIONS[0], 8), images[0])])[0].token_ids
    assert got == free[: free.index(free[3]) + 1]


# ---- Choice ----

@pytest.mark.parametrize("family", FAMILIES)
def test_choice_nll_equals_a_plain_forward_per_option(hf_models, references, images, family):
    m, ref = hf_models[family], references[family]
    items = [(choice(q), im) for q, im in zip(QUESTIONS, images)]
    shared = m.choose(items)
    per_option = m.choose(items, share_prefix=False)
    for (req, im), a, b in zip(items, shared, per_option):
        want = [ref.option_nll(req.question, im, o) for o in OPTIONS]
        assert a.option_nll == pytest.approx(want, abs=1e-5)
        assert b.option_nll == pytest.approx(want, abs=1e-5)
        assert a.prompt == ref.prompt(req.question)
    singles = [x for it in items for x in m.choose([it])[0].option_nll]
    assert singles == pytest.approx([x for r in shared for x in r.option_nll], abs=1e-6)
    spread = max(max(r.option_nll) - min(r.option_nll) for r in shared)
    assert spread > 0.05  # the options are told apart


def test_choice_with_eos_scores_the_eos_token_too(hf_models, references, images):
    m, ref = hf_models["llava-hf"], references["llava-hf"]
    q, im = QUESTIONS[1], images[1]
    plain = m.choose([(choice(q, ("yes",)), im)])[0].option_nll[0]
    with_eos = m.choose([(choice(q, ("yes",), append_eos=True), im)])[0].option_nll[0]
    enc = ref.inputs(q, im, " yes")
    with torch.no_grad():
        logp = F.log_softmax(ref.model(**enc).logits[0, -1].float(), -1)
    n = len(m.option_ids(q, m.prompt_text(q), "yes", False))
    assert with_eos == pytest.approx((plain * n - float(logp[m.eos_ids[0]])) / (n + 1), abs=1e-5)


# ---- resolution knobs ----

def test_max_pixels_changes_the_image_tokens_and_is_recorded(hf_dirs, hf_models, images):
    from flexeval.model import load_model

    small = load_model(hf_dirs["qwen2-vl"], dtype="float32", device="cpu", max_pixels=28 * 28 * 6)
    default = hf_models["qwen2-vl"]
    assert small.resolved["resolution_overrides"] == {"max_pixels": 4704}
    assert small.resolution["size"]["longest_edge"] == 4704 != default.resolution["size"]["longest_edge"]
    assert small.tag_parts() == ["native", "maxpx4704"] and default.tag_parts() == ["native"]
    im = images[0].resize((600, 400))
    image_pad = default.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    n = [m.generate([(gen(QUESTIONS[0], 1), im)])[0].prompt_ids.count(image_pad) for m in (small, default)]
    assert n[0] <= 6 < n[1] <= 24  # merged 28 px cells within each budget


def test_a_broken_torchvision_is_a_clear_error_and_an_absent_one_is_not_needed(hf_dirs, tmp_path, monkeypatch):
    """This venv has no torchvision (the tests above ran without it); one that is installed but fails to
    import (PyPI's CUDA build on a CPU machine) is named, with the fix."""
    import importlib
    import importlib.util

    from flexeval.model import load_model

    assert importlib.util.find_spec("torchvision") is None
    fake = tmp_path / "site"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text("raise OSError('libcudart.so.12: cannot open shared object')\n")
    monkeypatch.syspath_prepend(str(fake))
    importlib.invalidate_caches()
    with pytest.raises(FlexEvalError) as e:
        load_model(hf_dirs["qwen2-vl"], dtype="float32", device="cpu")
    assert "torchvision is installed but cannot be imported" in str(e.value) and "libcudart" in str(e.value)
    assert "pip uninstall torchvision" in str(e.value)


def test_image_options_reach_the_processor_are_checked_and_tagged(hf_dirs, hf_models, images):
    from flexeval.model import load_model

    via_option = load_model(hf_dirs["qwen2-vl"], dtype="float32", device="cpu",
                            image_options=("max_pixels=4704", "do_resize=true"))
    assert via_option.overrides == {"max_pixels": 4704, "do_resize": True}
    assert via_option.resolution["size"]["longest_edge"] == 4704
    assert via_option.tag_parts() == ["native", "do_resizetrue", "maxpx4704"]
    with pytest.raises(FlexEvalError) as e:
        load_model(hf_dirs["llava-next"], dtype="float32", device="cpu", image_options=("max_patches=6",))
    assert "--image-option max_patches" in str(e.value) and "LlavaNextImageProcessor" in str(e.value)
    with pytest.raises(FlexEvalError, match="KEY=VALUE"):
        load_model(hf_dirs["qwen2-vl"], dtype="float32", device="cpu", image_options=("max_pixels",))
