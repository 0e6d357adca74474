"""The Q8_0 transfer kernels (`kernels/transfer.py`) on each ISA level, bit for bit against
`gguf.quants` (the reference backend's numerics): blocks of every magnitude (scales that are
f16 subnormals, that overflow f16, whose inverse overflows f32), all-zero blocks, ties at .5,
and the round trip `q8_0_requant` equal to dequantize(quantize(x))."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from ckeir.backends.llvm.kernels.transfer import q8_0_dequantize, q8_0_quantize, q8_0_requant

Q8 = GGMLQuantizationType.Q8_0
K = 96


def awkward(rows: int, seed: int) -> np.ndarray:
    """Rows whose 32-blocks span float32's range, with zeros, ties and tiny blocks."""
    rng = np.random.default_rng(seed)
    scale = np.exp2(rng.integers(-140, 100, (rows, K // 32, 1)))
    x = (rng.standard_normal((rows, K // 32, 32)) * scale).reshape(rows, K).astype(np.float32)
    x[0, :32] = 0.0
    x[1, :32] = np.arange(32, dtype=np.float32) - 15.5  # d = 16.5/127: many exact halves
    x[1, 0] = 127.0 / 2  # and a scale of exactly 0.5
    x[2, 32:64] = np.float32(1e-40)  # a subnormal scale whose inverse overflows
    x[3, 64:] = np.float32(3e38)  # a scale beyond f16
    return x


def gguf_round_trip(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():  # gguf divides by zero and casts NaN on awkward blocks
        warnings.simplefilter("ignore", RuntimeWarning)
        blocks = quants.quantize(x, Q8)
        return blocks, quants.dequantize(blocks, Q8).astype(np.float32)


@pytest.mark.parametrize("nth", [1, 2])
def test_transfer_kernels_are_gguf_exact(host, run_kernel, nth):
    x = awkward(7, seed=3 + nth)
    want_blocks, want = gguf_round_trip(x)
    blocks = np.zeros_like(want_blocks)
    run_kernel(q8_0_quantize(K, host), host, [x, blocks], n=7, nth=nth)
    assert np.array_equal(blocks, want_blocks)
    out = np.zeros_like(x)
    run_kernel(q8_0_dequantize(K, host), host, [want_blocks, out], n=7, nth=nth)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
    again = np.zeros_like(x)
    run_kernel(q8_0_requant(K, host), host, [x, again], n=7, nth=nth)
    assert np.array_equal(again.view(np.uint32), want.view(np.uint32))


def test_rows_that_are_not_whole_blocks_are_refused(host):
    with pytest.raises(ValueError, match="not a multiple of 32"):
        q8_0_quantize(40, host)
