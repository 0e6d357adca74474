"""Stop strings in the API: `generate`, `stream` and `generate_many` end a sequence with the
id whose text reaches a stop string, and a model without a tokenizer refuses them."""

from __future__ import annotations

import pytest
from smollm2 import SPEC, needs_smollm2
from widths import TWO_CORES_SPEC

import ckeir
from ckeir.errors import CkeError

PROMPTS = ["Once upon a time", "The capital of France is"]


@pytest.fixture(scope="module")
def prog():
    with ckeir.compile(SPEC) as p:
        yield p


@needs_smollm2
def test_generation_ends_at_the_stop_string(prog):
    tk = prog.tokenizer
    ids = tk.encode(PROMPTS[0])
    full = prog.generate(ids, 32)
    text = tk.decode(full)
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    n = next(n for n in range(1, 33) if stop in tk.decode(full[:n]))
    assert n < 32
    assert prog.generate(ids, 32, stop=[stop]) == full[:n]
    assert list(prog.stream(ids, 32, stop=stop)) == full[:n]
    other = tk.encode(PROMPTS[1])
    many = prog.generate_many([ids, other, ids], 32, slots=2, stop=[stop])
    assert many == [full[:n], prog.generate(other, 32, stop=[stop]), full[:n]]


def test_stop_strings_need_a_tokenizer(tmp_path):
    spec = tmp_path / "m.cke"
    spec.write_text(TWO_CORES_SPEC)
    with ckeir.compile(spec, backend="reference") as p:
        for call in (p.generate, lambda *a, **k: p.generate_many([a[0]], *a[1:], **k)):
            with pytest.raises(CkeError, match="stop strings are text"):
                call([1, 2], 4, stop=["x"])
        with pytest.raises(CkeError, match="a stop string is empty"):
            p.generate([1, 2], 4, stop=[""])
