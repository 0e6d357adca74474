"""qembed: out[t] = row ids[t] of a table stored in f16, bf16 or a GGML block format, as f32,
bit-exact with `gguf.quants.dequantize`: f16/bf16 widened exactly; q8_0 q·d, q4_0 (q - 8)·d,
q4_1 q·d + m, q5_0 (q - 16)·d, q5_1 q·d + m, each an f32 product (and sum), never fused.  Threads split each row's 32-element
pieces."""

from __future__ import annotations

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    FunctionWriter,
    Kernel,
    Vec,
    fifth_bits,
    finish_kernel,
    half_to_float,
    kernel_writer,
    widen_halves,
)
from ckeir.backends.llvm.kernels.kquant import K_FORMATS, kembed
from ckeir.formats import FORMATS, Format

QK = 32
EMBED_FORMATS = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def qembed(fmt: str, vocab: int, dim: int, host: HostCPU) -> Kernel:
    """Kernel (ids: i32[n], table: [V, row bytes] in `fmt`, out: f32[n, D])."""
    if fmt in K_FORMATS:
        return kembed(fmt, vocab, dim, host)
    if fmt not in EMBED_FORMATS:
        raise ValueError(f"qembed: no kernel for {fmt} tables (have {', '.join(EMBED_FORMATS)})")
    q = FORMATS[fmt]
    row_bytes = q.row_bytes(dim)  # raises unless dim is a multiple of the block
    f16c = "f16c" in host.features
    f = kernel_writer(f"qembed_{fmt}_v{vocab}_d{dim}{'' if f16c else '_sw16'}", 3)
    pieces = -(-dim // QK)
    lo, hi = f.share(pieces, 1)
    v = Vec(f, QK)
    with f.loop(0, "%n", 1, "t") as t:
        row = f(f"sext i32 {f.load('i32', f.gep('%a0', t, 'i32'))} to i64", "id")
        src = f.gep("%a1", f.mul(row, row_bytes), "i8")
        dst = f.gep("%a2", f.mul(t, dim))
        (_blocks if q.quantized else _halves)(f, v, q, src, dst, lo, hi, dim, f16c)
    return finish_kernel(f, ("ids", "table", "out"))


def _block_values(f: FunctionWriter, v: Vec, q: Format, block: str, f16c: bool) -> str:
    """A 32-element block's values as `<32 x float>`."""
    v32 = v.t
    d = v.splat(half_to_float(f, block, f16c))
    if q.name == "q8_0":
        qs = f.load("<32 x i8>", f.gep(block, 2, "i8"), 1)
        vals = f(f"sitofp <32 x i8> {qs} to {v32}", "q")
    else:
        raw = f.load("<16 x i8>", f.gep(block, q.quants_at, "i8"), 1)
        lo4 = f(f"and <16 x i8> {raw}, splat (i8 15)", "lo")
        hi4 = f(f"lshr <16 x i8> {raw}, splat (i8 4)", "hi")
        idx = ", ".join(f"i32 {i}" for i in range(32))
        nib = f(f"shufflevector <16 x i8> {lo4}, <16 x i8> {hi4}, <32 x i32> <{idx}>")
        if q.high_bits:
            qh = f.load("i32", f.gep(block, q.head, "i8"), 1)
            nib = f(f"or <32 x i8> {nib}, {fifth_bits(f, 'i32', qh, 32)}", "q5")
        if q.zero:
            nib = f(f"sub <32 x i8> {nib}, splat (i8 {q.zero})", "q")
        vals = f(f"{'sitofp' if q.zero else 'uitofp'} <32 x i8> {nib} to {v32}")
    y = v.mul(vals, d)
    if q.mins:
        y = v.add(y, v.splat(half_to_float(f, f.gep(block, 2, "i8"), f16c)))
    return y


def _blocks(f, v: Vec, q: Format, src: str, dst: str, lo: str, hi: str, dim: int, f16c: bool):
    with f.loop(lo, hi, 1, "b") as b:
        block = f.gep(src, f.mul(b, q.block_bytes), "i8")
        f.store(v.t, _block_values(f, v, q, block, f16c), f.gep(dst, f.mul(b, QK)))


def _halves(f, v: Vec, q: Format, src: str, dst: str, lo: str, hi: str, dim: int, f16c: bool):
    """16-bit floats: 32 at a time, the last piece masked."""
    whole = dim // QK
    with f.loop(lo, f.min(hi, whole), 1, "b") as b:
        at = f.mul(b, QK)
        f.store(v.t, widen_halves(f, q.name, src, at, QK, None, f16c), f.gep(dst, at))
    if dim % QK:  # the part that holds the last piece
        mine = f(f"and i1 {f(f'icmp sle i64 {lo}, {whole}')}, {f(f'icmp sgt i64 {hi}, {whole}')}")
        with f.if_(mine):
            vals = widen_halves(f, q.name, src, whole * QK, QK, dim % QK, f16c)
            v.store(vals, dst, whole * QK, dim % QK)
