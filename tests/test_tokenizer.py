"""LLaVA tokenisation with the checkpoint's sentencepiece model (spec section 8)."""

from __future__ import annotations

import pytest

from flexeval.benchmarks.wording import SHORT_ANSWER_SUFFIX
from flexeval.errors import FlexEvalError
from flexeval.model.conversation import llava_v1_prompt
from flexeval.model.tokenizer import IMAGE_TOKEN_ID, LlavaTokenizer


@pytest.fixture(scope="module")
def tok(release_dir) -> LlavaTokenizer:
    return LlavaTokenizer(release_dir / "tokenizer.model")


PROMPT = llava_v1_prompt("What is the color of the cup?" + SHORT_ANSWER_SUFFIX)


def pieces(tok, ids):
    return [tok.piece(i) if i >= 0 else "<image>" for i in ids]


def test_special_ids_are_llama_s(tok):
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.piece(1) == "<s>" and tok.piece(2) == "</s>" and tok.piece(0) == "<unk>"


def test_template_starts_with_bos_then_A(tok):
    ids = tok.encode_prompt(PROMPT)
    assert ids[0] == tok.bos_id
    assert tok.piece(ids[1]) == "▁A"
    assert ids.count(tok.bos_id) == 1  # BOS only on the first chunk
    tok.check_template(PROMPT)


def test_check_template_rejects_a_wrong_start(tok):
    with pytest.raises(FlexEvalError, match="▁A"):
        tok.check_template("Hello USER: <image>\nWhat? ASSISTANT:")


def test_pieces_around_the_image(tok):
    ids = tok.encode_prompt(PROMPT)
    assert ids.count(IMAGE_TOKEN_ID) == 1
    p = ids.index(IMAGE_TOKEN_ID)
    assert pieces(tok, ids[p - 2:p + 3]) == [":", "▁", "<image>", "▁", "<0x0A>"]
    assert tok.piece(ids[-1]) == ":" and "ASSISTANT" not in tok.piece(ids[-1])


def test_chunks_are_tokenised_separately(tok):
    """LLaVA's way: each chunk gets sentencepiece's dummy prefix; the whole string at once differs."""
    ids = tok.encode_prompt(PROMPT)
    p = ids.index(IMAGE_TOKEN_ID)
    before, after = PROMPT.split("<image>")
    assert tok.sp.decode(ids[1:p]) == before and tok.sp.decode(ids[p + 1:]) == after  # text round trip
    assert tok.piece(ids[p + 1]) == "▁"  # the second chunk's dummy prefix, before the newline's byte piece
    whole = tok.sp.encode(PROMPT.replace("<image>", ""))
    assert whole != ids[1:p] + ids[p + 1:]


def test_text_only_prompt_has_no_placeholder(tok):
    ids = tok.encode_prompt(llava_v1_prompt("Hi?", with_image=False))
    assert IMAGE_TOKEN_ID not in ids and ids[0] == tok.bos_id and tok.piece(ids[1]) == "▁A"


def test_two_images_are_rejected(tok):
    with pytest.raises(FlexEvalError, match="one <image>"):
        tok.encode_prompt("A <image> and <image>")


@pytest.mark.parametrize("option", ["red", "left side of it", "coca-cola", "3", "A"])
def test_option_suffix(tok, option):
    prompt_ids, suffix = tok.encode_option(PROMPT, option)
    assert tok.sp.decode(prompt_ids[prompt_ids.index(IMAGE_TOKEN_ID) + 1:]) == PROMPT.split("<image>")[1]
    assert suffix and tok.piece(suffix[0]).startswith("▁")  # the leading space belongs to the option
    assert tok.eos_id not in suffix
    assert tok.decode(suffix).strip() == option


def test_option_pieces(tok):
    """The suffix starts with the space piece: a digit gets a lone '▁' (split_digits), a word '▁'-prefixed."""
    assert pieces(tok, tok.encode_option(PROMPT, "3")[1]) == ["▁", "3"]
    assert pieces(tok, tok.encode_option(PROMPT, "red")[1]) == ["▁re", "d"]


def test_append_eos(tok):
    _, plain = tok.encode_option(PROMPT, "left side of it")
    _, with_eos = tok.encode_option(PROMPT, "left side of it", append_eos=True)
    assert with_eos[-1] == tok.eos_id
    assert with_eos == plain + [tok.eos_id]


def test_decode_drops_specials_and_the_placeholder(tok):
    ids = tok.encode_prompt("USER: <image>\nred")
    assert tok.decode(ids) == "USER:  \nred"
    assert tok.decode(tok.encode_option(PROMPT, "blue", append_eos=True)[1]).strip() == "blue"


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FlexEvalError, match="tokenizer.model"):
        LlavaTokenizer(tmp_path / "tokenizer.model")


def test_prompt_without_image_is_a_clear_error(release_model):
    from PIL import Image

    img = release_model.preprocess(Image.new("RGB", (400, 300), (10, 20, 30)))
    with pytest.raises(FlexEvalError, match="no <image>"):
        release_model.generate_prompts(["USER: hello ASSISTANT:"], [img], [2])
