"""The decode GEMV on 16-bit float weights (F16, BF16) streams its blocks of GEMV_ROWS rows
with the next block asked for while one is summed: at SmolLM2's 576-wide rows the hardware
prefetchers alone left it waiting on DRAM for up to half its time (benchmarks/float_gemv.py,
benchmarks/decode_ops.py).  F32 rows, read at bandwidth without it, are left alone."""

from __future__ import annotations

import re

import numpy as np
import pytest
from isa_pairs import rotated

from ckeir.backends.llvm.kernels.matmul import GEMV_ROWS, matmul
from ckeir.formats import FORMATS
from ckeir.runtime.weights import dequantize_rows, quantize_rows

rng = np.random.default_rng(2)


def weights(fmt: str, n_out: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(stored rows, their float64 values)."""
    w = rng.standard_normal((n_out, k)).astype(np.float32)
    stored = quantize_rows(w, fmt)
    return stored, dequantize_rows(stored, fmt).astype(np.float64)


@pytest.mark.parametrize(
    ("host", "fmt", "n_out", "k"),
    rotated(["f16", "bf16"], [(192, 576), (40, 1536), (1536, 576)]),
    indirect=["host"],
)
def test_decode_gemv_asks_for_the_next_block(host, run_kernel, assert_close, fmt, n_out, k):
    """Its machine code prefetches every line of the next block in the steps over K (one
    prefetch per 64 bytes a step reads from the block's rows, the loop unrolled or not),
    and its rows are the float64 product's within f32 accumulation error, the same bits on
    1 and 3 threads."""
    kernel = matmul(n_out, k, (16, k), host, fmt=fmt)
    asm = run_kernel.compile(kernel, host).asm()
    per_step = GEMV_ROWS * FORMATS[fmt].row_bytes(host.vector_width) // 64
    prefetches = re.findall(r"\bprefetcht0\s", asm)
    assert prefetches and len(prefetches) % per_step == 0, (len(prefetches), per_step)

    w, wf = weights(fmt, n_out, k)
    x = rng.standard_normal((1, k)).astype(np.float32)
    outs = []
    for nth in (1, 3):
        outs.append(np.full((1, n_out), np.nan, np.float32))
        run_kernel(kernel, host, [x, w, outs[-1]], 1, nth=nth)
    scale = np.abs(x.astype(np.float64)) @ np.abs(wf).T + 1e-30
    assert_close(outs[0], x.astype(np.float64) @ wf.T, scale, rtol=1e-5)
    np.testing.assert_array_equal(outs[1].view(np.uint32), outs[0].view(np.uint32))
