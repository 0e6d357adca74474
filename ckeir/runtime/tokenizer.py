"""The tokenizer a model file carries, built with the `tokenizers` library.

GGUF stores a byte-level BPE (`tokenizer.ggml.model = gpt2`) as its token strings, merges
and token types; `tokenizer.ggml.pre` names the pre-tokenizer.  We rebuild the same pipeline
the model was trained with: the `smollm`/`starcoder` family splits digits one by one before
the GPT-2 byte-level split; plain `gpt2`/`default` uses the byte-level split alone.  Control
tokens (type 3) are special tokens, so `<|im_start|>` encodes to one id.

The tokenizer is read when text is first encoded or decoded, each key checked for its type
and length first: a model run from token ids never needs it.
"""

from __future__ import annotations

from ckeir.errors import ModelFileError
from ckeir.limits import MAX_VOCAB

# pre-tokenizer names (GGUF `tokenizer.ggml.pre`) whose digits are split one by one
DIGIT_SPLIT = {"smollm", "starcoder", "refact", "codeshell", "smaug-bpe"}
CONTROL = 3
# GGUF tokenizer keys
MODEL, PRE = "tokenizer.ggml.model", "tokenizer.ggml.pre"
TOKENS, MERGES = "tokenizer.ggml.tokens", "tokenizer.ggml.merges"
TYPES, SCORES = "tokenizer.ggml.token_type", "tokenizer.ggml.scores"
SPECIAL_IDS = ("bos", "eos", "unknown", "padding")  # tokenizer.ggml.<name>_token_id


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
        for i, m in enumerate(merges):
            a, sep, b = m.partition(" ")
            if not (sep and a in vocab and b in vocab and a + b in vocab):
                raise ModelFileError(
                    f"{source}: metadata '{MERGES}' entry {i} ({m[:40]!r}) is not a BPE merge "
                    "('left right', both tokens and their join in the vocabulary)"
                )
            pairs.append((a, b))
        try:
            tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        except Exception as e:  # noqa: BLE001 - the library's error, kept in the message
            raise ModelFileError(f"{source}: the tokenizer does not build ({e})") from None
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
    def from_gguf(cls, model_file) -> GGUFTokenizer:
        """The file's tokenizer, read when text is first encoded or decoded."""
        return GGUFTokenizer(model_file)

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=False)


def read_gguf_tokenizer(model_file) -> Tokenizer:
    """Build the tokenizer from a GGUF file's metadata, each key checked for its type and
    length against the token list before it is used."""
    path = model_file.path
    kind = model_file.text(MODEL, default=None)
    if kind is None:
        raise ModelFileError(
            f"{path}: the file has no tokenizer ('{MODEL}' is missing), so text cannot be "
            "encoded or decoded",
            hint="give token ids instead of text (ckec run --ids 1,2,3)",
        )
    if kind != "gpt2":
        raise ModelFileError(
            f"{path}: tokenizer '{kind}' is not supported (byte-level BPE, 'gpt2', is)"
        )
    # more tokens than embedding rows would encode to ids the model has no row for
    rows = model_file.require("token_embd.weight").shape[0]
    tokens = model_file.array(TOKENS, "string", (1, min(rows, MAX_VOCAB)))
    n = len(tokens)
    for name in SPECIAL_IDS:
        model_file.integer(f"tokenizer.ggml.{name}_token_id", 0, n - 1, default=None)
    model_file.array(SCORES, "real", (n, n), default=None)  # unused, but must fit the tokens
    return Tokenizer(
        tokens,
        model_file.array(MERGES, "string", (0, MAX_VOCAB)),
        model_file.array(TYPES, "integer", (n, n), default=None),
        model_file.text(PRE, default="default"),
        str(path),
    )


class GGUFTokenizer:
    """A GGUF file's tokenizer, read and built when text is first encoded or decoded: a run
    given token ids needs none, so a file without tokenizer metadata still runs from ids, and
    one with damaged metadata fails only where text is needed, with a message naming the key."""

    def __init__(self, model_file):
        self.model_file = model_file
        self._tk: Tokenizer | None = None

    def built(self) -> Tokenizer:
        if self._tk is None:
            self._tk = read_gguf_tokenizer(self.model_file)
        return self._tk

    def encode(self, text: str) -> list[int]:
        return self.built().encode(text)

    def decode(self, ids) -> str:
        return self.built().decode(ids)


class StreamDecoder:
    """Turns generated ids into text pieces as they arrive; a piece is emitted once its bytes
    form whole UTF-8 characters (a multi-byte character may span tokens)."""

    def __init__(self, tokenizer: Tokenizer | GGUFTokenizer):
        self.tk, self.ids, self.shown = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tk.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece
