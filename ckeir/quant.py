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

from ckeir.formats import FORMATS, K_LAYOUTS

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


def weight_parts(w: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale, min, q) per element [N, K], float32 and int, such that a weight is exactly
    scale·q + min: the numbers the int8 kernels multiply (K-quants: scale = f32(d·sc), min =
    -f32(dmin·m), q as stored (Q6_K: q - 32); block formats as `unpack_blocks`)."""
    f = FORMATS[fmt]
    if not f.super_block:
        d, m, q = unpack_blocks(w, fmt)
        m = np.zeros_like(d) if m is None else m
        return (np.repeat(d, QK, axis=-1), np.repeat(m, QK, axis=-1), q.reshape(q.shape[0], -1))
    from gguf import quants

    lay = K_LAYOUTS[fmt]
    w = np.ascontiguousarray(w, dtype=np.uint8)
    sb = w.reshape(w.shape[0], -1, f.block_bytes)
    d = sb[..., lay.d : lay.d + 2].copy().view(np.float16)[..., 0].astype(np.float32)
    if fmt == "q2_k":  # per 16 a 4-bit scale and min, q a 2-bit pair
        raw = sb[..., lay.scales : lay.scales + 16]
        dmin = sb[..., lay.dmin : lay.dmin + 2].copy().view(np.float16)[..., 0].astype(np.float32)
        scale = np.repeat(d[..., None] * (raw & 15).astype(np.float32), 16, axis=-1)
        mins = -np.repeat(dmin[..., None] * (raw >> 4).astype(np.float32), 16, axis=-1)
        qs = sb[..., lay.qs : lay.qs + 64].reshape(*sb.shape[:2], 2, 1, 32)
        q = ((qs >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 1, 4, 1)) & 3).astype(int)
        q = q.reshape(*sb.shape[:2], 256)
    elif fmt == "q3_k":  # 6-bit scales less 32 per 16, q = 2-bit pair + 4·third bit - 4
        raw = sb[..., lay.scales : lay.scales + 12]
        lo = np.concatenate([raw[..., :8] & 15, raw[..., :8] >> 4], axis=-1)
        hi = (raw[..., 8:12][..., None, :] >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3
        sc = (lo | (hi.reshape(*sb.shape[:2], 16) << 4)).astype(np.float32) - 32
        scale = np.repeat(d[..., None] * sc, 16, axis=-1)
        mins = np.zeros_like(scale)
        qs = sb[..., lay.qs : lay.qs + 64].reshape(*sb.shape[:2], 2, 1, 32)
        ql = (qs >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 1, 4, 1)) & 3
        qh = sb[..., lay.qh : lay.qh + 32].reshape(*sb.shape[:2], 1, 32)
        bits = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1
        q = ql.reshape(*sb.shape[:2], 256).astype(int) + 4 * bits.reshape(*sb.shape[:2], 256) - 4
    elif lay.dmin is None:  # Q6_K: a scale per 16
        sc = sb[..., lay.scales : lay.scales + 16].view(np.int8).astype(np.float32)
        scale = np.repeat(d[..., None] * sc, 16, axis=-1)
        mins = np.zeros_like(scale)
        ql = sb[..., lay.qs : lay.qs + 128].reshape(*sb.shape[:2], 2, 1, 64)
        ql = (ql >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)) & 15
        qh = sb[..., lay.qh : lay.qh + 64].reshape(*sb.shape[:2], 2, 1, 32)
        qh = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)) & 3
        q = (ql.reshape(*sb.shape[:2], 256) | (qh.reshape(*sb.shape[:2], 256) << 4)).astype(int)
        q = q - 32
    else:
        dmin = sb[..., lay.dmin : lay.dmin + 2].copy().view(np.float16)[..., 0]
        sc, m = quants.Q4_K.get_scale_min(sb[..., lay.scales : lay.scales + 12].reshape(-1, 12))
        sc, m = sc.reshape(*sb.shape[:2], 8), m.reshape(*sb.shape[:2], 8)
        scale = np.repeat(d[..., None] * sc.astype(np.float32), 32, axis=-1)
        mins = -np.repeat(dmin.astype(np.float32)[..., None] * m.astype(np.float32), 32, axis=-1)
        qs = sb[..., lay.qs : lay.qs + 128].reshape(*sb.shape[:2], 4, 1, 32)
        q = ((qs >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)) & 15).astype(int)
        q = q.reshape(*sb.shape[:2], 256)
        if lay.qh is not None:
            qh = sb[..., lay.qh : lay.qh + 32].reshape(*sb.shape[:2], 1, 32)
            bits = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1
            q = q | (bits.reshape(*sb.shape[:2], 256).astype(int) << 4)
    n = w.shape[0]
    return scale.reshape(n, -1), mins.reshape(n, -1), q.reshape(n, -1)


def qmatmul_reference(x: np.ndarray, w_blocks: np.ndarray, fmt: str) -> np.ndarray:
    """out[n, N] of the formula above, in float64, for x[n, K] f32 and GGML rows w[N, ...].

    Each dequantized activation d_x·q_x and weight d_w·q_w (+ m_w) is exact in float64, as
    is their product, so one float64 matmul is the formula up to float64 rounding of the
    sums."""
    q, dx = quantize_activations(x)
    xs = (q.reshape(*dx.shape, QK) * dx[..., None].astype(np.float64)).reshape(q.shape)
    scale, mins, qw = weight_parts(w_blocks, fmt)
    return xs @ (qw * scale.astype(np.float64) + mins.astype(np.float64)).T


def kquantize(x: np.ndarray, fmt: str) -> np.ndarray:
    """Rows x[N, K] (K a multiple of 256) packed as K-quant super-blocks, uint8 [N, row
    bytes]: a plain round-to-nearest quantizer (gguf.quants has none for the K-quants; the
    layout is what matters, the kernels read any valid block).  Q4_K/Q5_K: per 32-element
    sub-block the range [min(0, x), max x] in 15 or 31 steps, its step and min as 6-bit
    multiples of the super-block's f16 d and dmin; Q6_K: per 16 a signed int8 multiple of d,
    values q - 32 in -32..31."""
    f, lay = FORMATS[fmt], K_LAYOUTS[fmt]
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    sb = x.reshape(n, -1, 256).astype(np.float64)
    out = np.zeros((*sb.shape[:2], f.block_bytes), np.uint8)

    def f16(v):
        return v.astype(np.float16)

    def div(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b == 0, 0, a / np.where(b == 0, 1, b))

    if fmt == "q2_k":  # per 16: [min(0, x), max x] in 3 steps, 4-bit multiples of d, dmin
        sub = sb.reshape(*sb.shape[:2], 16, 16)
        lo = np.minimum(sub.min(axis=-1), 0)
        step, mn = (sub.max(axis=-1) - lo) / 3, -lo
        d, dmin = f16(step.max(axis=-1) / 15), f16(mn.max(axis=-1) / 15)
        sc = np.clip(np.rint(div(step, d.astype(np.float64)[..., None])), 0, 15).astype(np.uint8)
        m = np.clip(np.rint(div(mn, dmin.astype(np.float64)[..., None])), 0, 15).astype(np.uint8)
        ds = (d.astype(np.float32)[..., None] * sc.astype(np.float32)).astype(np.float64)
        dm = (dmin.astype(np.float32)[..., None] * m.astype(np.float32)).astype(np.float64)
        q = np.clip(np.rint(div(sub + dm[..., None], ds[..., None])), 0, 3).astype(np.uint8)
        q = q.reshape(*sb.shape[:2], 2, 4, 32)
        qs = q[..., 0, :] | (q[..., 1, :] << 2) | (q[..., 2, :] << 4) | (q[..., 3, :] << 6)
        out[..., lay.scales : lay.scales + 16] = sc | (m << 4)
        out[..., lay.qs : lay.qs + 64] = qs.reshape(*sb.shape[:2], 64)
        out[..., lay.d : lay.d + 2] = d[..., None].view(np.uint8)
        out[..., lay.dmin : lay.dmin + 2] = dmin[..., None].view(np.uint8)
        return out.reshape(n, -1)
    if fmt == "q3_k":  # per 16: a 6-bit multiple (less 32) of d; values q - 4 in -4..3
        sub = sb.reshape(*sb.shape[:2], 16, 16)
        amax = np.abs(sub).max(axis=-1)
        d = f16(amax.max(axis=-1) / 4 / 31)
        df = d.astype(np.float64)[..., None]
        sc = np.clip(np.rint(div(amax / 4, df)), -32, 31).astype(int)
        step = (df * sc)[..., None]
        q = (np.clip(np.rint(div(sub, step)), -4, 3) + 4).astype(np.uint8)
        q = q.reshape(*sb.shape[:2], 2, 4, 32)  # 128-halves, 2-bit positions, bytes
        ql = q & 3
        qs = ql[..., 0, :] | (ql[..., 1, :] << 2) | (ql[..., 2, :] << 4) | (ql[..., 3, :] << 6)
        bits = (q >> 2).reshape(*sb.shape[:2], 8, 32)
        hmask = np.zeros((*sb.shape[:2], 32), np.uint8)
        for j in range(8):
            hmask |= bits[..., j, :] << j
        su = (sc + 32).astype(np.uint8)
        packed = np.concatenate(
            [
                (su[..., :8] & 15) | ((su[..., 8:] & 15) << 4),
                sum(((su[..., 4 * i : 4 * i + 4] >> 4) & 3) << (2 * i) for i in range(4)),
            ],
            axis=-1,
        ).astype(np.uint8)
        out[..., lay.qh : lay.qh + 32] = hmask
        out[..., lay.qs : lay.qs + 64] = qs.reshape(*sb.shape[:2], 64)
        out[..., lay.scales : lay.scales + 12] = packed
        out[..., lay.d : lay.d + 2] = d[..., None].view(np.uint8)
        return out.reshape(n, -1)
    if lay.dmin is None:  # Q6_K
        sub = sb.reshape(*sb.shape[:2], 16, 16)
        amax = np.abs(sub).max(axis=-1)
        d = f16(amax.max(axis=-1) / 32 / 127)
        df = d.astype(np.float64)[..., None]
        sc = np.clip(np.rint(div(amax / 32, df)), -128, 127).astype(np.int8)
        step = (df * sc.astype(np.float64))[..., None]
        q = (
            (np.clip(np.rint(div(sub, step)), -32, 31) + 32)
            .astype(np.uint8)
            .reshape(*sb.shape[:2], 256)
        )
        halves = q.reshape(*sb.shape[:2], 2, 128)
        ql = (halves[..., :64] & 15) | ((halves[..., 64:] & 15) << 4)
        hi = (halves >> 4).reshape(*sb.shape[:2], 2, 4, 32)
        qh = hi[..., 0, :] | (hi[..., 1, :] << 2) | (hi[..., 2, :] << 4) | (hi[..., 3, :] << 6)
        out[..., lay.qs : lay.qs + 128] = ql.reshape(*sb.shape[:2], 128)
        out[..., lay.qh : lay.qh + 64] = qh.reshape(*sb.shape[:2], 64)
        out[..., lay.scales : lay.scales + 16] = sc.view(np.uint8)
        out[..., lay.d : lay.d + 2] = d[..., None].view(np.uint8)
        return out.reshape(n, -1)
    top = 15 if lay.qh is None else 31
    sub = sb.reshape(*sb.shape[:2], 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0)
    step, mn = (sub.max(axis=-1) - lo) / top, -lo
    d, dmin = f16(step.max(axis=-1) / 63), f16(mn.max(axis=-1) / 63)
    sc = np.clip(np.rint(div(step, d.astype(np.float64)[..., None])), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(div(mn, dmin.astype(np.float64)[..., None])), 0, 63).astype(np.uint8)
    ds = (d.astype(np.float32)[..., None] * sc.astype(np.float32)).astype(np.float64)
    dm = (dmin.astype(np.float32)[..., None] * m.astype(np.float32)).astype(np.float64)
    q = np.clip(np.rint(div(sub + dm[..., None], ds[..., None])), 0, top).astype(np.uint8)
    pairs = q.reshape(*sb.shape[:2], 4, 2, 32)
    out[..., lay.qs : lay.qs + 128] = (
        (pairs[..., 0, :] & 15) | ((pairs[..., 1, :] & 15) << 4)
    ).reshape(*sb.shape[:2], 128)
    if lay.qh is not None:
        bits = (q >> 4).reshape(*sb.shape[:2], 8, 32)
        qh = np.zeros((*sb.shape[:2], 32), np.uint8)
        for j in range(8):
            qh |= bits[..., j, :] << j
        out[..., lay.qh : lay.qh + 32] = qh
    packed = np.concatenate(  # the inverse of gguf's Q4_K.get_scale_min
        [
            (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6),
            (m[..., :4] & 63) | ((m[..., 4:] >> 4) << 6),
            (sc[..., 4:] & 15) | ((m[..., 4:] & 15) << 4),
        ],
        axis=-1,
    )
    out[..., lay.scales : lay.scales + 12] = packed
    out[..., lay.d : lay.d + 2] = d[..., None].view(np.uint8)
    out[..., lay.dmin : lay.dmin + 2] = dmin[..., None].view(np.uint8)
    return out.reshape(n, -1)
