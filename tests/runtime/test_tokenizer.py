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


# ---- chat templates, BOS/EOS, streamed text with stop strings --------------------------------

CHAT = [{"role": "user", "content": "What is 2+2?"}]


def test_chat_template_from_the_file(tk):
    text = tk.apply_chat_template(CHAT)
    # SmolLM2's own template: its default system turn, the user turn, the assistant's start
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tk.encode_prompt(text)
    assert ids.count(1) == 3 and ids.count(2) == 2  # <|im_start|>, <|im_end|>: one id each
    assert not tk.add_bos and tk.bos_id == 1 and tk.eos_ids == {2}
    system = [{"role": "system", "content": "Be brief."}, *CHAT]
    assert tk.apply_chat_template(system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    )


def _file_tokenizer(tmp_path, meta):
    from ggufgen import write_gguf

    from ckeir.models.files import open_model_file
    from ckeir.runtime.tokenizer import GGUFTokenizer

    path = write_gguf(tmp_path / "t.gguf", meta=meta)
    return GGUFTokenizer(open_model_file("gguf", path))


def test_chatml_when_the_file_has_no_template(tmp_path):
    from ckeir.runtime.tokenizer import CHATML

    tk = _file_tokenizer(tmp_path, {})
    assert tk.chat_template == CHATML
    assert tk.apply_chat_template(CHAT) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_rendered_as_transformers_renders_it(tmp_path):
    from gguf import GGUFValueType

    from ckeir.errors import CkeError

    template = (
        "{% for m in messages %}\n"
        "  {% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}\n"
        "[{{ m['role'] }}]{{ m['content'] | tojson }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    meta = {"tokenizer.chat_template": (template, GGUFValueType.STRING)}
    tk = _file_tokenizer(tmp_path, meta)
    # trim_blocks and lstrip_blocks: the block lines leave nothing; tojson keeps non-ASCII
    assert tk.apply_chat_template([{"role": "user", "content": "café"}]) == (
        '[user]"café"\n[assistant]'
    )
    with pytest.raises(CkeError, match="refused the messages: no tools here"):
        tk.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(CkeError, match="messages must be a non-empty list"):
        tk.apply_chat_template([])
    # the sandbox: a template cannot reach Python's internals
    meta = {"tokenizer.chat_template": ("{{ ''.__class__.__mro__ }}", GGUFValueType.STRING)}
    with pytest.raises(CkeError, match="chat template"):
        _file_tokenizer(tmp_path, meta).apply_chat_template(CHAT)


def _streamed(tk, ids, stop=()):
    from ckeir.runtime.tokenizer import TextStream

    stream = TextStream(tk, stop)
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.finish())
    return pieces, stream


def test_stop_string_across_tokens_is_left_out(tk):
    ids = tk.encode("Hello there. The end is near, friend.")
    pieces, stream = _streamed(tk, ids, stop=["end is"])
    assert "".join(pieces) == "Hello there. The "
    assert stream.stopped == "end is"
    # no piece ever showed the start of the stop string before it was decided
    assert all("end" not in p for p in pieces)
    # without a stop string, every piece joined is the whole decoding
    pieces, stream = _streamed(tk, ids)
    assert "".join(pieces) == tk.decode(ids) and stream.stopped is None


def test_text_that_only_looks_like_a_stop_is_released(tk):
    ids = tk.encode("an ending, then more")
    pieces, stream = _streamed(tk, ids, stop=["end is"])
    assert "".join(pieces) == "an ending, then more" and stream.stopped is None


def test_streamed_text_never_holds_half_a_character(tk):
    ids = tk.encode("東京🙂 naïve")
    pieces, _ = _streamed(tk, ids, stop=["🙂 n"])
    assert "".join(pieces) == "東京"
    for p in pieces:
        p.encode("utf-8")  # whole characters only
        assert "\ufffd" not in p
