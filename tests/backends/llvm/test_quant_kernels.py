"""The int8 quantized kernels (`qmatmul`, `qembed`) and their numpy semantics (`ckeir.quant`).

- `quantize_activations` against a literal transcription of the rule (GGML Q8_0 with an f32
  scale, C `roundf`), ties at .5 and all-zero blocks included;
- `qmatmul` on each ISA level (VNNI on avx512 hosts that have it; the generic integer path
  on avx2 and generic) against `qmatmul_reference` within 1e-5 of each output row's largest
  magnitude — the integer sums are exact, only the f32 accumulation differs — and against the
  float64 product with the dequantized weights within the activation-quantization bound
  (about 5e-3 relative on Gaussian data);
- `qembed` bitwise equal to `gguf.quants.dequantize`;
- `matmul` with float activations on blocks (`quantize activations f32`), the decode GEMV:
  against the float64 product with the dequantized weights within f32 accumulation error,
  at SmolLM2's decode shapes and odd ones, bitwise equal whatever the thread count and
  bitwise equal to a numpy transcription of the order its docstring states; and SmolLM2
  with float activations keeps its greedy ids.

Each ISA level meets every format and every shape, not every pair of them (`isa_pairs`):
compiling a kernel is nearly all of a case's time.
"""

from __future__ import annotations

import ctypes
import math
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isa_pairs import rotated

import ckeir
from ckeir.backends.llvm.host import detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import entry_ctx
from ckeir.backends.llvm.kernels.common import FunctionWriter
from ckeir.backends.llvm.kernels.matmul import matmul
from ckeir.backends.llvm.kernels.quant_embed import qembed
from ckeir.backends.llvm.kernels.quant_matmul import halves_to_floats, plan, qmatmul
from ckeir.quant import qmatmul_reference, quantize_activations, unpack_blocks
from ckeir.runtime.weights import dequantize_rows, quantize_rows

FORMATS = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
rng = np.random.default_rng(7)


def awkward(rows: int, k: int) -> np.ndarray:
    """Gaussian rows with some 32-blocks all zero, some huge (1e4) and some tiny (1e-6)."""
    x = rng.standard_normal((rows, k)).astype(np.float32)
    blocks = x.reshape(rows, k // 32, 32)
    pick = rng.random(blocks.shape[:2])
    blocks[pick < 0.08] = 0.0
    blocks[(pick >= 0.08) & (pick < 0.14)] *= np.float32(1e4)
    blocks[(pick >= 0.14) & (pick < 0.2)] *= np.float32(1e-6)
    return x


# ---- activation quantization ----------------------------------------------------------------


def quantize_transcribed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rule, one block and one element at a time, in float32 scalars."""
    q = np.zeros(x.shape, np.int8)
    d = np.zeros((*x.shape[:-1], x.shape[-1] // 32), np.float32)
    for idx in np.ndindex(*d.shape):
        block = x[(*idx[:-1], slice(32 * idx[-1], 32 * idx[-1] + 32))]
        amax = np.float32(0)
        for v in block:
            amax = max(amax, np.float32(abs(v)))
        dx = np.float32(amax / np.float32(127))
        inv = np.float32(np.float32(1) / dx) if dx != 0 else np.float32(0)
        d[idx] = dx
        for i, v in enumerate(block):
            y = float(np.float32(v * inv))
            q[(*idx[:-1], 32 * idx[-1] + i)] = int(math.copysign(math.floor(abs(y) + 0.5), y))
    return q, d


def test_quantize_activations_ties_and_zero_blocks():
    x = np.zeros((2, 96), np.float32)
    x[0, :32] = np.arange(32) - 15.5  # amax 16.5: no exact ties, scale 16.5/127
    x[0, 32:64] = 0.5 * np.arange(-16, 16)  # with amax 127 below: d = 1, ties at every .5
    x[0, 32] = 127.0
    x[1, 64:96] = -np.float32(1e-6) * np.arange(32)  # tiny, negative
    q, d = quantize_activations(x)
    tq, td = quantize_transcribed(x)
    np.testing.assert_array_equal(q, tq)
    np.testing.assert_array_equal(d.view(np.uint32), td.view(np.uint32))
    assert d[0, 1] == 1.0 and list(q[0, 33:38]) == [-8, -7, -7, -6, -6]  # halves away from 0
    assert q[0, 32 + 17] == 1 and q[0, 32 + 15] == -1  # 0.5 -> 1, -0.5 -> -1
    assert d[1, 0] == 0 and d[0, 2] == 0 and not q[1, :64].any()  # all-zero blocks


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.floats(-30, 30),
    st.integers(0, 2**32 - 1),
)
def test_quantize_activations_property(rows, blocks, log_scale, seed):
    x = np.random.default_rng(seed).standard_normal((rows, 32 * blocks)).astype(np.float32)
    x *= np.float32(2.0**log_scale)
    q, d = quantize_activations(x)
    tq, td = quantize_transcribed(x)
    np.testing.assert_array_equal(q, tq)
    np.testing.assert_array_equal(d, td)
    assert np.abs(q).max() <= 127


def test_reference_is_the_block_formula():
    """qmatmul_reference equals the formula written block by block with integer sums."""
    x, n_out, k = awkward(3, 96), 5, 96
    for fmt in FORMATS:
        w = quantize_rows(awkward(n_out, k), fmt)
        q, dx = quantize_activations(x)
        dw, mw, qw = unpack_blocks(w, fmt)
        want = np.zeros((3, n_out))
        for t in range(3):
            for n in range(n_out):
                for b in range(k // 32):
                    qx = q[t, 32 * b : 32 * b + 32].astype(np.int64)
                    s = int(qx @ qw[n, b].astype(np.int64))
                    want[t, n] += float(dw[n, b]) * float(dx[t, b]) * s
                    if mw is not None:
                        want[t, n] += float(mw[n, b]) * float(dx[t, b]) * int(qx.sum())
        np.testing.assert_allclose(qmatmul_reference(x, w, fmt), want, rtol=1e-12, atol=1e-300)


def magnitude(x: np.ndarray, w: np.ndarray, fmt: str) -> np.ndarray:
    """Σ_b |term_b| of each output: `qmatmul_reference` with every product taken absolute."""
    q, dx = quantize_activations(x)
    xs = np.abs(q.reshape(*dx.shape, 32) * dx[..., None].astype(np.float64)).reshape(q.shape)
    d, m, qw = unpack_blocks(w, fmt)
    ws = np.abs(qw * d[..., None].astype(np.float64))
    if m is not None:
        ws = ws + np.abs(m[..., None].astype(np.float64))
    return xs @ ws.reshape(ws.shape[0], -1).T + 1e-300


# ---- qmatmul --------------------------------------------------------------------------------

SHAPES = [(1, 1536), (7, 32), (33, 96), (300, 576), (300, 64)]  # N, K


@pytest.mark.parametrize("host,fmt,n_out,k", rotated(FORMATS, SHAPES), indirect=["host"])
def test_qmatmul(host, run_kernel, fmt, n_out, k):
    kernel = qmatmul(fmt, n_out, k, (16, 256), host)
    w = quantize_rows(awkward(n_out, k), fmt)
    wf = dequantize_rows(w, fmt).astype(np.float64)
    for n in (1, 3, 8):
        x = awkward(n, k)
        want = qmatmul_reference(x, w, fmt)
        exact = x.astype(np.float64) @ wf.T
        _, dx = quantize_activations(x)
        # |x - dequant(q8(x))| <= d_x/2 per element, so the product moves at most this much
        quant_bound = (np.repeat(dx, 32, axis=1).astype(np.float64) / 2) @ np.abs(wf).T
        # f32 accumulation: 1e-5 of the largest output, or of the terms' magnitudes where a
        # row's blocks cancel (one output of 1e3 from terms of 1e7)
        tolerance = 1e-5 * np.abs(want).max() + 2e-6 * magnitude(x, w, fmt)
        for nth in (1, 2, 3):
            out = np.full((n, n_out), np.nan, np.float32)
            run_kernel(kernel, host, [x, w, out], n, pos=5, nth=nth)
            err = np.abs(out - want)
            assert (err <= tolerance).all(), f"n={n} nth={nth}: worst {np.max(err / tolerance):.3g}"
            assert (np.abs(out - exact) <= quant_bound + 2 * tolerance).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_qmatmul_prefill_beyond_one_batch(host, run_kernel, fmt):
    """More token rows than one quantized batch (32 here), the last batch ragged."""
    n_out, k, n = 40, 96, 37
    kernel = qmatmul(fmt, n_out, k, (8, 64), host)
    assert plan(fmt, k, (8, 64), host).batch < n
    w = quantize_rows(awkward(n_out, k), fmt)
    x = awkward(n, k)
    want = qmatmul_reference(x, w, fmt)
    out = np.full((n, n_out), np.nan, np.float32)
    run_kernel(kernel, host, [x, w, out], n, nth=2)
    assert (np.abs(out - want) <= 1e-5 * np.abs(want).max() + 2e-6 * magnitude(x, w, fmt)).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_qmatmul_activation_error_is_about_5e3(host, run_kernel, fmt):
    """On Gaussian data, 8-bit activations cost ~5e-3 of the output scale (not a bug)."""
    n_out, k, n = 64, 576, 4
    x = rng.standard_normal((n, k)).astype(np.float32)
    w = quantize_rows(rng.standard_normal((n_out, k)).astype(np.float32), fmt)
    out = np.zeros((n, n_out), np.float32)
    run_kernel(qmatmul(fmt, n_out, k, (64, 256), host), host, [x, w, out], n, nth=2)
    exact = x.astype(np.float64) @ dequantize_rows(w, fmt).astype(np.float64).T
    rel = np.abs(out - exact).max() / np.abs(exact).max()
    assert 1e-4 < rel < 1.5e-2


def test_qmatmul_paths_and_names(host):
    k = qmatmul("q4_1", 64, 576, (64, 256), host)
    assert k.args == ("x", "w", "out")
    assert ("_vnni" in k.name) == host.has_vnni
    with pytest.raises(ValueError, match="multiple of 32"):
        qmatmul("q8_0", 4, 48, (64, 256), host)
    with pytest.raises(ValueError, match="no kernel"):
        qmatmul("f16", 4, 64, (64, 256), host)


def test_vnni_asm_uses_vpdpbusd(run_kernel):
    if not detect_host().has_vnni:
        pytest.skip("host lacks avx512vnni")
    for isa, want in (("avx512", True), ("avx2", False)):
        host = detect_host(isa)
        for fmt in FORMATS:
            asm = run_kernel.compile(qmatmul(fmt, 64, 576, (64, 256), host), host).asm()
            assert ("vpdpbusd" in asm) == want, (isa, fmt)


def test_halves_to_floats_without_f16c_is_exact():
    """The lane-wise integer f16 conversion of the generic path, on all 65536 halves."""
    f = FunctionWriter("conv", [("ptr", "%src"), ("ptr", "%dst"), ("i64", "%n")], linkage="")
    with f.loop(0, "%n", 8) as i:
        h = f.load("<8 x i16>", f.gep("%src", i, "i16"), 2)
        f.store("<8 x float>", halves_to_floats(f, h, 8, f16c=False), f.gep("%dst", i))
    cm = compile_ir(f.finish(), detect_host("generic"))
    halves = np.arange(65536, dtype=np.uint16)
    out = np.zeros(65536, np.float32)
    conv = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        cm.address("conv")
    )
    conv(halves.ctypes.data, out.ctypes.data, halves.size)
    want = halves.view(np.float16).astype(np.float32)
    same = (out.view(np.uint32) == want.view(np.uint32)) | (np.isnan(out) & np.isnan(want))
    assert same.all()


# ---- qembed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host,fmt,vocab,dim", rotated(FORMATS, [(50, 64), (300, 576), (9, 32)]), indirect=["host"]
)
def test_qembed_is_bitwise_gguf(host, run_kernel, fmt, vocab, dim):
    table = quantize_rows(awkward(vocab, dim), fmt)
    want_all = dequantize_rows(table, fmt)
    kernel = qembed(fmt, vocab, dim, host)
    for n in (1, 4):
        ids = rng.integers(0, vocab, n).astype(np.int32)
        for nth in (1, 2, 3):
            out = np.full((n, dim), np.nan, np.float32)
            run_kernel(kernel, host, [ids, table, out], n, nth=nth)
            np.testing.assert_array_equal(out.view(np.uint32), want_all[ids].view(np.uint32))


# ---- matmul with float activations: the decode GEMV on blocks ---------------------------------

SMOLLM2_LAYERS = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # N, K of its matrices
ODD = [(7, 32), (33, 96), (19, 160), (45, 608)]  # K one block, or not a whole step of blocks


@attrs.frozen
class GemvRuns:
    """The decode GEMV on awkward data, run at each thread count."""

    fmt: str
    x: np.ndarray
    w: np.ndarray
    outs: list

    @property
    def exact(self) -> np.ndarray:
        return self.x.astype(np.float64) @ self.dequantized.T

    @property
    def magnitude(self) -> np.ndarray:
        """Σ|w·x| of each output, plus a floor for all-zero rows."""
        return np.abs(self.x.astype(np.float64)) @ np.abs(self.dequantized).T + 1e-30

    @property
    def dequantized(self) -> np.ndarray:
        return dequantize_rows(self.w, self.fmt).astype(np.float64)


def float_gemv_runs(run_kernel, host, fmt: str, n_out: int, k: int, threads=(1, 2, 3)):
    """Each thread count, then 7 parts run on this thread, last part first."""
    w = quantize_rows(awkward(n_out, k), fmt)
    x = awkward(1, k)
    kernel = matmul(n_out, k, (64, 256), host, fmt=fmt)
    outs = []
    for nth in threads:
        outs.append(np.full((1, n_out), np.nan, np.float32))
        run_kernel(kernel, host, [x, w, outs[-1]], 1, pos=3, nth=nth)
    outs.append(np.full((1, n_out), np.nan, np.float32))
    entry = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)(
        run_kernel.compile(kernel, host).address("entry")
    )
    ctx = entry_ctx([x.ctypes.data, w.ctypes.data, outs[-1].ctypes.data], 1, 3)
    for part in reversed(range(7)):
        entry(ctypes.addressof(ctx), part, 7)
    return GemvRuns(fmt, x, w, outs)


@pytest.mark.parametrize(
    "host,fmt,n_out,k", rotated(FORMATS, SMOLLM2_LAYERS + ODD), indirect=["host"]
)
def test_float_activation_gemv(host, run_kernel, assert_close, fmt, n_out, k):
    """Within f32 accumulation error of Σ|w·x| (each output adds fewer than K/64 + 16
    rounded terms per lane: 1e-5 is a tenfold margin), and the same bits on 1, 2 or 3
    threads or in 7 parts taken in reverse order (rows land in other parts, and in other
    places of a batch of rows)."""
    runs = float_gemv_runs(run_kernel, host, fmt, n_out, k)
    assert_close(runs.outs[0], runs.exact, runs.magnitude, rtol=1e-5)
    for out in runs.outs[1:]:
        np.testing.assert_array_equal(out.view(np.uint32), runs.outs[0].view(np.uint32))


def test_float_activation_gemv_lm_head(run_kernel, assert_close):
    """SmolLM2's tied Q8_0 LM head, 49152 x 576, on the native host."""
    host = detect_host()
    runs = float_gemv_runs(run_kernel, host, "q8_0", 49152, 576, (1, 2))
    assert_close(runs.outs[0], runs.exact, runs.magnitude, rtol=1e-5)
    np.testing.assert_array_equal(runs.outs[1].view(np.uint32), runs.outs[0].view(np.uint32))


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a·b + c rounded once to float32.  The product of two floats is exact in float64; the
    float64 sum is exact up to its error `lo` (TwoSum), which decides only a tie between
    two floats."""
    p = a.astype(np.float64) * b.astype(np.float64)
    hi = p + c.astype(np.float64)
    back = hi - p
    lo = (p - (hi - back)) + (c.astype(np.float64) - back)
    r = hi.astype(np.float32)
    r64 = r.astype(np.float64)
    other = np.nextafter(r, np.where(hi > r64, np.float32(np.inf), np.float32(-np.inf)))
    tie = (hi != r64) & (hi == (r64 + other.astype(np.float64)) / 2) & (lo != 0)
    return np.where(tie & ((lo > 0) == (hi > r64)), other, r)


def lane_sum(v: np.ndarray) -> np.ndarray:
    """The last axis summed in a halving tree, in float32."""
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return v[..., 0]


def float_gemv_documented_order(x: np.ndarray, w: np.ndarray, fmt: str, fused: bool):
    """`matmul`'s decode GEMV on blocks, op by op as its docstring states, in float32."""
    d, m, q = unpack_blocks(w, fmt)
    q, xb = q.astype(np.float32), x.reshape(-1, 32)
    fma = fma32 if fused else (lambda a, b, c: a * b + c)
    acc = np.zeros((4, len(q), 16), np.float32)
    for b in range(xb.shape[0]):
        p = fma(q[:, b, 16:], xb[b, 16:], q[:, b, :16] * xb[b, :16])
        acc[b % 4] = fma(p, d[:, b, None], acc[b % 4])
    total = (acc[0] + acc[1]) + (acc[2] + acc[3])
    if m is None:
        return lane_sum(total)
    sums = lane_sum(xb[:, :16] + xb[:, 16:])
    mins = np.zeros((len(q), 8), np.float32)
    for g in range(0, xb.shape[0], 4):
        terms = np.zeros_like(mins)
        for j in range(min(4, xb.shape[0] - g)):
            terms[:, 2 * j] = d[:, g + j] * np.float32(0)
            terms[:, 2 * j + 1] = m[:, g + j] * sums[g + j]
        mins = mins + terms
    return lane_sum(total + np.pad(mins, ((0, 0), (0, 8))))


@pytest.mark.parametrize(
    "host,fmt,n_out,k", rotated(FORMATS, [(576, 576), *ODD]), indirect=["host"]
)
def test_float_activation_gemv_adds_in_the_documented_order(host, run_kernel, fmt, n_out, k):
    """Bit for bit the order `_BlockGemv` documents (FMAs fused where the ISA has them)."""
    runs = float_gemv_runs(run_kernel, host, fmt, n_out, k, (2,))
    want = float_gemv_documented_order(runs.x, runs.w, fmt, host.has_fma)
    np.testing.assert_array_equal(runs.outs[0][0].view(np.uint32), want.view(np.uint32))


# ---- SmolLM2 with float activations -----------------------------------------------------------

sys.path.insert(0, str(Path(__file__).parents[2] / "runtime"))  # smollm2: where its GGUF is
from smollm2 import float_activation_spec, needs_smollm2  # noqa: E402

SMOLLM2_PROMPT = [6403, 1980, 253, 655]  # "Once upon a time"
SMOLLM2_GREEDY = [28, 260, 2240, 282, 23324, 27108, 436, 253, 15114, 39228]  # its ids as shipped


@needs_smollm2
@pytest.mark.slow
def test_smollm2_float_activations_keep_the_greedy_ids(tmp_path):
    """One rank, every matmul on float activations (the block GEMV in decode): the greedy
    continuation that transformers, numpy and the int8 path give."""
    with ckeir.compile(float_activation_spec(tmp_path)) as prog:
        assert prog.generate(SMOLLM2_PROMPT, max_new_tokens=10) == SMOLLM2_GREEDY
