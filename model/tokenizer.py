"""LLaVA tokenisation with the LLaMA sentencepiece model (spec section 8).

The prompt is split at `<image>`; each chunk is tokenised on its own (BOS + sentencepiece's
dummy-prefix piece), BOS kept on the first chunk only, and IMAGE_TOKEN placed between the chunks.
Tokenising the whole string at once gives different ids around the image.
"""

from __future__ import annotations

from pathlib import Path

from flexeval.errors import FlexEvalError

IMAGE_TOKEN = "<image>"  # where the prompt text holds the image (LLaVA's DEFAULT_IMAGE_TOKEN)
IMAGE_TOKEN_ID = -200  # LLaVA's placeholder id: the 576 low-res image tokens go here


class LlavaTokenizer:
    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise FlexEvalError(f"tokenizer file {path} not found; the checkpoint folder needs its tokenizer.model")
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.path = path
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()

    def encode_chunk(self, text: str) -> list[int]:
        return [self.bos_id] + self.sp.encode(text)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt holding at most one `<image>` (placeholder IMAGE_TOKEN_ID)."""
        chunks = prompt.split(IMAGE_TOKEN)
        if len(chunks) > 2:
            raise FlexEvalError("only one <image> per prompt is supported (FlexAttention uses the first image)")
        ids = self.encode_chunk(chunks[0])
        for chunk in chunks[1:]:
            ids.append(IMAGE_TOKEN_ID)
            ids.extend(self.encode_chunk(chunk)[1:])
        return ids

    def encode_option(self, prompt: str, option: str, append_eos: bool = False) -> tuple[list[int], list[int]]:
        """(prompt ids, option ids): the option's ids are the suffix of tokenising `prompt + " " + option`."""
        prompt_ids = self.encode_prompt(prompt)
        full = self.encode_prompt(prompt + " " + option)
        if full[: len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
            raise FlexEvalError(
                f"option {option!r} does not tokenise as a suffix of its prompt; check the prompt's last characters"
            )
        suffix = full[len(prompt_ids):]
        if append_eos:
            suffix = suffix + [self.eos_id]
        return prompt_ids, suffix

    def decode(self, ids: list[int]) -> str:
        # ids past the sentencepiece vocabulary (llava-hf's added <image>/<pad>) have no text
        n = self.sp.vocab_size()
        ids = [i for i in ids if 0 <= i < n and i not in (self.bos_id, self.eos_id)]
        return self.sp.decode(ids)

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def check_template(self, prompt: str) -> None:
        """The first text token after BOS must be `▁A` for the LLaVA v1 template (spec section 8)."""
        ids = self.encode_prompt(prompt)
        if len(ids) < 2 or self.piece(ids[1]) != "▁A":
            raise FlexEvalError(
                f"tokenizer {self.path} gives {self.piece(ids[1])!r} as the first token of the template, expected '▁A'; "
                "use the checkpoint's LLaMA sentencepiece tokenizer.model"
            )
