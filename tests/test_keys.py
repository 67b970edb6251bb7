"""Store keys survive the move of the chat template from the requests to the model: a request's
fingerprint, computed now from question + system, equals the formula of the requests that carried
the finished LLaVA v1 prompt (transcribed here by hand), for every benchmark and protocol, so
results written before still resume."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from flexeval.benchmarks import get_benchmark, list_benchmarks
from flexeval.execute import request_fingerprint
from flexeval.requests import Choice, Generate

HUMAN = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
         "detailed, and polite answers to the human's questions.")
USER = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.")


def old_request_fingerprint(req) -> str:
    """The formula before: every field of the request but `question`, the prompt being the v1 conversation."""
    system = USER if req.system == USER else HUMAN
    assert req.system in (None, USER)  # the only system texts a protocol used
    prompt = f"{system} USER: <image>\n{req.question} ASSISTANT:"
    fields = {"prompt": prompt, "image_mode": req.image_mode, "kind": type(req).__name__}
    if isinstance(req, Generate):
        fields["max_new_tokens"] = req.max_new_tokens
    else:
        fields.update(options=list(req.options), append_eos=req.append_eos)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def test_every_benchmark_and_protocol_keeps_its_keys(tmp_path):
    seen = set()
    for bench in [*list_benchmarks(), get_benchmark("gqa")]:
        data = bench.make_sample(tmp_path / bench.name, n=2, seed=3)
        for protocol in bench.protocols:
            for s in bench.load(data, protocol=protocol):
                req = bench.request(s, protocol)
                assert "USER:" not in req.question and "<image>" not in req.question  # no template in a request
                assert request_fingerprint(req) == old_request_fingerprint(req), (bench.name, protocol, s.id)
                seen.add((type(req).__name__, req.system is not None, req.image_mode))
    # both request kinds, a protocol's own system text and the crop image mode were all covered
    assert {("Choice", True, "crop"), ("Choice", False, "pad"), ("Generate", False, "pad"),
            ("Generate", False, "crop")} <= seen


def test_the_key_follows_what_changes_the_answer():
    base = Choice(question="What colour?", options=("red", "blue"))
    variants = [Choice(question="What colour? ", options=("red", "blue")),
                Choice(question="What colour?", options=("blue", "red")),
                Choice(question="What colour?", options=("red", "blue"), system=USER),
                Choice(question="What colour?", options=("red", "blue"), append_eos=True),
                Generate(question="What colour?")]
    keys = {request_fingerprint(r) for r in [base, *variants]}
    assert len(keys) == 1 + len(variants)
    assert request_fingerprint(Choice(question="What colour?", options=("red", "blue"), system=HUMAN)) == \
        request_fingerprint(base)  # LLaVA's own system line spelt out is the default
    assert set(asdict(base)) == {"question", "options", "append_eos", "image_mode", "system"}
