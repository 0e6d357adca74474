"""Every kernel against a numpy (float64) implementation of its semantics, for sizes that are
and are not multiples of the vector width, decode (n=1) and prefill (n>1, pos>0), 1-3
threads, on each ISA level the host supports (generic, avx2, avx512); the quantized matmul
meets each ISA level with every format and every shape, not with every pair of them
(`isa_pairs`)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from isa_pairs import rotated

from ckeir.backends.llvm import kernels as K
from ckeir.backends.llvm.host import detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels.common import FunctionWriter, half_to_float

THREADS = [1, 2, 3]
rng = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


# ---- numpy semantics ------------------------------------------------------------------------


def rope_ref(
    x: np.ndarray, heads: int, hd: int, theta: float, style: str, pos: int, magnitude: bool = False
) -> np.ndarray:
    """The rotated rows; with magnitude=True the sums |a cos| + |b sin| that bound rounding."""
    n = x.shape[0]
    half = hd // 2
    freq = theta ** (-2.0 * np.arange(half) / hd)
    ang = (pos + np.arange(n))[:, None] * freq[None, :]
    cos = np.cos(ang).astype(np.float32)[:, None, :]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    xh = x.reshape(n, heads, hd).astype(np.float64)
    if style == "interleaved":
        a, b = xh[..., 0::2], xh[..., 1::2]
    else:
        a, b = xh[..., :half], xh[..., half:]
    if magnitude:
        a, b, cos, sin = np.abs(a), np.abs(b), np.abs(cos), np.abs(sin)
        oa, ob = a * cos + b * sin, a * sin + b * cos
    else:
        oa, ob = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(xh)
    if style == "interleaved":
        out[..., 0::2], out[..., 1::2] = oa, ob
    else:
        out[..., :half], out[..., half:] = oa, ob
    return out.reshape(n, heads * hd)


def attention_ref(q, kc, vc, heads, kv_heads, hd, n, pos):
    out = np.zeros((n, heads * hd))
    rep = heads // kv_heads
    for t in range(n):
        for h in range(heads):
            g = h // rep
            qh = q[t, h * hd : (h + 1) * hd].astype(np.float64)
            k = kc[: pos + t + 1, g * hd : (g + 1) * hd].astype(np.float64)
            v = vc[: pos + t + 1, g * hd : (g + 1) * hd].astype(np.float64)
            s = k @ qh / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[t, h * hd : (h + 1) * hd] = p @ v / p.sum()
    return out


# ---- matmul ---------------------------------------------------------------------------------

MATMUL_SHAPES = [  # N, K, tile
    (7, 72, (64, 256)),
    (300, 200, (16, 64)),
    (64, 577, (32, 256)),
    (33, 16, (8, 8)),
]


@pytest.mark.parametrize("n_out,k,tile", MATMUL_SHAPES)
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("nth", THREADS)
def test_matmul(host, run_kernel, assert_close, n_out, k, tile, n, nth):
    x, w = randn(n, k), randn(n_out, k)
    out = np.full((n, n_out), np.nan, np.float32)
    run_kernel(K.matmul(n_out, k, tile, host), host, [x, w, out], n, pos=3, nth=nth)
    assert_close(out, x.astype(np.float64) @ w.T.astype(np.float64), np.abs(x) @ np.abs(w).T)


QUANT_SHAPES = [(7, 64, (64, 256)), (300, 96, (16, 32)), (33, 576, (8, 256))]


@pytest.mark.parametrize(
    "host,fmt,n_out,k,tile",
    rotated(["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"], QUANT_SHAPES),
    indirect=["host"],
)
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("nth", [1, 3])
def test_matmul_quantized(host, run_kernel, assert_close, fmt, n_out, k, tile, n, nth):
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[fmt.upper()]
    x = randn(n, k)
    w = np.ascontiguousarray(quants.quantize(randn(n_out, k), qtype))  # raw GGML blocks
    wf = quants.dequantize(w, qtype).astype(np.float64)
    out = np.full((n, n_out), np.nan, np.float32)
    run_kernel(K.matmul(n_out, k, tile, host, fmt), host, [x, w, out], n, nth=nth)
    assert_close(out, x.astype(np.float64) @ wf.T, np.abs(x) @ np.abs(wf).T)


def test_half_to_float_without_f16c_is_exact():
    """The integer-op f16 conversion (for hosts without F16C) on all 65536 halves."""
    f = FunctionWriter("conv", [("ptr", "%src"), ("ptr", "%dst"), ("i64", "%n")], linkage="")
    with f.loop(0, "%n") as i:
        f.store("float", half_to_float(f, f.gep("%src", i, "half"), f16c=False), f.gep("%dst", i))
    cm = compile_ir(f.finish(), detect_host("generic"))
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    out = np.zeros(65536, np.float32)
    conv = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        cm.address("conv")
    )
    conv(halves.ctypes.data, out.ctypes.data, halves.size)
    want = halves.astype(np.float32)
    same = (out.view(np.uint32) == want.view(np.uint32)) | (np.isnan(out) & np.isnan(want))
    assert same.all()


def test_matmul_tile_is_normalized(host):
    assert K.matmul_tile(577, (64, 100), host.vector_width)[1] % host.vector_width == 0
    assert K.matmul(10, 20, (1, 1000), host).name.endswith(
        f"_t4x{-(-20 // host.vector_width) * host.vector_width}_v{host.vector_width}"
    )


# ---- attention ------------------------------------------------------------------------------

ATTENTION_SHAPES = [  # heads, kv_heads, head_dim, context
    (4, 2, 32, 64),
    (3, 1, 24, 40),
    (2, 2, 8, 20),
    (9, 3, 64, 96),
]


@pytest.mark.parametrize("heads,kv_heads,hd,ctx", ATTENTION_SHAPES)
@pytest.mark.parametrize("n,pos", [(1, 0), (1, 37), (6, 0), (5, 13)])
@pytest.mark.parametrize("nth", THREADS)
def test_attention(host, run_kernel, assert_close, heads, kv_heads, hd, ctx, n, pos, nth):
    pos = min(pos, ctx - n)
    q = randn(n, heads * hd)
    kc, vc = randn(ctx, kv_heads * hd), randn(ctx, kv_heads * hd)
    out = np.full((n, heads * hd), np.nan, np.float32)
    run_kernel(K.attention(heads, kv_heads, hd, ctx, host), host, [q, kc, vc, out], n, pos, nth)
    want = attention_ref(q, kc, vc, heads, kv_heads, hd, n, pos)
    # an output is a probability-weighted sum of values: its float32 rounding is relative to
    # the values' size (1e-6 of the largest here), not to the sum, which can cancel to ~0
    assert_close(out, want, np.abs(want) + np.abs(vc).max() * 1e-1)


# ---- rows and elements ----------------------------------------------------------------------


@pytest.mark.parametrize("dim", [72, 577, 16])
@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("nth", THREADS)
def test_rmsnorm(host, run_kernel, assert_close, dim, n, nth):
    x, w = randn(n, dim), randn(dim)
    out = np.full((n, dim), np.nan, np.float32)
    run_kernel(K.rmsnorm(dim, 1e-5, host), host, [x, w, out], n, nth=nth)
    x64 = x.astype(np.float64)
    assert_close(out, x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-5) * w)


@pytest.mark.parametrize("style", ["interleaved", "halves"])
@pytest.mark.parametrize("heads,hd", [(4, 24), (3, 64), (2, 6)])
@pytest.mark.parametrize("n,pos", [(1, 0), (1, 1000), (5, 17)])
@pytest.mark.parametrize("nth", THREADS)
def test_rope(host, run_kernel, assert_close, style, heads, hd, n, pos, nth):
    x = randn(n, heads * hd)
    x0 = x.copy()
    want = rope_ref(x, heads, hd, 10000.0, style, pos)
    run_kernel(K.rope(heads, hd, 10000.0, style, host), host, [x, x], n, pos, nth)  # in place
    assert_close(x, want, np.abs(rope_ref(x0, heads, hd, 10000.0, style, pos, magnitude=True)))


@pytest.mark.parametrize("dim", [72, 200, 5])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("nth", THREADS)
def test_silu_mul_and_add(host, run_kernel, assert_close, dim, n, nth):
    g, u = randn(n, dim) * 4, randn(n, dim)
    g[0, 0], g[-1, -1] = -100.0, 100.0
    out = np.full((n, dim), np.nan, np.float32)
    run_kernel(K.silu_mul(dim, host), host, [g, u, out], n, nth=nth)
    g64 = g.astype(np.float64)
    assert_close(out, g64 / (1 + np.exp(-g64)) * u, np.abs(g64 * u) / (1 + np.exp(-g64)) + 1e-30)
    out[:] = np.nan
    run_kernel(K.add(dim, host), host, [g, u, out], n, nth=nth)
    assert_close(out, g64 + u, np.abs(g64) + np.abs(u))


@pytest.mark.parametrize("vocab,dim", [(50, 72), (1000, 17)])
@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("nth", THREADS)
def test_embed(host, run_kernel, vocab, dim, n, nth):
    table = randn(vocab, dim)
    ids = rng.integers(0, vocab, n).astype(np.int32)
    out = np.full((n, dim), np.nan, np.float32)
    run_kernel(K.embed(vocab, dim, host), host, [ids, table, out], n, nth=nth)
    np.testing.assert_array_equal(out, table[ids])


@pytest.mark.parametrize("kvd,ctx", [(48, 64), (576, 20)])
@pytest.mark.parametrize("n,pos", [(1, 0), (1, 9), (7, 3)])
@pytest.mark.parametrize("nth", THREADS)
def test_kv_store(host, run_kernel, kvd, ctx, n, pos, nth):
    k, v = randn(n, kvd), randn(n, kvd)
    kc, vc = np.zeros((ctx, kvd), np.float32), np.zeros((ctx, kvd), np.float32)
    run_kernel(K.kv_store(kvd, ctx, host), host, [k, v, kc, vc], n, pos, nth)
    want_k, want_v = np.zeros_like(kc), np.zeros_like(vc)
    want_k[pos : pos + n], want_v[pos : pos + n] = k, v
    np.testing.assert_array_equal(kc, want_k)
    np.testing.assert_array_equal(vc, want_v)


@pytest.mark.parametrize("vocab", [1000, 7, 49152])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("nth", [1, 2])
def test_argmax(host, run_kernel, vocab, n, nth):
    x = randn(n, vocab)
    out = np.full(1, -7, np.int32)
    run_kernel(K.argmax(vocab, host), host, [x, out], n, nth=nth)
    assert out[0] == np.argmax(x[-1])
    x[-1, :] = 1.0  # ties: the first index wins
    x[-1, vocab // 2 :] = 2.0
    run_kernel(K.argmax(vocab, host), host, [x, out], n, nth=nth)
    assert out[0] == vocab // 2
    x[-1, :] = -np.inf
    run_kernel(K.argmax(vocab, host), host, [x, out], n, nth=nth)
    assert out[0] == 0
