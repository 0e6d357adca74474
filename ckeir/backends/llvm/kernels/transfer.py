"""Q8_0 transfer kernels: activations crossing ranks as GGML Q8_0 blocks (`quantize
transfers q8_0`), with the numerics of `gguf.quants` (the reference backend's), bit for bit:

    amax = max|x_b|;  d = amax / 127;  id = d == 0 ? 0 : 1 / d;  q = roundf(x · id)
    block = f16(d) (round to nearest even) + 32 × int8 q;   x' = f32(f16 d) · q

- `q8_0_quantize`: f32 rows → Q8_0 blocks (the sending rank, into its staging buffer);
- `q8_0_dequantize`: Q8_0 blocks → f32 rows (the receiving rank, out of its staging buffer);
- `q8_0_requant`: both at once (`cke.requant`, the single-rank twin's round trip).

All three are written by the same two block generators, so a value that crosses ranks and
the twin's requantized value are computed by the same instructions: bitwise equal.  Every
operation is an exactly rounded IEEE one (no fast-math), so LLVM may not reassociate them.
Threads split the n·K/32 blocks.
"""

from __future__ import annotations

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    POS_INF,
    FunctionWriter,
    Kernel,
    f32,
    finish_kernel,
    half_to_float,
    kernel_writer,
)
from ckeir.formats import Q8_0

QK = Q8_0.block
BLOCK_BYTES = Q8_0.block_bytes
_INF = f"splat (float {POS_INF})"
VF, VI8, VI32 = f"<{QK} x float>", f"<{QK} x i8>", f"<{QK} x i32>"


def float_to_half_bits(f: FunctionWriter, x: str) -> str:
    """The f16 bit pattern (i16) of float `x`, rounded to nearest even like numpy's
    `astype(float16)`, with integer ops: LLVM's `fptrunc` to half is a compiler-rt call
    (__truncsfhf2) on hosts without F16C, which the JIT cannot count on.  Normal halves round
    the float's bits at bit 13 (the carry may bump the exponent, up to infinity); below
    2**-14 the value is a multiple of 2**-24, rounded to even in float arithmetic (exact:
    scaling by 2**24 is)."""
    b = f(f"bitcast float {x} to i32", "fb")
    sign = f(f"and i32 {f(f'lshr i32 {b}, 16')}, 32768", "sign")
    a = f(f"and i32 {b}, 2147483647", "abs")
    lsb = f(f"and i32 {f(f'lshr i32 {a}, 13')}, 1", "lsb")
    rounded = f(f"add i32 {f(f'add i32 {a}, 4095')}, {lsb}", "rnd")
    normal = f(f"sub i32 {f(f'lshr i32 {rounded}, 13')}, {(127 - 15) << 10}", "normal")
    scaled = f(f"fmul float {f(f'bitcast i32 {a} to float')}, {f32(2.0**24)}", "scaled")
    even = f.intrinsic("float", "llvm.roundeven.f32", [("float", scaled)])
    sub = f(f"fptoui float {even} to i32", "sub")
    payload = f(f"and i32 {f(f'lshr i32 {a}, 13')}, 1023", "payload")
    nan = f(f"or i32 {payload}, {0x7E00}", "nan")
    h = f(f"select i1 {f(f'icmp uge i32 {a}, {0x38800000}')}, i32 {normal}, i32 {sub}")
    h = f(f"select i1 {f(f'icmp uge i32 {a}, {0x477FF000}')}, i32 {0x7C00}, i32 {h}")
    h = f(f"select i1 {f(f'icmp ugt i32 {a}, {0x7F800000}')}, i32 {nan}, i32 {h}")
    return f(f"trunc i32 {f(f'or i32 {h}, {sign}')} to i16", "half")


def quantize_block(f: FunctionWriter, src: str, dst: str) -> None:
    """The 32 floats at `src` as one Q8_0 block at `dst` (34 bytes, no alignment)."""
    x = f.load(VF, src, 4)
    bits = f(f"bitcast {VF} {x} to {VI32}", "xb")
    mag = f(f"and {VI32} {bits}, splat (i32 2147483647)", "mag")
    # max |x| as integers: non-negative floats order like their bits (a NaN stays a NaN)
    top = f.intrinsic("i32", "llvm.vector.reduce.umax.v32i32", [(VI32, mag)])
    amax = f(f"bitcast i32 {top} to float", "amax")
    d = f(f"fdiv float {amax}, {f32(127.0)}", "d")
    inv = f(f"fdiv float {f32(1.0)}, {d}", "inv")
    inv = f(f"select i1 {f(f'fcmp oeq float {d}, 0.0')}, float 0.0, float {inv}", "id")
    one = f(f"insertelement <1 x float> poison, float {inv}, i64 0")
    ids = f(f"shufflevector <1 x float> {one}, <1 x float> poison, <{QK} x i32> zeroinitializer")
    scaled = f(f"fmul {VF} {x}, {ids}", "sx")
    q = f.intrinsic(VF, "llvm.round.v32f32", [(VF, scaled)])  # roundf: halves away from 0
    # gguf's roundf makes NaN of ±inf (a scale whose inverse overflows), and int8 0 of NaN
    inf = f(f"fcmp oeq {VF} {f.intrinsic(VF, 'llvm.fabs.v32f32', [(VF, q)])}, {_INF}", "inf")
    q = f(f"select <{QK} x i1> {inf}, {VF} zeroinitializer, {VF} {q}", "q")
    qi = f.intrinsic(VI32, "llvm.fptosi.sat.v32i32.v32f32", [(VF, q)])  # NaN -> 0
    f.store("i16", float_to_half_bits(f, d), dst, 1)
    f.store(VI8, f(f"trunc {VI32} {qi} to {VI8}", "q8"), f.gep(dst, 2, "i8"), 1)


def dequantize_block(f: FunctionWriter, src: str, dst: str, f16c: bool) -> None:
    """The Q8_0 block at `src` as 32 floats at `dst`: f32(d) · q, one rounding."""
    d = half_to_float(f, src, f16c)
    q = f.load(VI8, f.gep(src, 2, "i8"), 1)
    qf = f(f"sitofp {VI8} {q} to {VF}", "qf")
    one = f(f"insertelement <1 x float> poison, float {d}, i64 0")
    ds = f(f"shufflevector <1 x float> {one}, <1 x float> poison, <{QK} x i32> zeroinitializer")
    f.store(VF, f(f"fmul {VF} {qf}, {ds}", "x"), dst, 4)


def _each_block(f: FunctionWriter, k: int, body) -> None:
    """body(block index) for this thread's share of the n·k/32 blocks."""
    lo, hi = f.share(f.mul("%n", k // QK), 2)
    with f.loop(lo, hi, 1, "b") as b:
        body(b)


def _check(k: int) -> None:
    if k % QK:
        raise ValueError(f"q8_0 transfer: row length {k} is not a multiple of {QK}")


def q8_0_quantize(k: int, host: HostCPU) -> Kernel:
    """(x: f32[n, k], out: Q8_0 blocks [n, k/32 · 34])."""
    _check(k)
    f = kernel_writer(f"q8_0_quantize_k{k}", 2)
    _each_block(
        f,
        k,
        lambda b: quantize_block(
            f, f.gep("%a0", f.mul(b, QK)), f.gep("%a1", f.mul(b, BLOCK_BYTES), "i8")
        ),
    )
    return finish_kernel(f, ("x", "out"))


def q8_0_dequantize(k: int, host: HostCPU) -> Kernel:
    """(blocks: Q8_0 [n, k/32 · 34], out: f32[n, k])."""
    _check(k)
    f16c = "f16c" in host.features
    f = kernel_writer(f"q8_0_dequantize_k{k}_{'f16c' if f16c else 'int'}", 2)
    _each_block(
        f,
        k,
        lambda b: dequantize_block(
            f, f.gep("%a0", f.mul(b, BLOCK_BYTES), "i8"), f.gep("%a1", f.mul(b, QK)), f16c
        ),
    )
    return finish_kernel(f, ("blocks", "out"))


def q8_0_requant(k: int, host: HostCPU) -> Kernel:
    """(x: f32[n, k], out: f32[n, k]) = dequantize(quantize(x)), block by block through a
    34-byte scratch on the stack."""
    _check(k)
    f16c = "f16c" in host.features
    f = kernel_writer(f"q8_0_requant_k{k}_{'f16c' if f16c else 'int'}", 2)
    scratch = f.var(f"[{BLOCK_BYTES} x i8]", hint="block", align=2).ptr

    def body(b: str) -> None:
        quantize_block(f, f.gep("%a0", f.mul(b, QK)), scratch)
        dequantize_block(f, scratch, f.gep("%a1", f.mul(b, QK)), f16c)

    _each_block(f, k, body)
    return finish_kernel(f, ("x", "out"))
