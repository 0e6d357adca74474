"""The SmolLM2 tokenizer rebuilt from GGUF metadata with the `tokenizers` library."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smollm2 import gguf_path, needs_smollm2

from ckeir.models.files import GGUFFile
from ckeir.runtime.tokenizer import StreamDecoder, Tokenizer

pytestmark = needs_smollm2


@pytest.fixture(scope="module")
def tk():
    return Tokenizer.from_gguf(GGUFFile(gguf_path()))


def test_known_prompt(tk):
    assert tk.encode("Once upon a time") == [6403, 1980, 253, 655]


def test_known_continuation(tk):
    ids = [28, 260, 2240, 282, 23324, 27108, 436, 253, 15114, 39228]
    assert tk.decode(ids) == ", the city of Nova Haven was a thriving metropolis"


def test_digits_are_split_one_by_one(tk):
    ids = tk.encode("2024")
    assert len(ids) == 4 and tk.decode(ids) == "2024"


def test_control_tokens_are_single_ids(tk):
    ids = tk.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2


@pytest.mark.parametrize(
    "text",
    [
        "Hello   world\n\n\t  indented",
        "naïve café — 東京 🙂 Ελληνικά",
        "12345 + 678 = 1e10, 3.14159",
        "def f(x):\n    return x ** 2  # square\n",
        "   leading and trailing spaces   ",
        "",
    ],
)
def test_round_trip(tk, text):
    assert tk.decode(tk.encode(text)) == text


# The vocabulary lacks byte tokens for six C0 controls (0x04 0x06 0x13 0x14 0x16 0x1D) and
# for lead bytes F1/F2 (planes 4..11, unassigned or private use): no tokenizer of this
# vocabulary can encode those, so the property draws text without them.
TEXT = st.text(
    st.characters(max_codepoint=0x3FFFF, blacklist_categories=("Cs", "Cc"))
    | st.sampled_from("\t\n\r \x00\x7f"),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(TEXT)
def test_round_trip_property(tk, text):
    assert tk.decode(tk.encode(text)) == text


def test_stream_decoder_waits_for_whole_characters(tk):
    ids = tk.encode("a🙂b")
    dec = StreamDecoder(tk)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) == "a🙂b"
    assert all("\ufffd" not in p for p in pieces)
