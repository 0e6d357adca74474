"""`outputs.replace_with`: a writer that takes a path (llama.cpp's quantizer, the Gemma 3
package's assembler) leaves a whole file at the target or none, and no file beside it."""

from __future__ import annotations

import os

import pytest

from ckeir.outputs import replace_with


def test_a_writer_that_fails_leaves_nothing_and_the_old_file(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")

    def half_then_fail(part: str) -> None:
        with open(part, "wb") as f:
            f.write(b"half")
        raise RuntimeError("quantizer failed")

    with pytest.raises(RuntimeError):
        replace_with(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.gguf"]


def test_a_writer_that_finishes_replaces_the_target(tmp_path):
    target = tmp_path / "model.gguf"
    seen = []

    def write(part: str) -> None:
        seen.append(part)
        assert not target.exists()  # nothing at the target while the writer works
        with open(part, "wb") as f:
            f.write(b"whole")

    replace_with(target, write)
    assert target.read_bytes() == b"whole"
    assert os.path.dirname(seen[0]) == str(tmp_path)
    assert os.listdir(tmp_path) == ["model.gguf"]
