"""Integer-dot-product semantics of a quantized matmul, in numpy (the oracle of the native
kernels and what the reference backend computes).

A matmul with GGML-block weights first quantizes each activation row per 32-block, like
GGML's Q8_0 but keeping the scale in float32:

    amax = max|x_b|;  d = amax / 127 (f32);  id = 1/d (0 when d == 0);  q = roundf(x * id)

(roundf: halves away from zero), then sums exact int32 block dot products:

    out[t, n] = Σ_b d_w[n, b] · d_x[t, b] · Σ_i q_w[i] q_x[i]   (+ m_w[n, b] · d_x[t, b] · Σ_i q_x[i])

with q_w = q (q8_0), nibble - 8 (q4_0), nibble (q4_1, which adds the min term), 5-bit value
- 16 (q5_0) or 5-bit value (q5_1, with the min term).
"""

from __future__ import annotations

import numpy as np

from ckeir.formats import FORMATS

QK = 32  # elements per activation block (= the GGML weight block)


def roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf on float32 values: to nearest, halves away from zero (exact: the +0.5 is
    taken in float64, where it cannot round)."""
    a = np.abs(v.astype(np.float64))
    return np.copysign(np.floor(a + 0.5), v)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q, d): int8 q[..., K] and float32 scales d[..., K/32] of f32 rows x[..., K]."""
    x = np.asarray(x, dtype=np.float32)
    k = x.shape[-1]
    if k % QK:
        raise ValueError(f"quantize_activations: row length {k} is not a multiple of {QK}")
    xb = x.reshape(*x.shape[:-1], k // QK, QK)
    amax = np.abs(xb).max(axis=-1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = roundf(xb * inv[..., None]).astype(np.int8)
    return q.reshape(x.shape), d.astype(np.float32)


def unpack_blocks(w: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The parts of GGML rows w[N, row bytes]: (d f32 [N, B], m f32 [N, B] or None, q [N, B,
    32]) with q the integer the kernel multiplies (q8_0: q, q4_0: nibble - 8, q5_0: 5-bit
    value - 16, q4_1 and q5_1: the value as stored; layouts in `ckeir.formats`)."""
    f = FORMATS[fmt]
    w = np.ascontiguousarray(w, dtype=np.uint8)
    blocks = w.reshape(w.shape[0], -1, f.block_bytes)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if f.mins else None
    if f.bits == 8:
        return d, None, blocks[..., 2:].view(np.int8).astype(np.int32)
    qs = blocks[..., f.quants_at :]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32)
    if f.high_bits:
        qh = blocks[..., f.head : f.head + 4].copy().view(np.uint32)
        q |= ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4
    return d, m, q - f.zero


def qmatmul_reference(x: np.ndarray, w_blocks: np.ndarray, fmt: str) -> np.ndarray:
    """out[n, N] of the formula above, in float64, for x[n, K] f32 and GGML rows w[N, ...].

    Each dequantized activation d_x·q_x and weight d_w·q_w (+ m_w) is exact in float64, as
    is their product, so one float64 matmul is the formula up to float64 rounding of the
    sums."""
    q, dx = quantize_activations(x)
    xs = (q.reshape(*dx.shape, QK) * dx[..., None].astype(np.float64)).reshape(q.shape)
    d, m, qw = unpack_blocks(w_blocks, fmt)
    ws = qw * d[..., None].astype(np.float64)
    if m is not None:
        ws = ws + m[..., None].astype(np.float64)
    return xs @ ws.reshape(ws.shape[0], -1).T
