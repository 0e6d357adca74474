"""Kernels that compute on the GGML types model files hold, as stored (issue 15): F16 and BF16
(widened in registers), Q5_0 and Q5_1 (a 32-bit mask of fifth bits per block; their
quantizer-made blocks also run through every test of test_quant_kernels.py), and the
K-quants Q4_K, Q5_K, Q6_K (256-element super-blocks, `kernels.kquant`).

- `qembed` bitwise equal to `gguf.quants.dequantize` (hypothesis draws the tables' bytes);
- `matmul` with float activations, decode GEMV and prefill GEMM: within f32 accumulation
  error of the float64 product with the dequantized weights, the same bits on any thread
  count;
- `qmatmul` (int8 activations) on the 32-blocks, on each ISA level: within 1e-5 of each
  row's scale of `ckeir.quant.qmatmul_reference`.
"""

from __future__ import annotations

import itertools

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isa_pairs import rotated

from ckeir.backends.llvm.host import ISA_LEVELS, detect_host, native_host
from ckeir.backends.llvm.kernels.matmul import matmul
from ckeir.backends.llvm.kernels.quant_embed import qembed
from ckeir.backends.llvm.kernels.quant_matmul import qmatmul
from ckeir.formats import FORMATS, K_LAYOUTS
from ckeir.quant import qmatmul_reference, quantize_activations, weight_parts
from ckeir.runtime.weights import dequantize_rows, quantize_rows

HALVES = ["f16", "bf16"]
BLOCKS = ["q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
KQUANTS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
rng = np.random.default_rng(15)


def awkward(rows: int, k: int) -> np.ndarray:
    """Gaussian rows with some 32-element pieces zero, huge (1e4) or tiny (1e-6)."""
    x = rng.standard_normal((rows, k)).astype(np.float32)
    whole = k // 32 * 32
    pieces = x[:, :whole].reshape(rows, -1, 32)
    pick = rng.random(pieces.shape[:2])
    pieces[pick < 0.08] = 0.0
    pieces[(pick >= 0.08) & (pick < 0.14)] *= np.float32(1e4)
    pieces[(pick >= 0.14) & (pick < 0.2)] *= np.float32(1e-6)
    x[:, :whole] = pieces.reshape(rows, whole)
    return x


def random_rows(fmt: str, rows: int, k: int, seed: int, moderate: bool = False) -> np.ndarray:
    """Rows of `fmt` whose bytes are random, scales included (finite ones): every bit
    pattern a file may hold, not only those a quantizer makes."""
    g = np.random.default_rng(seed)
    f = FORMATS[fmt]
    if not f.quantized:
        bits = g.integers(0, 2**16, (rows, k), dtype=np.uint16)
        exp = (bits >> (10 if fmt == "f16" else 7)) & (31 if fmt == "f16" else 255)
        bits[exp == (31 if fmt == "f16" else 255)] &= 0x8000  # no inf or nan
        if fmt == "bf16" and moderate:  # exponents within 2**±20: sums stay finite
            bits = (bits & 0x807F) | (g.integers(107, 148, bits.shape, dtype=np.uint16) << 7)
        return bits.view(np.float16) if fmt == "f16" else bits
    raw = g.integers(0, 256, (rows, k // f.block, f.block_bytes), dtype=np.uint8)
    lay = K_LAYOUTS.get(fmt)
    heads = range(0, f.head, 2) if lay is None else [lay.d] + [lay.dmin] * (lay.dmin is not None)
    for at in heads:  # finite f16 scales of moderate size
        scale = g.standard_normal(raw.shape[:2]).astype(np.float16)
        raw[..., at : at + 2] = scale[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


# ---- qembed -------------------------------------------------------------------------------


@settings(max_examples=24, deadline=None)
@given(st.sampled_from(HALVES + BLOCKS), st.integers(1, 24), st.integers(0, 2**32 - 1))
def test_qembed_is_bitwise_gguf(run_kernel, fmt, pieces, seed):
    """Tables of random bytes: any 16-bit float (subnormals and signed zeros too, rows not
    whole 32s), any block (every mask of fifth bits, any nibbles, any packed K-quant scales)
    with finite f16 scales."""
    host = detect_host()
    dim = (8 if fmt in HALVES else FORMATS[fmt].block) * pieces
    table = random_rows(fmt, 20, dim, seed)
    want = dequantize_rows(table, fmt)
    ids = np.random.default_rng(seed).integers(0, 20, 5).astype(np.int32)
    for nth in (1, 3):
        out = np.full((5, dim), np.nan, np.float32)
        run_kernel(qembed(fmt, 20, dim, host), host, [ids, table, out], 5, nth=nth)
        np.testing.assert_array_equal(out.view(np.uint32), want[ids].view(np.uint32))


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(BLOCKS), st.integers(1, 13), st.integers(0, 2**32 - 1))
def test_qmatmul_blocks_of_random_bytes(run_kernel, fmt, blocks, seed):
    """Each ISA level against `qmatmul_reference` on random blocks (1e-5 of Σ|terms|)."""
    k, n_out = FORMATS[fmt].block * min(blocks, 4 if FORMATS[fmt].super_block else 13), 19
    w = random_rows(fmt, n_out, k, seed)
    x = awkward(3, k)
    want = qmatmul_reference(x, w, fmt)
    mag = magnitude(x, w, fmt)
    for isa in ISA_LEVELS[: ISA_LEVELS.index(native_host().isa) + 1]:
        host = detect_host(isa)
        for n in (1, 3):
            out = np.full((n, n_out), np.nan, np.float32)
            run_kernel(qmatmul(fmt, n_out, k, (16, 256), host), host, [x[:n], w, out], n, nth=2)
            assert (np.abs(out - want[:n]) <= 1e-5 * mag[:n] + 1e-30).all(), isa


def magnitude(x: np.ndarray, w: np.ndarray, fmt: str) -> np.ndarray:
    """Σ|terms| of each output of `qmatmul_reference` (its products taken absolute)."""
    qx, dx = quantize_activations(x)
    xs = np.abs(qx.reshape(*dx.shape, 32) * dx[..., None].astype(np.float64)).reshape(x.shape)
    scale, mins, q = weight_parts(w, fmt)
    return xs @ (np.abs(q * scale.astype(np.float64)) + np.abs(mins.astype(np.float64))).T


@pytest.mark.parametrize("host,fmt,chunk", rotated(KQUANTS, [0, 64, 256, 512]), indirect=["host"])
def test_kqmatmul_chunks_and_rows(host, run_kernel, fmt, chunk):
    """Quantizer-made K-quants at each ISA level (each level meets every type and every
    chunk, `isa_pairs`): within 1e-5 of Σ|terms| of the oracle whatever the chunk; `separate`
    chunk sums that fold (left to right) to the folded call's bits; a rowwise call gives each
    token row the bits of that row alone."""
    from ckeir.backends.llvm.kernels.kquant import kqmatmul

    n_out, k, n = 40, 1024, 6
    w = quantize_rows(awkward(n_out, k), fmt)
    x = awkward(n, k)
    want, mag = qmatmul_reference(x, w, fmt), magnitude(x, w, fmt)
    out = np.full((n, n_out), np.nan, np.float32)
    run_kernel(kqmatmul(fmt, n_out, k, host, chunk), host, [x, w, out], n, nth=3)
    assert (np.abs(out - want) <= 1e-5 * mag + 1e-30).all()
    if chunk:
        parts = np.full((k // chunk, n, n_out), np.nan, np.float32)
        run_kernel(kqmatmul(fmt, n_out, k, host, chunk, True), host, [x, w, parts], n, nth=2)
        folded = np.float32(-0.0) + parts[0]
        for c in parts[1:]:
            folded = folded + c
        np.testing.assert_array_equal(folded.view(np.uint32), out.view(np.uint32))
    rows = np.full((n, n_out), np.nan, np.float32)
    run_kernel(kqmatmul(fmt, n_out, k, host, chunk, rowwise=True), host, [x, w, rows], n, nth=2)
    for t in range(n):
        one = np.full((1, n_out), np.nan, np.float32)
        run_kernel(kqmatmul(fmt, n_out, k, host, chunk), host, [x[t : t + 1].copy(), w, one], 1)
        np.testing.assert_array_equal(rows[t].view(np.uint32), one[0].view(np.uint32))


@pytest.mark.parametrize("fmt", ["q2_k", "q3_k"])
def test_kqmatmul_sub_block_lanes_on_vnni(run_kernel, fmt):
    """VNNI Q2_K and Q3_K sum each 16-element sub-block in one int32 lane over a super-block
    (`Plan.grouped`: the activations stored in lane order, the 2-bit fields and Q3_K's mask
    bits gathered by a dword permute and per-lane shifts).  Random bytes (every scale, min and
    mask pattern) and quantizer-made rows, 6 tokens (one group of 4, then single rows), chunks
    of whole super-blocks: within 1e-5 of Σ|terms| of the oracle; rowwise bits equal one
    row's; `separate` chunk sums fold to the folded call's bits."""
    from ckeir.backends.llvm.kernels.kquant import kqmatmul, plan

    native = native_host()
    if not plan(fmt, 256, native).vnni:
        pytest.skip("host lacks AVX-512 VNNI")
    # the bit fields by GFNI's affine byte transform, and by rotates on a host without it
    hosts = [native, attrs.evolve(native, features=native.features - {"gfni"})]
    n_out, k, n = 48, 1024, 6
    cases = [random_rows(fmt, n_out, k, 7), quantize_rows(awkward(n_out, k), fmt)]
    for host, w in itertools.product(hosts, cases):
        x = awkward(n, k)
        want, mag = qmatmul_reference(x, w, fmt), magnitude(x, w, fmt)
        for chunk in (0, 512):
            assert plan(fmt, k, host, chunk).grouped
            out = np.full((n, n_out), np.nan, np.float32)
            run_kernel(kqmatmul(fmt, n_out, k, host, chunk), host, [x, w, out], n, nth=2)
            assert (np.abs(out - want) <= 1e-5 * mag + 1e-30).all(), chunk
            rows = np.full((n, n_out), np.nan, np.float32)
            kern = kqmatmul(fmt, n_out, k, host, chunk, rowwise=True)
            run_kernel(kern, host, [x, w, rows], n, nth=3)
            one = np.full((1, n_out), np.nan, np.float32)
            run_kernel(kqmatmul(fmt, n_out, k, host, chunk), host, [x[4:5].copy(), w, one], 1)
            np.testing.assert_array_equal(rows[4].view(np.uint32), one[0].view(np.uint32))
        parts = np.full((2, n, n_out), np.nan, np.float32)
        run_kernel(kqmatmul(fmt, n_out, k, host, 512, True), host, [x, w, parts], n, nth=2)
        folded = np.float32(-0.0) + parts[0] + parts[1]
        np.testing.assert_array_equal(folded.view(np.uint32), out.view(np.uint32))


@pytest.mark.parametrize("fmt", KQUANTS)
def test_kquant_float_matmul_and_embed(host, run_kernel, assert_close, fmt):
    """The float-activation matmul (decode and prefill) within f32 accumulation error of
    the float64 product with gguf's values, and the table bitwise gguf's, at each ISA."""
    n_out, k = 33, 768
    w = quantize_rows(awkward(n_out, k), fmt)
    wf = dequantize_rows(w, fmt).astype(np.float64)
    for n in (1, 4):
        x = awkward(n, k)
        out = np.full((n, n_out), np.nan, np.float32)
        run_kernel(matmul(n_out, k, (16, 256), host, fmt=fmt), host, [x, w, out], n, nth=2)
        scale = np.abs(x.astype(np.float64)) @ np.abs(wf).T + 1e-30
        assert_close(out, x.astype(np.float64) @ wf.T, scale, rtol=1e-5)
    ids = np.array([32, 0, 7], np.int32)
    table = np.full((3, k), np.nan, np.float32)
    run_kernel(qembed(fmt, n_out, k, host), host, [ids, w, table], 3, nth=2)
    np.testing.assert_array_equal(table.view(np.uint32), wf.astype(np.float32)[ids].view(np.uint32))


@pytest.mark.parametrize("fmt", HALVES)
def test_qembed_halves_every_isa(host, run_kernel, fmt):
    table = quantize_rows(awkward(50, 576), fmt)
    ids = np.array([3, 49, 0, 3], np.int32)
    out = np.full((4, 576), np.nan, np.float32)
    run_kernel(qembed(fmt, 50, 576, host), host, [ids, table, out], 4, nth=2)
    want = dequantize_rows(table, fmt)[ids]
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


# ---- matmul with float activations -----------------------------------------------------------


@pytest.mark.parametrize("fmt", HALVES)
@pytest.mark.parametrize("n_out,k", [(576, 576), (33, 96), (19, 40), (7, 1000)])
def test_float_matmul_halves(host, run_kernel, assert_close, fmt, n_out, k):
    """Decode (n = 1) and prefill (n = 5): within f32 accumulation error of Σ|w·x|, and the
    same bits on 1, 2 or 3 threads."""
    w = quantize_rows(awkward(n_out, k), fmt)
    wf = dequantize_rows(w, fmt).astype(np.float64)
    kernel = matmul(n_out, k, (16, 256), host, fmt=fmt)
    for n in (1, 5):
        x = awkward(n, k)
        exact = x.astype(np.float64) @ wf.T
        scale = np.abs(x.astype(np.float64)) @ np.abs(wf).T + 1e-30
        outs = []
        for nth in (1, 2, 3):
            outs.append(np.full((n, n_out), np.nan, np.float32))
            run_kernel(kernel, host, [x, w, outs[-1]], n, nth=nth)
        assert_close(outs[0], exact, scale, rtol=1e-5)
        for out in outs[1:]:
            np.testing.assert_array_equal(out.view(np.uint32), outs[0].view(np.uint32))


@pytest.mark.parametrize("fmt", HALVES)
def test_float_matmul_halves_reads_the_stored_bits(run_kernel, assert_close, fmt):
    """Random bit patterns (what a file may hold beyond what a quantizer makes)."""
    host = detect_host()
    w = random_rows(fmt, 40, 320, 3, moderate=True)
    wf = dequantize_rows(w, fmt).astype(np.float64)
    x = awkward(1, 320)
    out = np.full((1, 40), np.nan, np.float32)
    run_kernel(matmul(40, 320, (16, 256), host, fmt=fmt), host, [x, w, out], 1, nth=2)
    scale = np.abs(x.astype(np.float64)) @ np.abs(wf).T + 1e-30
    assert_close(out, x.astype(np.float64) @ wf.T, scale, rtol=1e-5)
