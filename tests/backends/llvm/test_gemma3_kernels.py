"""The kernels gemma3 adds, against float64 numpy on every ISA level: the GELU (tanh) gate,
saturating without overflow where tanh's argument is huge; the in-place scale of the
embedding rows; the per-head RMSNorm as the row kernel over rows of one head."""

from __future__ import annotations

import numpy as np

from ckeir.backends.llvm.kernels.elementwise import gelu_mul, rmsnorm, scale


def gelu_tanh(g: np.ndarray) -> np.ndarray:
    g = g.astype(np.float64)
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g**3)))


def test_gelu_mul_matches_the_tanh_form_and_saturates(host, run_kernel, assert_close):
    rng = np.random.default_rng(3)
    g = rng.standard_normal((5, 75)).astype(np.float32) * 3
    g[0, :6] = [0.0, -0.0, 60.0, -60.0, 1e4, -1e4]  # tanh's argument far past its range
    u = rng.standard_normal((5, 75)).astype(np.float32)
    for nth in (1, 3):
        out = np.full_like(g, np.nan)
        run_kernel(gelu_mul(75, host), host, [g, u, out], 5, nth=nth)
        want = gelu_tanh(g) * u
        assert np.isfinite(out).all()
        assert_close(out, want, scale=np.abs(want) + 1e-6 * np.abs(u), rtol=2e-6)


def test_scale_in_place(host, run_kernel):
    x = np.linspace(-3, 3, 3 * 40, dtype=np.float32).reshape(3, 40)
    want = x * np.float32(25.298221)
    run_kernel(scale(40, 25.298221, host), host, [x, x], 3, nth=2)
    np.testing.assert_array_equal(x, want)


def test_rms_of_each_head_alone(host, run_kernel, assert_close):
    """A row of 3 heads of 16 normed as 3 rows: each head by its own mean square."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 48)).astype(np.float32) * [[1.0] * 16 + [100.0] * 16 + [0.01] * 16]
    x = x.astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    out = np.full_like(x, np.nan)
    run_kernel(rmsnorm(16, 1e-6, host), host, [x, w, out], 2 * 3, nth=2)
    heads = x.astype(np.float64).reshape(6, 16)
    want = heads / np.sqrt((heads**2).mean(axis=1, keepdims=True) + 1e-6) * w
    assert_close(out.reshape(6, 16), want, rtol=2e-6)
