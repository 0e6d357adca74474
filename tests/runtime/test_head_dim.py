"""The `head_dim N` model setting (issue 15): a head's width when it is not hidden / heads, as
Gemma 3's (hidden 640, 4 heads of 256).  The program is built with heads x head_dim query
lanes (weights, attention, KV cache), the native and reference backends compute the same
numbers on it, and a width that is odd, too wide or not the file's is refused at its line."""

from __future__ import annotations

import numpy as np
import pytest
from ggufgen import CFG, write_gguf

import ckeir
from ckeir.errors import CkeError

MODEL = """model m {{
  family {family}; vocab 256; hidden 128; layers 2; heads 4; kv_heads 2; ffn 256
  head_dim {head_dim}
  context 64; weights random(seed = 1)
}}"""
REST = """
cluster c { node n0 { cores 2; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB } }
schedule s { run m on c; quantize weights q8_0 }
"""
PROMPT = [5, 17, 42, 99, 3]


def write(tmp_path, model: str):
    path = tmp_path / "m.cke"
    path.write_text(model + REST)
    return path


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_heads_64_wide_over_hidden_128_run_alike_on_both_backends(tmp_path, family):
    """Four heads of 64 over hidden 128: attn_q holds 256 rows, attn_k 2 x 64, the KV cache
    128 lanes a position, and the native program's logits are the reference's."""
    path = write(tmp_path, MODEL.format(family=family, head_dim=64))
    with ckeir.compile(path, threads=1) as native, ckeir.compile(path, backend="reference") as ref:
        assert native.config.head_dim == 64 and native.config.kv_dim == 128
        held = {k: native.weights[f"blk.0.{k}.weight"].shape for k in ("attn_q", "attn_k")}
        assert held == {"attn_q": (256, 136), "attn_k": (128, 136)}  # q8_0 rows of 128
        assert native.weights["blk.0.attn_output.weight"].shape == (128, 272)  # rows of 256
        a, b = native.engine, ref.engine
        ta, la = a.prefill(np.array(PROMPT, np.int32), 0)
        tb, lb = b.prefill(np.array(PROMPT, np.int32), 0)
        pos = len(PROMPT)
        for _ in range(4):
            np.testing.assert_allclose(np.ravel(la), np.ravel(lb), rtol=2e-3, atol=2e-3)
            assert ta == tb
            ta, la = a.decode(tb, pos)
            tb, lb = b.decode(tb, pos)
            pos += 1


@pytest.mark.parametrize(
    ("head_dim", "message"),
    [
        (63, "head_dim 63 must be even for RoPE"),
        (65536, "head_dim 65536 times 4 heads is 262144 query lanes in model m"),
    ],
)
def test_an_odd_or_too_wide_head_is_refused_at_its_line(tmp_path, head_dim, message):
    path = write(tmp_path, MODEL.format(family="llama", head_dim=head_dim))
    with pytest.raises(CkeError, match=message) as err:
        ckeir.compile(path)
    assert (err.value.loc.line, err.value.loc.col) == (3, 3)


def err_line(path) -> int:
    with pytest.raises(CkeError) as err:
        ckeir.compile(path)
    return err.value.loc.line


def test_a_head_width_other_than_the_files_is_refused_at_its_line(tmp_path):
    """The llama file's heads are hidden / heads = 16 wide; `head_dim 32` disagrees."""
    gguf = write_gguf(tmp_path / "m.gguf", CFG)
    path = write(
        tmp_path, f'model m {{\n  family llama\n  head_dim 32\n  weights gguf("{gguf}")\n}}'
    )
    with pytest.raises(CkeError, match="head_dim 32 disagrees with .*m.gguf, whose heads are 16"):
        ckeir.compile(path)
    assert err_line(path) == 3
    path = write(
        tmp_path, f'model m {{\n  family llama\n  head_dim 16\n  weights gguf("{gguf}")\n}}'
    )
    with ckeir.compile(path, threads=1) as prog:
        assert prog.config.head_dim == 16
