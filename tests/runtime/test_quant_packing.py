"""Weights packed for a schedule are GGML's blocks bit for bit (gguf.quants is the reference
implementation of ggml-quants.c), whatever the values: all-zero blocks, huge and tiny
magnitudes, rows that are exactly whole blocks."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ckeir.formats import FORMATS
from ckeir.runtime.weights import dequantize_rows, pack

FMTS = ["q8_0", "q4_0", "q4_1"]


@st.composite
def weights(draw):
    rows = draw(st.integers(1, 6))
    blocks = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([0.0, 1e-6, 1e-3, 1.0, 1e4]))
    x = draw(
        arrays(
            np.float32, (rows, 32 * blocks), elements=st.floats(-1, 1, width=32, allow_nan=False)
        )
    )
    x = x * np.float32(scale)
    if draw(st.booleans()):  # one all-zero block
        x[draw(st.integers(0, rows - 1)), :32] = 0
    return x


@settings(max_examples=80, deadline=None)
@given(weights(), st.sampled_from(FMTS))
def test_pack_is_bit_exact_with_gguf(w, fmt):
    packed = pack({"w": w}, {"w": fmt})["w"]
    ref = quants.quantize(w, GGMLQuantizationType[fmt.upper()])
    assert packed.dtype == np.uint8 and packed.shape == (
        w.shape[0],
        FORMATS[fmt].row_bytes(w.shape[1]),
    )
    assert np.array_equal(packed, ref)
    back = dequantize_rows(packed, fmt)
    assert np.array_equal(back, quants.dequantize(ref, GGMLQuantizationType[fmt.upper()]))


@pytest.mark.parametrize("fmt", FMTS)
def test_error_is_bounded_by_the_block_scale(fmt):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 96)).astype(np.float32)
    back = dequantize_rows(pack({"w": w}, {"w": fmt})["w"], fmt)
    blocks = np.abs(w.reshape(16, 3, 32)).max(axis=2, keepdims=True)
    step = blocks / (127 if fmt == "q8_0" else 7)
    assert np.all(np.abs(back - w).reshape(16, 3, 32) <= step * 1.01 + 1e-7)


def test_f32_weights_are_not_copied():
    w = np.ones((4, 64), np.float32)
    assert pack({"w": w}, {"w": "f32"})["w"] is w
