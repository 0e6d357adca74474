"""SentencePiece-style GGUF vocabularies (ckeir.runtime.spm) tokenize as llama.cpp does: the
pair whose joined piece scores highest merges first, uncovered characters fall back to byte
tokens, user-defined tokens (runs of newlines or tabs) and control tokens match as written.
The Gemma 3 cases were recorded with llama-cpp-python 0.3.36 (`Llama.tokenize(text,
add_bos=False, special=True)`) on the 270M file."""

from __future__ import annotations

import pytest
from needs import GEMMA3_GGUF, needs_gemma3

from ckeir.runtime.spm import BYTE, CONTROL, NORMAL, USER_DEFINED, SpmTokenizer

BYTES = [f"<0x{b:02X}>" for b in range(256)]


def toy(add_space_prefix=False) -> SpmTokenizer:
    """'ab' outscores 'bc', so 'abc' is ab + c although 'bc' also joins; 'x' is no piece."""
    pieces = [("<bos>", 0.0, CONTROL), ("\n\n", 0.0, USER_DEFINED)]
    pieces += [(b, 0.0, BYTE) for b in BYTES]
    pieces += [(p, s, NORMAL) for p, s in [
        ("a", -1.0), ("b", -1.0), ("c", -1.0), ("▁", -1.0), ("ab", -2.0), ("bc", -3.0),
        ("abc", -9.0), ("▁a", -2.5),
    ]]  # fmt: skip
    tokens, scores, types = zip(*pieces, strict=True)
    return SpmTokenizer(tokens, scores, types, add_space_prefix), list(tokens)


def test_the_best_scoring_pair_merges_first_and_bytes_fill_the_gaps():
    tk, tokens = toy()
    pieces = lambda text: [tokens[i] for i in tk.encode(text)]  # noqa: E731
    assert pieces("abc") == ["abc"]  # ab (-2) first, then ab + c gives abc
    assert pieces("bca") == ["bc", "a"]
    assert pieces("a x") == ["a", "▁", "<0x78>"]  # no piece has x: its byte
    assert pieces("c\n\nab<bos>") == ["c", "\n\n", "ab", "<bos>"]
    assert tk.decode(tk.encode("a x\n\nbc")) == "a x\n\nbc"


def test_a_space_prefix_where_the_file_asks_for_one():
    tk, tokens = toy(add_space_prefix=True)
    assert [tokens[i] for i in tk.encode("a b")] == ["▁a", "▁", "b"]
    assert tk.decode(tk.encode("a b")) == "a b"


GEMMA3_CASES = [
    ("The capital of France is", [818, 5279, 529, 7001, 563]),
    (" leading space and  two  spaces", [5830, 2557, 532, 138, 13498, 138, 35220]),
    (
        "Line one\nLine two\n\nafter a blank line\t\ttabs",
        [4539, 886, 107, 4539, 1156, 108, 9900, 496, 11580, 1757, 255969, 39218],
    ),
    (
        "naïve café, Straße, 東京タワー, Привет!",
        [
            1789,
            238527,
            560,
            33443,
            236764,
            80176,
            236764,
            86459,
            237312,
            43071,
            236764,
            15745,
            8362,
            236888,
        ],
    ),  # fmt: skip
    (
        "emoji 🦙🚀 and a rare glyph 𓂀",
        [67906, 236743, 478, 397, 404, 391, 242015, 532, 496, 8401, 53179, 236743, 248801],
    ),
    (
        "def f(x):\n    return x ** 2  # square",
        [
            2063,
            517,
            236769,
            236781,
            1473,
            107,
            140,
            2060,
            1123,
            5213,
            236743,
            236778,
            138,
            236865,
            6281,
        ],
    ),  # fmt: skip
    ("<start_of_turn>user\nHi<end_of_turn>", [105, 2364, 107, 10979, 106]),
    ("ends with spaces   ", [2068, 607, 9952, 139]),
    ("", []),
]


@pytest.fixture(scope="module")
def gemma3_tokenizer():
    """The file's tokenizer as a run reads it (`tokenizer.ggml.model` "llama")."""
    from ckeir.models.files import GGUFFile
    from ckeir.runtime.tokenizer import GGUFTokenizer

    return GGUFTokenizer(GGUFFile(GEMMA3_GGUF))


@pytest.mark.slow
@needs_gemma3
@pytest.mark.parametrize(("text", "ids"), GEMMA3_CASES)
def test_gemma3_text_tokenizes_as_llama_cpp_tokenizes_it(gemma3_tokenizer, text, ids):
    assert gemma3_tokenizer.encode(text) == ids
    assert gemma3_tokenizer.decode(ids) == text
