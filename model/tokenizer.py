"""LLaVA tokenisation with the LLaMA sentencepiece model (spec section 8).

The prompt is split at `<image>`; each chunk is tokenised on its own (BOS + sentencepiece's
dummy-prefix piece), BOS kept on the first chunk only, and IMAGE_TOKEN placed between the chunks.
Tokenising the whole string at once gives different ids around the image.

A checkpoint with tokenizer.json only (no tokenizer.model, as some llava-hf uploads) is read with
the `tokenizers` library (`FastPieces`): the legacy LLaMA conversion (prepend '▁', spaces to '▁',
BPE with byte fallback) gives the same ids chunk by chunk as sentencepiece.
"""

from __future__ import annotations

from pathlib import Path

from flexeval.errors import FlexEvalError

IMAGE_TOKEN = "<image>"  # where the prompt text holds the image (LLaVA's DEFAULT_IMAGE_TOKEN)
IMAGE_TOKEN_ID = -200  # LLaVA's placeholder id: the 576 low-res image tokens go here


class FastPieces:
    """The few sentencepiece calls LlavaTokenizer makes, served by a tokenizer.json (`tokenizers`)."""

    def __init__(self, path: Path):
        import json

        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.tok.encode_special_tokens = True  # as sentencepiece: "</s>" in a text is text, not the EOS id
        cfg_path = path.parent / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        names = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in cfg.items()}
        self._bos = self._id(names.get("bos_token") or "<s>", path)
        self._eos = self._id(names.get("eos_token") or "</s>", path)
        # added tokens past the base vocabulary (llava-hf's <image>, <pad>) have no text
        self._n = self.tok.get_vocab_size(with_added_tokens=False)

    def _id(self, token: str, path: Path) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise FlexEvalError(f"{path}: token {token!r} (tokenizer_config.json bos/eos) is not in the vocabulary")
        return i

    def bos_id(self) -> int:
        return self._bos

    def eos_id(self) -> int:
        return self._eos

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """sentencepiece's decoding, not the tokenizer.json decoder's: they differ on invalid UTF-8 byte runs
        (sentencepiece: one U+FFFD per bad byte, valid characters kept) and on a leading byte-piece space."""
        out, run = [], bytearray()
        for k, i in enumerate(ids):
            piece = self.tok.id_to_token(i)
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                run.append(int(piece[3:5], 16))
                continue
            if run:
                out.append(_utf8_per_byte(run))
                run = bytearray()
            text = piece.replace("\u2581", " ")
            out.append(text[1:] if k == 0 and text.startswith(" ") else text)  # the dummy prefix
        if run:
            out.append(_utf8_per_byte(run))
        return "".join(out)

    def vocab_size(self) -> int:
        return self._n

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(i)


def _utf8_per_byte(data: bytearray) -> str:
    """UTF-8 text of byte-fallback pieces; each byte that starts no valid character becomes U+FFFD."""
    out, k = [], 0
    while k < len(data):
        for n in (1, 2, 3, 4):
            try:
                out.append(bytes(data[k:k + n]).decode("utf-8"))
                k += n
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append("\ufffd")
            k += 1
    return "".join(out)


class LlavaTokenizer:
    def __init__(self, model_file: str | Path):
        """`model_file`: a sentencepiece tokenizer.model, or a tokenizer.json (read with `tokenizers`)."""
        path = Path(model_file)
        if not path.is_file():
            raise FlexEvalError(f"tokenizer file {path} not found; the checkpoint folder needs its tokenizer.model "
                                "(or a tokenizer.json)")
        try:
            if path.suffix == ".json":
                self.sp = FastPieces(path)
            else:
                import sentencepiece as spm

                self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # sentencepiece / tokenizers raise their own types on a damaged file
            kind = "tokenizers JSON" if path.suffix == ".json" else "sentencepiece model"
            raise FlexEvalError(f"{path}: cannot be read as a {kind} ({e}); copy the checkpoint's {path.name} "
                                "again") from e
        self.path = path
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()

    @classmethod
    def from_folder(cls, folder: Path) -> "LlavaTokenizer":
        """The checkpoint's tokenizer.model, else its tokenizer.json."""
        fast = folder / "tokenizer.json"
        return cls(fast if fast.is_file() and not (folder / "tokenizer.model").is_file() else folder / "tokenizer.model")

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
