"""qembed: out[t] = the dequantized row ids[t] of a GGML-block table (q8_0, q4_0, q4_1),
bit-exact with `gguf.quants.dequantize`: q8_0 q·d, q4_0 (q - 8)·d, q4_1 q·d + m, each an f32
product (and sum), never fused.  Threads split each row's blocks."""

from __future__ import annotations

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    Kernel,
    Vec,
    finish_kernel,
    half_to_float,
    kernel_writer,
)
from ckeir.formats import FORMATS, QUANT_FORMATS

QK = 32


def qembed(fmt: str, vocab: int, dim: int, host: HostCPU) -> Kernel:
    """Kernel (ids: i32[n], table: GGML blocks [V, D/32 * block bytes], out: f32[n, D])."""
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"qembed: no kernel for {fmt} tables (have {', '.join(QUANT_FORMATS)})")
    q = FORMATS[fmt]
    row_bytes = q.row_bytes(dim)  # raises unless dim is a multiple of 32
    f16c = "f16c" in host.features
    f = kernel_writer(f"qembed_{fmt}_v{vocab}_d{dim}{'' if f16c else '_sw16'}", 3)
    lo, hi = f.share(dim // QK, 1)
    v = Vec(f, QK)
    v32 = v.t
    with f.loop(0, "%n", 1, "t") as t:
        row = f(f"sext i32 {f.load('i32', f.gep('%a0', t, 'i32'))} to i64", "id")
        src = f.gep("%a1", f.mul(row, row_bytes), "i8")
        dst = f.gep("%a2", f.mul(t, dim))
        with f.loop(lo, hi, 1, "b") as b:
            block = f.gep(src, f.mul(b, q.block_bytes), "i8")
            d = v.splat(half_to_float(f, block, f16c))
            if fmt == "q8_0":
                qs = f.load("<32 x i8>", f.gep(block, 2, "i8"), 1)
                vals = f(f"sitofp <32 x i8> {qs} to {v32}", "q")
            else:
                raw = f.load("<16 x i8>", f.gep(block, 4 if fmt == "q4_1" else 2, "i8"), 1)
                lo4 = f(f"and <16 x i8> {raw}, splat (i8 15)", "lo")
                hi4 = f(f"lshr <16 x i8> {raw}, splat (i8 4)", "hi")
                idx = ", ".join(f"i32 {i}" for i in range(32))
                nib = f(f"shufflevector <16 x i8> {lo4}, <16 x i8> {hi4}, <32 x i32> <{idx}>")
                if fmt == "q4_0":
                    nib = f(f"sub <32 x i8> {nib}, splat (i8 8)", "q")
                vals = f(f"{'sitofp' if fmt == 'q4_0' else 'uitofp'} <32 x i8> {nib} to {v32}")
            y = v.mul(vals, d)
            if fmt == "q4_1":
                m = v.splat(half_to_float(f, f.gep(block, 2, "i8"), f16c))
                y = v.add(y, m)
            f.store(v32, y, f.gep(dst, f.mul(b, QK)))
    return finish_kernel(f, ("ids", "table", "out"))
