"""Causal grouped-query attention over the KV cache, one (token row, head) pair at a time.

Row t sits at position pos+t and attends to cache rows 0..pos+t; query head h reads kv head
h // (H/KVH).  Pairs are dealt to threads round-robin (p = tid, tid+nth, ...), which balances
the causal triangle in prefill.  Per pair, an online softmax over blocks of W keys: the W
scores go into one vector (each a vector dot over hd + horizontal sum), the block max
rescales the running sum and the hd-wide accumulator, exp is the vector polynomial, and
the V rows are accumulated with vector FMAs.  No scratch beyond one W-float stack slot.
"""

from __future__ import annotations

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    NEG_INF,
    FunctionWriter,
    Kernel,
    Var,
    Vec,
    finish_kernel,
    kernel_writer,
    rsqrt_const,
)


def attention(heads: int, kv_heads: int, head_dim: int, context: int, host: HostCPU) -> Kernel:
    if heads % kv_heads:
        raise ValueError(f"attention: heads {heads} is not a multiple of kv_heads {kv_heads}")
    w = host.vector_width
    f = kernel_writer(f"attention_f32_h{heads}_kv{kv_heads}_d{head_dim}_c{context}_v{w}", 4)
    v = Vec(f, w)
    kvd, rep = kv_heads * head_dim, heads // kv_heads
    chunks = [(c, min(w, head_dim - c)) for c in range(0, head_dim, w)]  # hd as vectors (+ tail)
    scratch = f.var(f"[{w} x float]", None, "scores", align=64)
    with f.loop(f.i64("%tid"), f.mul("%n", heads), f.i64("%nth"), "p") as p:
        t, h = f(f"sdiv i64 {p}, {heads}", "t"), f(f"srem i64 {p}, {heads}", "h")
        kv = f.mul(f(f"sdiv i64 {h}, {rep}", "g"), head_dim)
        q = f.gep("%a0", f.mul(p, head_dim))
        scale = v.const(rsqrt_const(head_dim))
        qv = [v.mul(v.load(q, c, n), scale) for c, n in chunks]
        st = _State(
            f.var("float", NEG_INF, "m"),
            f.var("float", "0.0", "l"),
            [f.var(v.t, v.zero, "acc") for _ in chunks],
        )
        keys = f.add(f.add("%pos", t), 1)
        kfull = f.round_down(0, keys, w)
        with f.loop(0, kfull, w, "j") as j:
            _block(f, v, st, qv, chunks, f.gep("%a1", kv), f.gep("%a2", kv), kvd, j, w, scratch)
        with f.if_(f(f"icmp slt i64 {kfull}, {keys}")):
            _block(
                f,
                v,
                st,
                qv,
                chunks,
                f.gep("%a1", kv),
                f.gep("%a2", kv),
                kvd,
                kfull,
                f.sub(keys, kfull),
                scratch,
            )
        inv = v.splat(f(f"fdiv float 1.0, {f.get(st.l)}", "inv"))
        out = f.gep("%a3", f.mul(p, head_dim))
        for (c, n), acc in zip(chunks, st.acc, strict=True):
            v.store(v.mul(f.get(acc), inv), out, c, n)
    return finish_kernel(f, ("q", "kcache", "vcache", "out"))


class _State:
    """Online-softmax state of one (row, head): running max m, sum l, accumulator over hd."""

    def __init__(self, m: Var, l: Var, acc: list[Var]):  # noqa: E741
        self.m, self.l, self.acc = m, l, acc


def _block(
    f: FunctionWriter,
    v: Vec,
    st: _State,
    qv: list[str],
    chunks,
    kbase: str,
    vbase: str,
    kvd: int,
    j0: str,
    count: int | str,
    scratch: Var,
) -> None:
    """Fold keys j0 .. j0+count-1 into the state; `count` is W (unrolled) or an i64 < W."""
    if isinstance(count, int):
        s = "poison"
        for jj in range(count):
            s = f(
                f"insertelement {v.t} {s}, float {_score(f, v, qv, chunks, kbase, kvd, f.add(j0, jj))}, i64 {jj}"
            )
    else:
        v.store(f"splat (float {NEG_INF})", scratch.ptr)
        with f.loop(0, count, 1, "jj") as jj:
            f.store(
                "float", _score(f, v, qv, chunks, kbase, kvd, f.add(j0, jj)), f.gep(scratch.ptr, jj)
            )
        s = v.load(scratch.ptr)
    m_old = f.get(st.m)
    m_new = f.intrinsic("float", "llvm.maxnum.f32", [("float", m_old), ("float", v.hmax(s))])
    corr = v.lane(v.exp(v.splat(f(f"fsub float {m_old}, {m_new}", "dm"))), 0)  # e**(m_old-m_new)
    pv = v.exp(v.sub(s, v.splat(m_new)))
    f.set(st.l, f(f"fadd float {f(f'fmul float {f.get(st.l)}, {corr}')}, {v.hsum(pv)}", "l"))
    f.set(st.m, m_new)
    corr_v = v.splat(corr)
    accs = [v.mul(f.get(a), corr_v) for a in st.acc]
    if isinstance(count, int):
        for jj in range(count):
            accs = _add_v_row(
                f, v, accs, chunks, vbase, kvd, f.add(j0, jj), v.splat(v.lane(pv, jj))
            )
        for a, x in zip(st.acc, accs, strict=True):
            f.set(a, x)
    else:
        for a, x in zip(st.acc, accs, strict=True):
            f.set(a, x)
        v.store(pv, scratch.ptr)
        with f.loop(0, count, 1, "jj") as jj:
            pj = v.splat(f.load("float", f.gep(scratch.ptr, jj)))
            accs = _add_v_row(
                f, v, [f.get(a) for a in st.acc], chunks, vbase, kvd, f.add(j0, jj), pj
            )
            for a, x in zip(st.acc, accs, strict=True):
                f.set(a, x)


def _score(f: FunctionWriter, v: Vec, qv: list[str], chunks, kbase: str, kvd: int, j: str) -> str:
    krow = f.gep(kbase, f.mul(j, kvd))
    acc = v.zero
    for (c, n), q in zip(chunks, qv, strict=True):
        acc = v.fma(q, v.load(krow, c, n), acc)
    return v.hsum(acc)


def _add_v_row(
    f: FunctionWriter, v: Vec, accs: list[str], chunks, vbase: str, kvd: int, j: str, p: str
) -> list[str]:
    vrow = f.gep(vbase, f.mul(j, kvd))
    return [v.fma(p, v.load(vrow, c, n), a) for (c, n), a in zip(chunks, accs, strict=True)]
