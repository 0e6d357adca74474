"""What every kernel generator shares: the `Kernel` record, the calling convention, a tiny
writer of LLVM IR text, and vector snippets (loads with masks, FMA, horizontal sums, exp).

The writer keeps loop counters and accumulators in `alloca`s placed in the entry block;
LLVM's SROA promotes them to SSA registers, so generators read like structured code
instead of hand-threaded phi nodes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import struct
from collections.abc import Iterator, Sequence

import attrs
import numpy as np

# The one calling convention: `void @NAME(ptr %a0, ..., ptr %aK, i64 %n, i64 %pos, i32 %tid,
# i32 %nth)`; buffers are the op's inputs then its output.
TAIL_PARAMS = (("i64", "%n"), ("i64", "%pos"), ("i32", "%tid"), ("i32", "%nth"))


@attrs.frozen
class Kernel:
    """One specialized kernel: the text of its definition(s) and the declarations it needs."""

    name: str  # unique per specialization, e.g. matmul_f32_n576_k576_t64x256_v16
    args: tuple[str, ...]  # names of the ptr arguments %a0.. in order (inputs, then output)
    ir: str  # `define`s (kernel + private globals), no `declare`s
    declares: frozenset[str] = frozenset()  # `declare ...` lines, deduplicated by module_ir

    @property
    def text(self) -> str:
        """The kernel alone as a complete module body (declarations + definitions)."""
        return "\n".join([*sorted(self.declares), self.ir])


# ---- constants ---------------------------------------------------------------------------


def f32(x: float) -> str:
    """An LLVM `float` literal holding float32(x) exactly (hex form of the widened double)."""
    return f64(float(np.float32(x)))


def f64(x: float) -> str:
    """An LLVM `double` literal, exact (hex form)."""
    return f"0x{struct.unpack('<Q', struct.pack('<d', float(x)))[0]:016X}"


def float_tag(x: float) -> str:
    """A float for a symbol name: its IEEE bits in hex (`x3EE4F8B588E368F1` for 1e-5).  Python's
    repr is neither a valid symbol for every value (`1e+30`, `inf`) nor unique at a few digits
    (`:g` made 1e-5 and 1.0000001e-5 one kernel)."""
    return "x" + f64(x)[2:]


NEG_INF = "0xFFF0000000000000"
POS_INF = "0x7FF0000000000000"


# ---- the writer ---------------------------------------------------------------------------


@attrs.frozen
class Var:
    """A stack slot SROA turns into a register: `ptr` is its alloca, `ty` its type."""

    ptr: str
    ty: str


class FunctionWriter:
    """Writes one LLVM function as text, numbering SSA names and labels."""

    def __init__(
        self,
        name: str,
        params: Sequence[tuple[str, str]],
        *,
        ret: str = "void",
        linkage: str = "internal",
        attributes: str = "nounwind noinline",
    ):
        self.name = name
        self.declares: set[str] = set()
        self.globals: list[str] = []
        self._head = f"define {linkage} {ret} @{name}({', '.join(f'{t} {n}' for t, n in params)}) {attributes} {{"
        self._allocas: list[str] = []
        self._body: list[str] = []
        self._ids = itertools.count()

    # -- plumbing
    def fresh(self, hint: str = "v") -> str:
        return f"%{hint}.{next(self._ids)}"

    def __call__(self, rhs: str, hint: str = "v") -> str:
        """Emit `%hint.N = rhs` and return the new name."""
        name = self.fresh(hint)
        self._body.append(f"  {name} = {rhs}")
        return name

    def op(self, stmt: str) -> None:
        self._body.append(f"  {stmt}")

    def label(self, hint: str = "bb") -> str:
        return f"{hint}.{next(self._ids)}"

    def start(self, label: str) -> None:
        self._body.append(f"{label}:")

    def br(self, label: str) -> None:
        self.op(f"br label %{label}")

    def cbr(self, cond: str, then: str, other: str) -> None:
        self.op(f"br i1 {cond}, label %{then}, label %{other}")

    def declare(self, decl: str) -> None:
        self.declares.add(decl)

    def call(
        self, ret: str, fn: str, args: Sequence[tuple[str, str]], flags: str = ""
    ) -> str | None:
        text = f"call {flags + ' ' if flags else ''}{ret} @{fn}({', '.join(f'{t} {v}' for t, v in args)})"
        if ret == "void":
            self.op(text)
            return None
        return self(text, "c")

    def intrinsic(
        self, ret: str, fn: str, args: Sequence[tuple[str, str]], flags: str = ""
    ) -> str | None:
        self.declare(f"declare {ret} @{fn}({', '.join(t for t, _ in args)})")
        return self.call(ret, fn, args, flags)

    # -- variables and control flow
    def var(self, ty: str, init: str | None = None, hint: str = "var", align: int = 0) -> Var:
        ptr = self.fresh(hint)
        self._allocas.append(f"  {ptr} = alloca {ty}" + (f", align {align}" if align else ""))
        v = Var(ptr, ty)
        if init is not None:
            self.set(v, init)
        return v

    def get(self, v: Var) -> str:
        return self(f"load {v.ty}, ptr {v.ptr}", "ld")

    def set(self, v: Var, value: str) -> None:
        self.op(f"store {v.ty} {value}, ptr {v.ptr}")

    @contextlib.contextmanager
    def loop(
        self, lo: str | int, hi: str | int, step: str | int = 1, hint: str = "i"
    ) -> Iterator[str]:
        """`for (i = lo; i < hi; i += step)` over i64; yields i inside the body."""
        counter = self.var("i64", str(lo), hint)
        head, body, done = (
            self.label(f"{hint}.head"),
            self.label(f"{hint}.body"),
            self.label(f"{hint}.done"),
        )
        self.br(head)
        self.start(head)
        i = self.get(counter)
        self.cbr(self(f"icmp slt i64 {i}, {hi}", "cmp"), body, done)
        self.start(body)
        yield i
        self.set(counter, self(f"add i64 {i}, {step}", hint))
        self.br(head)
        self.start(done)

    @contextlib.contextmanager
    def if_(self, cond: str) -> Iterator[None]:
        then, done = self.label("then"), self.label("endif")
        self.cbr(cond, then, done)
        self.start(then)
        yield
        self.br(done)
        self.start(done)

    def finish(self) -> str:
        """The function's text; a void function whose last block is open returns there."""
        last = self._body[-1].strip() if self._body else ""
        tail = [] if last.startswith(("ret ", "br ", "unreachable")) else ["  ret void"]
        return "\n".join(
            [
                *self.globals,
                self._head,
                "entry:",
                *self._allocas,
                "  br label %body",
                "body:",
                *self._body,
                *tail,
                "}",
                "",
            ]
        )

    # -- integer helpers
    def i64(self, v: str) -> str:
        """An i32 value widened to i64 (tid, nth)."""
        return self(f"sext i32 {v} to i64", "w")

    def add(self, a: str | int, b: str | int) -> str:
        return self(f"add i64 {a}, {b}", "add")

    def sub(self, a: str | int, b: str | int) -> str:
        return self(f"sub i64 {a}, {b}", "sub")

    def mul(self, a: str | int, b: str | int) -> str:
        return self(f"mul i64 {a}, {b}", "mul")

    def round_down(self, lo: str | int, hi: str | int, step: int) -> str:
        """The largest lo + m*step ≤ hi (the end of the whole steps of a loop from lo)."""
        return self.sub(hi, self(f"srem i64 {self.sub(hi, lo)}, {step}", "rem"))

    def min(self, a: str | int, b: str | int) -> str:
        return self(f"select i1 {self(f'icmp slt i64 {a}, {b}', 'lt')}, i64 {a}, i64 {b}", "min")

    def gep(self, base: str, idx: str | int, ty: str = "float") -> str:
        return self(f"getelementptr inbounds {ty}, ptr {base}, i64 {idx}", "p")

    def load(self, ty: str, ptr: str, align: int = 4) -> str:
        return self(f"load {ty}, ptr {ptr}, align {align}", "ld")

    def store(self, ty: str, value: str, ptr: str, align: int = 4) -> None:
        self.op(f"store {ty} {value}, ptr {ptr}, align {align}")

    def share(self, total: str | int, align: int) -> tuple[str, str]:
        """Part `%tid`'s half-open range [lo, hi) of `total` items, of `%nth` parts (the
        scheduler hands parts to threads in any order: the range depends on the part alone):
        equal chunks rounded up to a multiple of `align` (so neighbouring parts do not share
        cache lines), the last ones short or empty."""
        nth = self.i64("%nth")
        up = self(f"add i64 {total}, {self(f'sub i64 {nth}, 1')}")
        per = self(f"sdiv i64 {up}, {nth}", "per")
        per = self(f"add i64 {per}, {align - 1}")
        per = self(f"mul i64 {self(f'sdiv i64 {per}, {align}')}, {align}", "chunk")
        lo = self.min(self(f"mul i64 {self.i64('%tid')}, {per}"), total)
        return lo, self.min(self(f"add i64 {lo}, {per}"), total)

    def memcpy(self, dst: str, src: str, nbytes: str | int) -> None:
        self.intrinsic(
            "void",
            "llvm.memcpy.p0.p0.i64",
            [("ptr", dst), ("ptr", src), ("i64", str(nbytes)), ("i1", "false")],
        )


def halves_to_floats(f: FunctionWriter, halves: str, n: int | None, f16c: bool) -> str:
    """f16 bit patterns as floats: `halves` is an i16 (n None) or an <n x i16> value.  Without
    F16C, LLVM would call the compiler-rt builtin __extendhfsf2, which the JIT cannot count
    on: convert with integer ops instead — the 15 low bits shifted into a float's place and
    scaled by 2**112 are exact for normal and subnormal halves; exponent 31 (inf/nan) maps to
    255; then the sign."""
    scalar = n is None
    it, ft, ht, i16 = (t if scalar else f"<{n} x {t}>" for t in ("i32", "float", "half", "i16"))

    def k(t: str, v: object) -> str:  # a constant of element type t, splat for vectors
        return str(v) if scalar else f"splat ({t} {v})"

    if f16c:
        return f(f"fpext {ht} {f(f'bitcast {i16} {halves} to {ht}', 'h')} to {ft}", "hf")
    c_low, c_13, c_scale = k("i32", 32767), k("i32", 13), k("float", f32(2.0**112))
    c_inf, c_exp, c_sign, c_16 = (
        k("i32", 31 << 23),
        k("i32", 255 << 23),
        k("i32", 32768),
        k("i32", 16),
    )
    h = f(f"zext {i16} {halves} to {it}", "h")
    mag = f(f"shl {it} {f(f'and {it} {h}, {c_low}')}, {c_13}", "mag")
    val = f(f"fmul {ft} {f(f'bitcast {it} {mag} to {ft}')}, {c_scale}", "val")
    special = f(f"icmp uge {it} {mag}, {c_inf}", "infnan")
    infnan = f(f"or {it} {mag}, {c_exp}")
    i1 = "i1" if scalar else f"<{n} x i1>"
    bits = f(f"select {i1} {special}, {it} {infnan}, {it} {f(f'bitcast {ft} {val} to {it}')}")
    sign = f(f"shl {it} {f(f'and {it} {h}, {c_sign}')}, {c_16}", "sign")
    return f(f"bitcast {it} {f(f'or {it} {bits}, {sign}')} to {ft}", "hf")


def widen_halves(
    f: FunctionWriter, fmt: str, row: str, at: str | int, w: int, lanes: int | None, f16c: bool
) -> str:
    """row[at : at+w] of 16-bit floats (f16 or bf16) as a `<w x float>` vector, exactly
    (`lanes`: only the first `lanes`, the rest 0)."""
    it, ht = f"<{w} x i16>", f"<{w} x i32>"
    p = f.gep(row, at, "i16")
    if lanes is None or lanes == w:
        bits = f.load(it, p, 2)
    else:
        mask = "<" + ", ".join(f"i1 {str(i < lanes).lower()}" for i in range(w)) + ">"
        bits = f.intrinsic(
            it,
            f"llvm.masked.load.v{w}i16.p0",
            [("ptr", p), ("i32", "2"), (f"<{w} x i1>", mask), (it, "zeroinitializer")],
        )
    if fmt == "f16":
        return halves_to_floats(f, bits, w, f16c)
    wide = f(f"shl {ht} {f(f'zext {it} {bits} to {ht}', 'bz')}, splat (i32 16)", "bf")
    return f(f"bitcast {ht} {wide} to <{w} x float>", "bf")


# ---- vector snippets shared by the integer kernels ----------------------------------------


def vec(n: int, ty: str) -> str:
    """The vector type `<n x ty>`."""
    return f"<{n} x {ty}>"


def shuffle_mask(idx: Sequence[int]) -> str:
    return f"<{len(idx)} x i32> <" + ", ".join(f"i32 {i}" for i in idx) + ">"


def shuffle(f: FunctionWriter, ty: str, a: str, b: str, idx: Sequence[int], hint: str = "sh"):
    return f(f"shufflevector {ty} {a}, {ty} {b}, {shuffle_mask(idx)}", hint)


def splat(f: FunctionWriter, ty: str, scalar: str, n: int) -> str:
    one = f(f"insertelement <1 x {ty}> poison, {ty} {scalar}, i64 0")
    return shuffle(f, f"<1 x {ty}>", one, "poison", [0] * n, "splat")


def quantize_block(f: FunctionWriter, x: str, b: str | int) -> tuple[str, str, str]:
    """Block b of an f32 row quantized as `ckeir.quant.quantize_activations` does: (q <32 x
    i8>, q as <32 x i32>, d_x)."""
    v32 = vec(32, "float")
    xv = f.load(v32, f.gep(x, f.mul(b, 32)))
    ax = f.intrinsic(v32, "llvm.fabs.v32f32", [(v32, xv)])
    amax = f.intrinsic("float", "llvm.vector.reduce.fmax.v32f32", [(v32, ax)], "nnan")
    d = f(f"fdiv float {amax}, {f32(127.0)}", "dx")
    inv = f(f"fdiv float {f32(1.0)}, {d}", "inv")
    inv = f(f"select i1 {f(f'fcmp oeq float {d}, 0.0')}, float 0.0, float {inv}", "id")
    scaled = f(f"fmul {v32} {xv}, {splat(f, 'float', inv, 32)}", "sx")
    rounded = f.intrinsic(v32, "llvm.round.v32f32", [(v32, scaled)])  # halves away from 0
    q = f(f"fptosi {v32} {rounded} to <32 x i8>", "q")
    return q, f(f"sext <32 x i8> {q} to <32 x i32>", "q32"), d


def fifth_bits(f: FunctionWriter, ty: str, mask: str, n: int) -> str:
    """`<n x i8>` holding 16 where bit j of an n-bit `mask` (of type `ty`: `i32`, `<8 x i8>`)
    is set, else 0: the fifth bits of q5 quants, to OR onto their nibbles."""
    bits = f(f"bitcast {ty} {mask} to <{n} x i1>", "qh")
    return f(
        f"select <{n} x i1> {bits}, <{n} x i8> splat (i8 16), <{n} x i8> zeroinitializer", "q5h"
    )


PREFETCH = 4096  # bytes ahead of a decode GEMV's step that it asks the cache for


def prefetch_ahead(f: FunctionWriter, start: str, nbytes: int, ahead: int | None = None) -> None:
    """Ask for the cache lines `ahead` bytes past the `nbytes` from `start`, one prefetch
    per 64 bytes (each step of a sequential sweep touches every line ahead of it).  A
    decode GEMV streams each row once, and its arithmetic per byte is long enough that the
    hardware prefetchers alone leave its loads waiting on DRAM (measured +8% on Zen 4's
    q4_1, +15-30% on Ice Lake's K-quants)."""
    ahead = PREFETCH if ahead is None else ahead
    if not ahead:
        return
    for o in range(0, nbytes, 64):
        args = [("ptr", f.gep(start, ahead + o, "i8")), ("i32", "0"), ("i32", "3"), ("i32", "1")]
        f.intrinsic("void", "llvm.prefetch.p0", args)


def half_to_float(f: FunctionWriter, ptr: str, f16c: bool) -> str:
    """The f16 at `ptr` as a float (see `halves_to_floats`)."""
    return halves_to_floats(f, f.load("i16", ptr, 2), None, f16c)


def kernel_writer(name: str, nptr: int) -> FunctionWriter:
    """A writer for a kernel with `nptr` buffer arguments %a0.. and the common tail."""
    params = [("ptr", f"%a{i}") for i in range(nptr)] + list(TAIL_PARAMS)
    return FunctionWriter(name, params)


def finish_kernel(f: FunctionWriter, args: Sequence[str]) -> Kernel:
    return Kernel(name=f.name, args=tuple(args), ir=f.finish(), declares=frozenset(f.declares))


# ---- vectors ------------------------------------------------------------------------------


class Vec:
    """`<W x float>` operations written through a FunctionWriter."""

    def __init__(self, f: FunctionWriter, width: int):
        self.f, self.w = f, width
        self.t = f"<{width} x float>"
        self.it = f"<{width} x i32>"
        self.zero = "zeroinitializer"

    def const(self, x: float) -> str:
        return f"splat (float {f32(x)})"

    def splat(self, scalar: str) -> str:
        f = self.f
        one = f(f"insertelement <1 x float> poison, float {scalar}, i64 0", "s")
        return f(
            f"shufflevector <1 x float> {one}, <1 x float> poison, <{self.w} x i32> zeroinitializer",
            "splat",
        )

    def lane_mask(self, lanes: int | str) -> str:
        """`<W x i1>` true in the first `lanes` lanes (a Python int or an i64 value)."""
        if isinstance(lanes, int):
            return (
                "<"
                + ", ".join(f"i1 {'true' if i < lanes else 'false'}" for i in range(self.w))
                + ">"
            )
        f = self.f
        n = f(f"trunc i64 {lanes} to i32", "n")
        one = f(f"insertelement <1 x i32> poison, i32 {n}, i64 0", "s")
        nv = f(
            f"shufflevector <1 x i32> {one}, <1 x i32> poison, <{self.w} x i32> zeroinitializer",
            "splat",
        )
        return f(f"icmp slt {self.it} {self.iota()}, {nv}", "mask")

    def iota(self) -> str:
        return "<" + ", ".join(f"i32 {i}" for i in range(self.w)) + ">"

    def load(
        self,
        base: str,
        idx: str | int = 0,
        lanes: int | str | None = None,
        fill: str = "zeroinitializer",
    ) -> str:
        """Load W floats at base[idx]; with `lanes`, only the first `lanes` (others = fill)."""
        p = self.f.gep(base, idx) if idx != 0 else base
        if lanes is None or lanes == self.w:
            return self.f.load(self.t, p)
        suffix = f"v{self.w}f32.p0"
        return self.f.intrinsic(
            self.t,
            f"llvm.masked.load.{suffix}",
            [("ptr", p), ("i32", "4"), (f"<{self.w} x i1>", self.lane_mask(lanes)), (self.t, fill)],
        )

    def store(
        self, value: str, base: str, idx: str | int = 0, lanes: int | str | None = None
    ) -> None:
        p = self.f.gep(base, idx) if idx != 0 else base
        if lanes is None or lanes == self.w:
            self.f.store(self.t, value, p)
            return
        self.f.intrinsic(
            "void",
            f"llvm.masked.store.v{self.w}f32.p0",
            [
                (self.t, value),
                ("ptr", p),
                ("i32", "4"),
                (f"<{self.w} x i1>", self.lane_mask(lanes)),
            ],
        )

    def bin(self, op: str, a: str, b: str) -> str:
        return self.f(f"{op} {self.t} {a}, {b}", op)

    def add(self, a: str, b: str) -> str:
        return self.bin("fadd", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.bin("fsub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.bin("fmul", a, b)

    def div(self, a: str, b: str) -> str:
        return self.bin("fdiv", a, b)

    def fma(self, a: str, b: str, c: str) -> str:
        """a*b + c, fused where the target has FMA (llvm.fmuladd, never a libm call)."""
        t = self.t
        return self.f.intrinsic(t, f"llvm.fmuladd.v{self.w}f32", [(t, a), (t, b), (t, c)])

    def max(self, a: str, b: str) -> str:
        return self.f.intrinsic(self.t, f"llvm.maxnum.v{self.w}f32", [(self.t, a), (self.t, b)])

    def min(self, a: str, b: str) -> str:
        return self.f.intrinsic(self.t, f"llvm.minnum.v{self.w}f32", [(self.t, a), (self.t, b)])

    def hsum_each(self, vs: list[str]) -> str:
        """The vector whose lane j is the horizontal sum of vs[j], for W vectors: a
        transpose-and-add tree (W-1 steps of two shuffles and an add) instead of W
        separate reductions.  Each step merges two vectors of G groups of L lanes into one
        of 2G groups of L/2 lanes (each group's low half plus its high half)."""
        assert len(vs) == self.w, "hsum_each takes exactly W vectors"
        lanes = self.w
        while len(vs) > 1:
            groups, half = self.w // lanes, lanes // 2
            lo = [
                g * lanes + i if g < groups else self.w + (g - groups) * lanes + i
                for g in range(2 * groups)
                for i in range(half)
            ]
            mask_lo = "<" + ", ".join(f"i32 {m}" for m in lo) + ">"
            mask_hi = "<" + ", ".join(f"i32 {m + half}" for m in lo) + ">"
            merged = []
            for a, b in zip(vs[0::2], vs[1::2], strict=True):
                x = self.f(
                    f"shufflevector {self.t} {a}, {self.t} {b}, <{self.w} x i32> {mask_lo}", "lo"
                )
                y = self.f(
                    f"shufflevector {self.t} {a}, {self.t} {b}, <{self.w} x i32> {mask_hi}", "hi"
                )
                merged.append(self.add(x, y))
            vs, lanes = merged, half
        return vs[0]

    def hsum(self, v: str) -> str:
        return self.f.intrinsic(
            "float",
            f"llvm.vector.reduce.fadd.v{self.w}f32",
            [("float", "-0.0"), (self.t, v)],
            flags="reassoc",
        )

    def hmax(self, v: str) -> str:
        """The largest lane (lanes are never NaN here: no NaN bookkeeping)."""
        return self.f.intrinsic(
            "float", f"llvm.vector.reduce.fmax.v{self.w}f32", [(self.t, v)], flags="nnan"
        )

    def broadcast_lane(self, v: str, i: int) -> str:
        """Every lane = lane i of v (one permute, no trip through a scalar register)."""
        mask = "<" + ", ".join(f"i32 {i}" for _ in range(self.w)) + ">"
        return self.f(f"shufflevector {self.t} {v}, {self.t} poison, <{self.w} x i32> {mask}", "bc")

    def lane(self, v: str, i: int | str) -> str:
        return self.f(f"extractelement {self.t} {v}, i64 {i}", "e")

    def exp(self, x: str) -> str:
        """e**x per lane: Cephes expf (range reduction to |r| <= ln2/2, degree-6 polynomial,
        ~1 ulp); x < -87.33 gives 0, x > 88.72 gives +inf, (88, 88.72] is clamped to e**88."""
        f, t = self.f, self.t
        magic = 12582912.0  # 1.5 * 2**23: adding it rounds to an integer kept in the low bits
        xc = self.max(self.min(x, self.const(88.0)), self.const(-87.33))
        z = self.fma(xc, self.const(1.4426950408889634), self.const(magic))
        nf = self.sub(z, self.const(magic))
        r = self.fma(nf, self.const(-0.693359375), xc)
        r = self.fma(nf, self.const(2.12194440e-4), r)
        p = self.const(1.9875691500e-4)
        for c in (
            1.3981999507e-3,
            8.3334519073e-3,
            4.1665795894e-2,
            1.6666665459e-1,
            5.0000001201e-1,
        ):
            p = self.fma(p, r, self.const(c))
        y = self.add(self.fma(p, self.mul(r, r), r), self.const(1.0))
        zi = f(f"bitcast {t} {z} to {self.it}", "zi")
        n = f(f"sub {self.it} {zi}, splat (i32 {_f32_bits(magic)})", "n")
        e = f(f"add {self.it} {n}, splat (i32 127)", "e")
        scale = f(f"bitcast {self.it} {f(f'shl {self.it} {e}, splat (i32 23)')} to {t}", "pow2")
        y = self.mul(y, scale)
        y = f(f"select {self._cmp('olt', x, self.const(-87.33))}, {t} {self.zero}, {t} {y}", "exp")
        return f(
            f"select {self._cmp('ogt', x, self.const(88.72))}, {t} splat (float {POS_INF}), {t} {y}",
            "exp",
        )

    def _cmp(self, pred: str, a: str, b: str) -> str:
        return f"<{self.w} x i1> " + self.f(f"fcmp {pred} {self.t} {a}, {b}", "fc")


def _f32_bits(x: float) -> int:
    return struct.unpack("<i", struct.pack("<f", x))[0]


def ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def scratch_layout(sizes: dict[str, int], align: int = 64) -> dict[str, int]:
    """Byte offsets of scratch regions laid one after another, each starting on an `align`
    boundary (a cache line), and the `stride` from one token's scratch to the next."""
    out, at = {}, 0
    for name, size in sizes.items():
        out[name] = at
        at += ceil_to(size, align)
    out["stride"] = at
    return out


def rsqrt_const(x: int) -> float:
    return 1.0 / math.sqrt(x)
