"""Row- and element-wise kernels: embed, rmsnorm, rope, kv_store, silu_mul, gelu_mul, scale,
add, argmax.  A per-head RMSNorm (Gemma's Q/K norms) is `rmsnorm` over rows of one head.

Batched decode (each row one sequence's token, at its own position in its own cache slot)
has per-row variants: `rope(..., per_row=True)` reads each row's position from an i64
array, `kv_store_rows` stores each row at its slot and position, `argmax_rows` takes every
row's argmax.  A row's results are the bits the one-row kernels give it.

Each splits its work across threads by `FunctionWriter.share` (chunks aligned to the vector
width so threads write disjoint cache lines) and handles the ragged end with masked
loads/stores, so any size works on any ISA.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    NEG_INF,
    FunctionWriter,
    Kernel,
    Vec,
    f32,
    f64,
    finish_kernel,
    float_tag,
    kernel_writer,
)

Body = Callable[[str, "str | int | None"], None]


def for_vectors(f: FunctionWriter, v: Vec, lo: str | int, hi: str | int, body: Body) -> None:
    """body(i, lanes) over [lo, hi) in steps of W: full vectors (lanes None), then one masked
    tail whose lane count is an i64 value (or an int when lo and hi are ints)."""
    if isinstance(lo, int) and isinstance(hi, int):
        full = lo + (hi - lo) // v.w * v.w
        if full > lo:
            with f.loop(lo, full, v.w, "k") as i:
                body(i, None)
        if full < hi:
            body(str(full), hi - full)
        return
    full = f.round_down(lo, hi, v.w)
    with f.loop(lo, full, v.w, "k") as i:
        body(i, None)
    with f.if_(f(f"icmp slt i64 {full}, {hi}", "tail")):
        body(full, f.sub(hi, full))


def embed(vocab: int, dim: int, host: HostCPU) -> Kernel:
    """out[t] = table[ids[t]]; threads split the columns."""
    f = kernel_writer(f"embed_f32_v{vocab}_d{dim}", 3)
    lo, hi = f.share(dim, host.vector_width)
    nbytes = f.mul(f.sub(hi, lo), 4)
    with f.loop(0, "%n", 1, "t") as t:
        row = f(f"sext i32 {f.load('i32', f.gep('%a0', t, 'i32'))} to i64", "id")
        src = f.gep("%a1", f.add(f.mul(row, dim), lo))
        dst = f.gep("%a2", f.add(f.mul(t, dim), lo))
        f.memcpy(dst, src, nbytes)
    return finish_kernel(f, ("ids", "table", "out"))


def rmsnorm(dim: int, eps: float, host: HostCPU) -> Kernel:
    """out = x / sqrt(mean(x**2) + eps) * w per row; threads split the rows."""
    f = kernel_writer(f"rmsnorm_f32_d{dim}_e{float_tag(eps)}_v{host.vector_width}", 3)
    v = Vec(f, host.vector_width)
    lo, hi = f.share("%n", 1)
    with f.loop(lo, hi, 1, "t") as t:
        x = f.gep("%a0", f.mul(t, dim))
        out = f.gep("%a2", f.mul(t, dim))
        acc = f.var(v.t, v.zero, "acc")

        def square(i: str, lanes: str | int | None) -> None:
            xv = v.load(x, i, lanes)
            f.set(acc, v.fma(xv, xv, f.get(acc)))

        for_vectors(f, v, 0, dim, square)
        mean = f(f"fmul float {v.hsum(f.get(acc))}, {f32(1.0 / dim)}", "mean")
        rms = f.intrinsic(
            "float", "llvm.sqrt.f32", [("float", f(f"fadd float {mean}, {f32(eps)}"))]
        )
        scale = v.splat(f(f"fdiv float 1.0, {rms}", "inv"))

        def normalize(i: str, lanes: str | int | None) -> None:
            y = v.mul(v.mul(v.load(x, i, lanes), scale), v.load("%a1", i, lanes))
            v.store(y, out, i, lanes)

        for_vectors(f, v, 0, dim, normalize)
    return finish_kernel(f, ("x", "w", "out"))


def _flat_map(
    name: str, nin: int, dim: int, host: HostCPU, fn: Callable[[Vec, list[str]], str]
) -> Kernel:
    """out[i] = fn(in0[i], in1[i], ...) over the n*dim elements; threads split the range."""
    f = kernel_writer(name, nin + 1)
    v = Vec(f, host.vector_width)
    lo, hi = f.share(f.mul("%n", dim), host.vector_width)

    def body(i: str, lanes: str | int | None) -> None:
        ins = [v.load(f"%a{j}", i, lanes) for j in range(nin)]
        v.store(fn(v, ins), f"%a{nin}", i, lanes)

    for_vectors(f, v, lo, hi, body)
    return f


def silu_mul(dim: int, host: HostCPU) -> Kernel:
    """out = g * sigmoid(g) * u."""

    def fn(v: Vec, ins: list[str]) -> str:
        g, u = ins
        sig = v.div(v.const(1.0), v.add(v.const(1.0), v.exp(v.sub(v.zero, g))))
        return v.mul(v.mul(g, sig), u)

    f = _flat_map(f"silu_mul_f32_d{dim}_v{host.vector_width}", 2, dim, host, fn)
    return finish_kernel(f, ("g", "u", "out"))


GELU_K = float(np.sqrt(2.0 / np.pi))


def gelu_mul(dim: int, host: HostCPU) -> Kernel:
    """out = gelu(g) * u, GELU's tanh form written as g * sigmoid(2·sqrt(2/π)·(g + 0.044715·g³))
    (the same function: 1 + tanh(y) = 2·sigmoid(2y)), which saturates without overflow."""

    def fn(v: Vec, ins: list[str]) -> str:
        g, u = ins
        cube = v.mul(v.mul(g, g), g)
        inner = v.mul(v.const(2.0 * GELU_K), v.fma(v.const(0.044715), cube, g))
        sig = v.div(v.const(1.0), v.add(v.const(1.0), v.exp(v.sub(v.zero, inner))))
        return v.mul(v.mul(g, sig), u)

    f = _flat_map(f"gelu_mul_f32_d{dim}_v{host.vector_width}", 2, dim, host, fn)
    return finish_kernel(f, ("g", "u", "out"))


def scale(dim: int, factor: float, host: HostCPU) -> Kernel:
    """out = x * factor elementwise over n*dim (in place when out is x)."""
    name = f"scale_f32_d{dim}_s{float_tag(factor)}_v{host.vector_width}"
    f = _flat_map(name, 1, dim, host, lambda v, ins: v.mul(ins[0], v.const(factor)))
    return finish_kernel(f, ("x", "out"))


def add(dim: int, host: HostCPU) -> Kernel:
    """out = a + b elementwise over n*dim."""
    f = _flat_map(f"add_f32_d{dim}_v{host.vector_width}", 2, dim, host, lambda v, ins: v.add(*ins))
    return finish_kernel(f, ("a", "b", "out"))


def kv_store(kv_dim: int, context: int, host: HostCPU) -> Kernel:
    """kcache[pos+t] = k[t], vcache[pos+t] = v[t]; threads split the n*kv_dim floats."""
    f = kernel_writer(f"kv_store_f32_d{kv_dim}_c{context}", 4)
    lo, hi = f.share(f.mul("%n", kv_dim), 16)
    nbytes = f.mul(f.sub(hi, lo), 4)
    at = f.add(f.mul("%pos", kv_dim), lo)
    with f.if_(f(f"icmp sgt i64 {nbytes}, 0")):
        f.memcpy(f.gep("%a2", at), f.gep("%a0", lo), nbytes)
        f.memcpy(f.gep("%a3", at), f.gep("%a1", lo), nbytes)
    return finish_kernel(f, ("k", "v", "kcache", "vcache"))


def kv_store_rows(kv_dim: int, layers: int, context: int, host: HostCPU) -> Kernel:
    """Row t's k and v to position positions[t] of slot slots[t] (kcache/vcache: this layer
    of slot 0; slots are layers·context·kv_dim floats apart); threads split the rows."""
    f = kernel_writer(f"kv_store_rows_f32_d{kv_dim}_l{layers}_c{context}", 6)
    lo, hi = f.share("%n", 1)
    with f.loop(lo, hi, 1, "t") as t:
        slot = f(f"sext i32 {f.load('i32', f.gep('%a3', t, 'i32'))} to i64", "slot")
        pos = f.load("i64", f.gep("%a2", t, "i64"), 8)
        at = f.add(f.mul(slot, layers * context * kv_dim), f.mul(pos, kv_dim))
        src = f.mul(t, kv_dim)
        f.memcpy(f.gep("%a4", at), f.gep("%a0", src), kv_dim * 4)
        f.memcpy(f.gep("%a5", at), f.gep("%a1", src), kv_dim * 4)
    return finish_kernel(f, ("k", "v", "positions", "slots", "kcache", "vcache"))


def argmax(vocab: int, host: HostCPU) -> Kernel:
    """out[0] = first index of the max of the last row; thread 0 alone."""
    w = host.vector_width
    f = kernel_writer(f"argmax_f32_v{vocab}_w{w}", 2)
    with f.if_(f("icmp eq i32 %tid, 0")):
        row = f.gep("%a0", f.mul(f.sub("%n", 1), vocab))
        f.store("i32", _row_argmax(f, Vec(f, w), row, vocab), "%a1")
    return finish_kernel(f, ("x", "out"))


def argmax_rows(vocab: int, host: HostCPU) -> Kernel:
    """out[t] = first index of the max of row t; threads split the rows."""
    w = host.vector_width
    f = kernel_writer(f"argmax_rows_f32_v{vocab}_w{w}", 2)
    lo, hi = f.share("%n", 1)
    with f.loop(lo, hi, 1, "t") as t:
        best = _row_argmax(f, Vec(f, w), f.gep("%a0", f.mul(t, vocab)), vocab)
        f.store("i32", best, f.gep("%a1", t, "i32"))
    return finish_kernel(f, ("x", "out"))


def _row_argmax(f: FunctionWriter, v: Vec, row: str, vocab: int) -> str:
    """The first index of the max of `vocab` floats at `row`, as an i32."""
    w, it = v.w, v.it
    best = f.var(v.t, f"splat (float {NEG_INF})", "best")
    where = f.var(it, v.iota(), "where")

    def step(i: str, lanes: str | int | None) -> None:
        x = v.load(row, i, lanes, fill=f"splat (float {NEG_INF})")
        idx = f(f"trunc i64 {i} to i32")
        one = f(f"insertelement <1 x i32> poison, i32 {idx}, i64 0")
        base = f(f"shufflevector <1 x i32> {one}, <1 x i32> poison, <{w} x i32> zeroinitializer")
        b = f.get(best)
        gt = f(f"fcmp ogt {v.t} {x}, {b}", "gt")
        f.set(best, f(f"select <{w} x i1> {gt}, {v.t} {x}, {v.t} {b}"))
        here = f(f"add {it} {base}, {v.iota()}")
        f.set(where, f(f"select <{w} x i1> {gt}, {it} {here}, {it} {f.get(where)}"))

    for_vectors(f, v, 0, vocab, step)
    b = f.get(best)
    top = v.splat(v.hmax(b))
    hit = f(f"fcmp oeq {v.t} {b}, {top}", "hit")
    cand = f(f"select <{w} x i1> {hit}, {it} {f.get(where)}, {it} splat (i32 2147483647)")
    return f.intrinsic("i32", f"llvm.vector.reduce.smin.v{w}i32", [(it, cand)])


def rope(
    heads: int, head_dim: int, theta: float, style: str, host: HostCPU, per_row: bool = False
) -> Kernel:
    """Rotary embedding of row t at position pos+t (`per_row`: at positions[t], an i64 array
    between x and out); threads split the (row, head) pairs.

    Frequencies theta**(-2i/hd) are computed here in float64 and baked as a constant table;
    cos/sin of (pos+t)*freq are computed at run time in f64 by `llvm.cos/sin.f64` (libm,
    resolved from the process), once per row per thread, into a stack table of hd floats
    laid out so that a head rotates with two vector FMAs (see `_rotate_*`)."""
    if style not in ("interleaved", "halves"):
        raise ValueError(f"rope style {style!r}: expected 'interleaved' or 'halves'")
    if head_dim % 2:
        raise ValueError(f"rope needs an even head_dim, got {head_dim}")
    w = host.vector_width
    half = head_dim // 2
    name = f"rope_f32_h{heads}_d{head_dim}_{style}_t{float_tag(theta)}_v{w}"
    name += "_rows" if per_row else ""
    f = kernel_writer(name, 3 if per_row else 2)
    out_arg = "%a2" if per_row else "%a1"
    v = Vec(f, w)
    freqs = theta ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)
    f.globals.append(
        f"@{name}.freq = internal unnamed_addr constant [{half} x double] ["
        + ", ".join(f"double {f64(x)}" for x in freqs)
        + "]"
    )
    cos_t = f.var(f"[{head_dim} x float]", None, "cos", align=64)
    sin_t = f.var(f"[{head_dim} x float]", None, "sin", align=64)
    cur = f.var("i64", "-1", "row")
    lo, hi = f.share(f.mul("%n", heads), 1)
    with f.loop(lo, hi, 1, "p") as p:
        t = f(f"sdiv i64 {p}, {heads}", "t")
        with f.if_(f(f"icmp ne i64 {t}, {f.get(cur)}")):
            f.set(cur, t)
            at = f.load("i64", f.gep("%a1", t, "i64"), 8) if per_row else f.add("%pos", t)
            _angle_table(f, name, half, style, f(f"sitofp i64 {at} to double"), cos_t, sin_t)
        off = f.mul(p, head_dim)
        x, out = f.gep("%a0", off), f.gep(out_arg, off)
        if style == "interleaved":
            _rotate_interleaved(f, v, x, out, head_dim, cos_t.ptr, sin_t.ptr)
        else:
            _rotate_halves(f, v, x, out, half, cos_t.ptr, sin_t.ptr)
    return finish_kernel(f, ("x", "positions", "out") if per_row else ("x", "out"))


def _angle_table(
    f: FunctionWriter, name: str, half: int, style: str, position: str, cos_t, sin_t
) -> None:
    """interleaved: cos = [c0 c0 c1 c1 ..], sin = [-s0 s0 -s1 s1 ..]; halves: [c0 c1 ..], [s0 s1 ..]."""
    with f.loop(0, half, 1, "f") as i:
        freq = f.load("double", f.gep(f"@{name}.freq", i, "double"), 8)
        angle = f(f"fmul double {position}, {freq}", "angle")
        c = f(
            f"fptrunc double {f.intrinsic('double', 'llvm.cos.f64', [('double', angle)])} to float",
            "cos",
        )
        s = f(
            f"fptrunc double {f.intrinsic('double', 'llvm.sin.f64', [('double', angle)])} to float",
            "sin",
        )
        if style == "interleaved":
            j = f(f"mul i64 {i}, 2")
            j1 = f(f"add i64 {j}, 1")
            f.store("float", c, f.gep(cos_t.ptr, j))
            f.store("float", c, f.gep(cos_t.ptr, j1))
            f.store("float", f(f"fneg float {s}"), f.gep(sin_t.ptr, j))
            f.store("float", s, f.gep(sin_t.ptr, j1))
        else:
            f.store("float", c, f.gep(cos_t.ptr, i))
            f.store("float", s, f.gep(sin_t.ptr, i))


def _rotate_interleaved(
    f: FunctionWriter, v: Vec, x: str, out: str, hd: int, cos: str, sin: str
) -> None:
    # out = x * cos + swap_pairs(x) * sin  (pairs never straddle a vector: W and offsets even)
    swap = "<" + ", ".join(f"i32 {i ^ 1}" for i in range(v.w)) + ">"

    def body(i: str, lanes: str | int | None) -> None:
        xv = v.load(x, i, lanes)
        sw = f(f"shufflevector {v.t} {xv}, {v.t} poison, <{v.w} x i32> {swap}", "sw")
        v.store(v.fma(sw, v.load(sin, i, lanes), v.mul(xv, v.load(cos, i, lanes))), out, i, lanes)

    for_vectors(f, v, 0, hd, body)


def _rotate_halves(
    f: FunctionWriter, v: Vec, x: str, out: str, half: int, cos: str, sin: str
) -> None:
    # (a, b) = (x[i], x[i+hd/2]): out_a = a*c - b*s, out_b = a*s + b*c
    xb, ob = f.gep(x, half), f.gep(out, half)

    def body(i: str, lanes: str | int | None) -> None:
        a, b = v.load(x, i, lanes), v.load(xb, i, lanes)
        c, s = v.load(cos, i, lanes), v.load(sin, i, lanes)
        v.store(v.sub(v.mul(a, c), v.mul(b, s)), out, i, lanes)
        v.store(v.fma(a, s, v.mul(b, c)), ob, i, lanes)

    for_vectors(f, v, 0, half, body)
