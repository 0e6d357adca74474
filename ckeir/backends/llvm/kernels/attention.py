"""Causal grouped-query attention over the KV cache.

Row t sits at position pos+t and attends to cache rows 0..pos+t; query head h reads kv head
h // (H/KVH).  The work item is (row t, kv head g, a group of `gq` of g's query heads):
the group's heads walk the keys together, so each K/V row comes from L2/L3 once per
group rather than once per head — attention over an f32 cache is bound by that traffic.
`gq` is the largest divisor of H/KVH whose accumulators fit the vector registers.  Items are
dealt to threads round-robin (item = tid, tid+nth, ...), which also balances the causal
triangle in prefill.

Per head, an online softmax over steps of `KEYS_PER_STEP` keys in sub-blocks of W:

- W products q ⊙ k_j (vector FMAs over hd), summed lane-wise into one score vector by a
  transpose-and-add tree (`Vec.hsum_each`);
- one max / rescale per step for all its sub-blocks (a serial chain of reductions and
  exp, spread over more keys); exp is the vector polynomial; V rows are accumulated with
  vector FMAs.

A row's last step is ragged: its key indices are clamped to the last valid key (no read
past the cache) and the extra scores set to -inf (weight 0).  No scratch memory.
"""

from __future__ import annotations

import attrs

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

KEYS_PER_STEP = 16  # keys per online-softmax update (16 measured best for hd=64 on Zen 4)
MAX_ACCUMULATORS = 12  # vector accumulators a group may keep (of 16 or 32 registers)


@attrs.frozen
class _Head:
    """The online-softmax state of one query head of the item."""

    q: list[str]  # the query, pre-scaled by 1/sqrt(hd), as vectors over hd
    m: Var  # running max
    l: Var  # running sum of weights  # noqa: E741
    acc: list[list[Var]]  # running Σ p_j v_j over hd, as interleaved partial sums


@attrs.frozen
class _Keys:
    """Where the item's keys and values are."""

    chunks: list[tuple[int, int]]  # (offset, lanes) of each vector over hd
    kbase: str  # this kv head's column in the K cache (row stride kvd)
    vbase: str
    kvd: int
    last: str  # index of the last key the row may read


def group_size(rep: int, head_dim: int, width: int) -> int:
    """Query heads processed together: the largest divisor of rep that fits the registers."""
    chunks = -(-head_dim // width)
    return max(
        d for d in range(1, rep + 1) if rep % d == 0 and (d == 1 or d * chunks <= MAX_ACCUMULATORS)
    )


def attention(heads: int, kv_heads: int, head_dim: int, context: int, host: HostCPU) -> Kernel:
    if heads % kv_heads:
        raise ValueError(f"attention: heads {heads} is not a multiple of kv_heads {kv_heads}")
    w = host.vector_width
    f = kernel_writer(f"attention_f32_h{heads}_kv{kv_heads}_d{head_dim}_c{context}_v{w}", 4)
    v = Vec(f, w)
    rep = heads // kv_heads
    gq = group_size(rep, head_dim, w)
    per_row = heads // gq  # items per token row
    chunks = [(c, min(w, head_dim - c)) for c in range(0, head_dim, w)]
    subs = max(1, KEYS_PER_STEP // w)
    acc_sets = 2 if gq == 1 and subs > 1 else 1
    with f.loop(f.i64("%tid"), f.mul("%n", per_row), f.i64("%nth"), "item") as item:
        t = f(f"sdiv i64 {item}, {per_row}", "t")
        h0 = f.mul(f(f"srem i64 {item}, {per_row}", "hg"), gq)  # first head of the group
        col = f.mul(f(f"sdiv i64 {h0}, {rep}", "g"), head_dim)
        keys = f.add(f.add("%pos", t), 1)
        kv = _Keys(
            chunks, f.gep("%a1", col), f.gep("%a2", col), kv_heads * head_dim, f.sub(keys, 1)
        )
        group = [
            _head(f, v, chunks, f.add(f.mul(t, heads), f.add(h0, i)), head_dim, acc_sets)
            for i in range(gq)
        ]
        with f.loop(0, keys, subs * w, "j") as j0:
            _step(f, v, kv, group, j0, f.sub(keys, j0), subs)
        for i, head in enumerate(group):
            out = f.gep("%a3", f.mul(f.add(f.mul(t, heads), f.add(h0, i)), head_dim))
            inv = v.splat(f(f"fdiv float 1.0, {f.get(head.l)}", "inv"))
            for k, (c, n) in enumerate(chunks):
                acc = f.get(head.acc[0][k])
                for more in head.acc[1:]:
                    acc = v.add(acc, f.get(more[k]))
                v.store(v.mul(acc, inv), out, c, n)
    return finish_kernel(f, ("q", "kcache", "vcache", "out"))


def _head(f: FunctionWriter, v: Vec, chunks, qrow: str, head_dim: int, acc_sets: int) -> _Head:
    q = f.gep("%a0", f.mul(qrow, head_dim))
    scale = v.const(rsqrt_const(head_dim))
    return _Head(
        q=[v.mul(v.load(q, c, n), scale) for c, n in chunks],
        m=f.var("float", NEG_INF, "m"),
        l=f.var("float", "0.0", "l"),
        acc=[[f.var(v.t, v.zero, "acc") for _ in chunks] for _ in range(acc_sets)],
    )


def _step(
    f: FunctionWriter, v: Vec, kv: _Keys, group: list[_Head], j0: str, left: str, subs: int
) -> None:
    """Fold keys j0 .. j0 + subs*W - 1 (those < j0+left) into every head of the group."""
    rows = [[f.min(f.add(j0, u * v.w + jj), kv.last) for jj in range(v.w)] for u in range(subs)]
    valid = [v.lane_mask(f.sub(left, u * v.w)) for u in range(subs)]
    krows = [[f.gep(kv.kbase, f.mul(j, kv.kvd)) for j in sub] for sub in rows]
    vrows = [[f.gep(kv.vbase, f.mul(j, kv.kvd)) for j in sub] for sub in rows]
    for head in group:
        scores = []
        for sub, ok in zip(krows, valid, strict=True):
            s = v.hsum_each([_qk(f, v, kv, head, krow) for krow in sub])
            scores.append(
                f(f"select <{v.w} x i1> {ok}, {v.t} {s}, {v.t} splat (float {NEG_INF})", "s")
            )
        _fold(f, v, kv, head, scores, vrows)


def _qk(f: FunctionWriter, v: Vec, kv: _Keys, head: _Head, krow: str) -> str:
    """q ⊙ k summed over the hd chunks (a vector whose lanes are still to be added)."""
    prod = v.zero
    for (c, n), q in zip(kv.chunks, head.q, strict=True):
        prod = v.fma(q, v.load(krow, c, n), prod)
    return prod


def _fold(
    f: FunctionWriter, v: Vec, kv: _Keys, head: _Head, scores: list[str], vrows: list[list[str]]
) -> None:
    """One online-softmax update of `head` with score vectors `scores` for rows `vrows`."""
    m_old = f.get(head.m)
    top = scores[0]
    for s in scores[1:]:
        top = v.max(top, s)
    m_new = f.intrinsic("float", "llvm.maxnum.f32", [("float", m_old), ("float", v.hmax(top))])
    corr = v.lane(v.exp(v.splat(f(f"fsub float {m_old}, {m_new}", "dm"))), 0)  # e**(m_old-m_new)
    probs = [v.exp(v.sub(s, v.splat(m_new))) for s in scores]
    total = probs[0]
    for p in probs[1:]:
        total = v.add(total, p)
    f.set(head.l, f(f"fadd float {f(f'fmul float {f.get(head.l)}, {corr}')}, {v.hsum(total)}", "l"))
    f.set(head.m, m_new)
    corr_v = v.splat(corr)
    accs = [[v.mul(f.get(a), corr_v) for a in acc] for acc in head.acc]
    for u, (pv, sub) in enumerate(zip(probs, vrows, strict=True)):
        acc = accs[u % len(accs)]
        for jj, vrow in enumerate(sub):
            pj = v.broadcast_lane(pv, jj)
            acc[:] = [
                v.fma(pj, v.load(vrow, c, n), a) for (c, n), a in zip(kv.chunks, acc, strict=True)
            ]
    for var_set, acc in zip(head.acc, accs, strict=True):
        for var, x in zip(var_set, acc, strict=True):
            f.set(var, x)
