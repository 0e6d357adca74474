"""SentencePiece-style vocabularies of GGUF files (`tokenizer.ggml.model = "llama"`: Gemma,
Llama 2, Mistral) as a `tokenizers` BPE, tokenizing as llama.cpp's SPM tokenizer does.

llama.cpp merges, among adjacent pieces, the pair whose joined piece has the highest score
in the vocabulary, until none joins; characters no piece covers fall back to byte tokens
(`<0xXX>`).  The same tokenizer in `tokenizers` terms (as transformers converts a
SentencePiece model): spaces become `▁` (with a `▁` in front when the file says
`add_space_prefix`), BPE merges every split of each normal piece into two pieces of the
vocabulary, ranked by the joined piece's score, and `byte_fallback`.  User-defined tokens
(Gemma's runs of newlines, tabs and spaces, its image markers) are matched as they are
written before anything else, control tokens (`<bos>`, `<start_of_turn>`) as special tokens.
"""

from __future__ import annotations

from tokenizers import AddedToken, decoders, normalizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def merges_by_score(tokens: list[str], scores: list[float], types: list[int] | None):
    """Every (left, right) split of a normal piece into two pieces of the vocabulary, the
    splits of higher-scoring pieces first (ties: the vocabulary's order of the halves)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, piece in enumerate(tokens):
        if types is not None and types[i] != NORMAL:
            continue
        splits = [
            (piece[:k], piece[k:]) for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ]  # fmt: skip
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        ranked.extend((-scores[i], n, lr) for n, lr in enumerate(splits))
    ranked.sort(key=lambda r: r[0])  # stable: a piece's splits keep their order
    return [lr for _, _, lr in ranked]


def spm_tokenizer(
    tokens: list[str],
    scores: list[float],
    types: list[int] | None,
    add_space_prefix: bool,
) -> HFTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = next((t for i, t in enumerate(tokens) if types and types[i] == UNKNOWN), None)
    tk = HFTokenizer(
        BPE(vocab, merges_by_score(tokens, scores, types), unk_token=unk, byte_fallback=True)
    )
    steps = [normalizers.Replace(" ", "▁")]
    if add_space_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tk.normalizer = normalizers.Sequence(steps)
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else [])
    )
    if types:
        user = [t for i, t in enumerate(tokens) if types[i] == USER_DEFINED]
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
        control = [t for i, t in enumerate(tokens) if types[i] == CONTROL]
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tk


class SpmTokenizer:
    """encode / decode / vocab_size, as `ckeir.runtime.tokenizer.Tokenizer` offers them."""

    def __init__(self, tokens, scores, types, add_space_prefix: bool):
        self._tk = spm_tokenizer(
            list(tokens), list(scores), types and list(types), add_space_prefix
        )
        self.vocab_size = len(tokens)

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=False)
