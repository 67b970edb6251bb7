"""Shared, session-scoped fixtures for the model tests.

Tiny checkpoints (model/tiny.py) are built ONCE per session, in every format, from the same seed;
models are loaded once and variants with other run options share their weights (FlexLlava holds
no state between calls). Everything runs float32 on the CPU unless a test says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

SEED = 0

# ---- hypothesis: the same examples every run by default; a larger random search by choice ----
# HYPOTHESIS_PROFILE=ci (default): derandomized (examples derived from each test's name, so every run,
# locally and in CI, draws the same ones) and no example database. HYPOTHESIS_PROFILE=thorough: 1000
# new random examples per property test, to hunt for bugs; a failure prints the @reproduce_failure blob.
with contextlib.suppress(ImportError):
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", max_examples=40, derandomize=True, database=None, deadline=None)
    _hypothesis_settings.register_profile("thorough", max_examples=1000, derandomize=False, deadline=None,
                                          print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def digest_cache(tmp_path_factory):
    """The on-disk digest cache (flexeval/results/digests.py) in a temporary folder, never ~/.cache;
    processes the tests start (torchrun) inherit it."""
    import os

    from flexeval.results import digests

    old = os.environ.get(digests.CACHE_ENV)
    os.environ[digests.CACHE_ENV] = str(tmp_path_factory.mktemp("digest-cache"))
    digests.forget()
    yield
    if old is None:
        os.environ.pop(digests.CACHE_ENV, None)
    else:
        os.environ[digests.CACHE_ENV] = old
    digests.forget()


# ---- checkpoints ----

@pytest.fixture(scope="session")
def release_dir(tmp_path_factory) -> Path:
    from flexeval.model.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-release"), seed=SEED, fmt="release")


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    from flexeval.model.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llava"), seed=SEED, fmt="llava")


@pytest.fixture(scope="session")
def llava_hf_dir(tmp_path_factory) -> Path:
    from flexeval.model.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llava-hf"), seed=SEED, fmt="llava-hf")


@pytest.fixture(scope="session")
def stripped_dir(release_dir, tmp_path_factory) -> Path:
    """The release checkpoint's weights as an original-format LLaVA-1.5 checkpoint: k_proj_hd /
    v_proj_hd and `extra` removed, everything else (LLM, projector, CLIP, tokenizer) the same bytes."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("tiny-release-stripped")
    sd = load_file(str(release_dir / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if "_proj_hd" not in k}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = json.loads((release_dir / "config.json").read_text())
    del cfg["extra"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(release_dir / "tokenizer.model", out / "tokenizer.model")
    return out


# ---- models (float32, CPU; FLEXEVAL_TEST_DEVICE=cuda runs them on a GPU: model/device_check.sh) ----

def _load(path, **kw):
    import os

    from flexeval.model import load_pretrained

    device = os.environ.get("FLEXEVAL_TEST_DEVICE", "cpu")
    return load_pretrained(path, dtype=kw.pop("dtype", "float32"), device=device, **kw)


@pytest.fixture(scope="session")
def release_model(release_dir):
    """The release checkpoint with its default (attention) selection."""
    return _load(release_dir)


@pytest.fixture(scope="session")
def llava_model(llava_dir):
    return _load(llava_dir)


@pytest.fixture(scope="session")
def llava_hf_model(llava_hf_dir):
    return _load(llava_hf_dir)


@pytest.fixture(scope="session")
def stripped_model(stripped_dir):
    return _load(stripped_dir)


@pytest.fixture(scope="session")
def variant(release_model):
    """variant(**RunOptions fields) -> a FlexLlava over the release weights with those options."""
    from flexeval.model import RunOptions

    cache = {}

    def make(**options):
        key = tuple(sorted(options.items()))
        if key not in cache:
            m = release_model
            cache[key] = m.with_options(RunOptions(**options))
        return cache[key]

    return make


# ---- samples: mixed sizes / aspect ratios, prompts of different lengths, options ----

@dataclass
class Sample:
    name: str
    image: object  # PIL image
    question: str
    options: list

    @property
    def asked(self) -> str:
        """The question as a benchmark words it for a request (LLaVA's short-answer suffix)."""
        from flexeval.benchmarks.wording import SHORT_ANSWER_SUFFIX

        return self.question + SHORT_ANSWER_SUFFIX

    @property
    def prompt(self) -> str:
        """The finished LLaVA v1 prompt FlexLlava makes of `asked` (for the literal reference)."""
        from flexeval.model.conversation import llava_v1_prompt

        return llava_v1_prompt(self.asked)


SAMPLE_SPECS = [
    # name, (w, h), question, options
    ("wide", (1600, 900), "What is the color of the cup?", ["red", "blue", "green", "yellow"]),
    ("tall", (700, 1400), "Is the flag on the left or right side of the kite? Answer yes or no please",
     ["yes", "no"]),
    ("square", (1000, 1000), "What brand?", ["Nokia", "coca-cola", "Apple"]),
    ("small", (320, 200), "How many bags are there in the picture?", ["two", "3"]),
    ("very-wide", (2000, 700), "Where", ["left side of it", "right"]),
]


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    from flexeval.benchmarks.samples import draw_scene

    rng = random.Random(SEED)
    out = []
    for name, (w, h), q, opts in SAMPLE_SPECS:
        img, _ = draw_scene(rng, w, h, 3)
        out.append(Sample(name, img, q, opts))
    return out


@pytest.fixture(scope="session")
def release_images(release_model, samples):
    """The samples preprocessed for the release checkpoint (padded, 1008 px)."""
    return [release_model.preprocess(s.image) for s in samples]


@pytest.fixture(scope="session")
def baseline_images(llava_model, samples):
    """The samples preprocessed for a plain LLaVA-1.5 checkpoint (padded, 336 px)."""
    return [llava_model.preprocess(s.image) for s in samples]


def rel_diff(a, b) -> float:
    """max |a - b| / max |b|, in float32."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


# ---- requests as the runner builds them ----

def gen_items(questions, images, max_new_tokens):
    """[(Generate, image)] for FlexLlava.generate; max_new_tokens: one int, or one per question."""
    from flexeval.requests import Generate

    n = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(questions)
    return [(Generate(question=q, max_new_tokens=k), im) for q, im, k in zip(questions, images, n, strict=True)]


def choice_items(questions, images, options, append_eos=False):
    """[(Choice, image)] for FlexLlava.choose."""
    from flexeval.requests import Choice

    return [(Choice(question=q, options=tuple(o), append_eos=append_eos), im)
            for q, im, o in zip(questions, images, options, strict=True)]


def batch_rows(model, items) -> list[int]:
    """Row of each input item inside the model's batch (it runs longest prompt first)."""
    order = model.batch_order([req for req, _ in items])
    return [order.index(i) for i in range(len(items))]


# ---- recording the fast path's selection masks ----

@pytest.fixture(scope="session")
def recorded_traces():
    """with recorded_traces() as traces: ... -> every fast.Trace that flex_llava creates during the
    block, in creation order, with keep_masks=True (layer -> [B, R, N] bool masks, rows in the
    model's batch order: see batch_rows)."""
    from dataclasses import dataclass as _dataclass

    import flexeval.model.flex_llava as flex_llava
    from flexeval.model.fast import Trace

    @contextlib.contextmanager
    def record():
        created = []

        @_dataclass
        class RecordingTrace(Trace):
            def __post_init__(self):
                self.keep_masks = True
                created.append(self)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(flex_llava, "Trace", RecordingTrace)
            yield created

    return record


# ---- transformers vision-language checkpoints (model/tiny_hf.py): one per family, native recipe ----

@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict:
    from flexeval.model.tiny_hf import FAMILIES, make_tiny_hf_model

    return {f: make_tiny_hf_model(tmp_path_factory.mktemp("tiny-" + f), family=f, seed=SEED) for f in FAMILIES}


@pytest.fixture(scope="session")
def hf_models(hf_dirs) -> dict:
    """Each family loaded through the runner's entry point (load_model) under the native recipe."""
    from flexeval.model import load_model

    return {f: load_model(d, dtype="float32", device="cpu", recipe="native") for f, d in hf_dirs.items()}
