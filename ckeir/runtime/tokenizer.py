"""The tokenizer a model file carries, built with the `tokenizers` library.

GGUF stores a byte-level BPE (`tokenizer.ggml.model = gpt2`) as its token strings, merges
and token types; `tokenizer.ggml.pre` names the pre-tokenizer.  We rebuild the same pipeline
the model was trained with: the `smollm`/`starcoder` family splits digits one by one before
the GPT-2 byte-level split; plain `gpt2`/`default` uses the byte-level split alone.  Control
tokens (type 3) are special tokens, so `<|im_start|>` encodes to one id.
"""

from __future__ import annotations

from ckeir.errors import ModelFileError

# pre-tokenizer names (GGUF `tokenizer.ggml.pre`) whose digits are split one by one
DIGIT_SPLIT = {"smollm", "starcoder", "refact", "codeshell", "smaug-bpe"}
CONTROL = 3


class Tokenizer:
    def __init__(
        self,
        tokens: list[str],
        merges: list[str],
        token_types: list[int] | None,
        pre: str,
        source: str = "<model>",
    ):
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = []
        for m in merges:
            a, sep, b = m.partition(" ")
            if not sep:
                raise ModelFileError(f"{source}: malformed BPE merge {m!r}")
            pairs.append((a, b))
        tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in DIGIT_SPLIT:
            tk.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            tk.pre_tokenizer = byte_level
        tk.decoder = decoders.ByteLevel()
        if token_types:
            special = [tokens[i] for i, t in enumerate(token_types) if t == CONTROL]
            tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
        self._tk = tk
        self.vocab_size = len(tokens)

    @classmethod
    def from_gguf(cls, model_file) -> Tokenizer:
        kind = model_file.metadata("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelFileError(
                f"{model_file.path}: tokenizer '{kind}' is not supported "
                "(byte-level BPE, 'gpt2', is)"
            )
        tokens = model_file.metadata("tokenizer.ggml.tokens")
        merges = model_file.metadata("tokenizer.ggml.merges")
        if not tokens or merges is None:
            raise ModelFileError(f"{model_file.path}: the tokenizer's tokens or merges are missing")
        return cls(
            tokens,
            merges,
            model_file.metadata("tokenizer.ggml.token_type"),
            model_file.metadata("tokenizer.ggml.pre", "default"),
            str(model_file.path),
        )

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=False)


class StreamDecoder:
    """Turns generated ids into text pieces as they arrive; a piece is emitted once its bytes
    form whole UTF-8 characters (a multi-byte character may span tokens)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tk, self.ids, self.shown = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tk.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece
