"""Causal grouped-query attention over the KV cache.

Row t sits at position pos+t and attends to cache rows 0..pos+t; query head h reads kv head
h // (H/KVH).  Two ways to share it between parts:

- `attention` (one pass): the work item is (row t, kv head g, a group of `gq` of g's query
  heads), dealt round-robin; enough items in prefill, but a decode row has only H/gq of
  them (3 for SmolLM2), so 2 parts get 2 and 1.
- `attention_parts` + `attention_combine` (split by keys, "flash-decoding"): for up to
  `SPLIT_ROWS` rows, each row's keys are cut into chunks (`split`, chosen from the context
  in use, pos + rows, never from the part count); the item is (row, kv head, chunk), and
  it leaves for each of g's query heads the softmax partials of its keys — running max m,
  Σ e**(s-m), Σ e**(s-m) v — in scratch.  After a sync, `attention_combine` merges each
  (row, head)'s chunks in chunk order, so the result is the same bits whichever part ran
  which chunk.  With one chunk (long prefill calls, short contexts) the item writes the
  output itself and the combine has nothing to do.

The query heads of a kv head share its keys, in groups of `gq` heads that walk them
together.  Over a whole row of keys (the one-pass kernel, and the split kernel's rows of
one chunk) the group is the largest whose accumulators fit MAX_ACCUMULATORS
(`group_size`): each K/V row then comes from L2/L3 once per group, which is what a long
row is bound by.  Over a chunk the group is the largest whose queries, accumulators and a
step's products fit the registers (`register_group`): the next group finds the chunk's
keys in L1/L2, and a group that spills (SmolLM2's 3 heads of 4 vectors each) made decode
1.5x slower from 1024 keys up.

Per head, an online softmax over steps of `KEYS_PER_STEP` keys in sub-blocks of W:

- W products q ⊙ k_j (vector FMAs over hd), summed lane-wise into one score vector by a
  transpose-and-add tree (`Vec.hsum_each`);
- one max / rescale per step for all its sub-blocks (a serial chain of reductions and
  exp, spread over more keys); exp is the vector polynomial; V rows are accumulated with
  vector FMAs.

A range's last step is ragged: its key indices are clamped to the last key of the range
(no read past it) and the extra scores set to -inf (weight 0).

Batched decode (`attention_rows_parts` + `attention_rows_combine`): each row is one
sequence's next token, at its own position in its own slot's cache (slot s's layer is
s·L·C·KVD floats past slot 0's).  Row t is split exactly as a one-row call at its position
splits it (`split(pos[t] + 1, 1)`) and its items do what that call's items do, so each row
gets the bits its sequence's one-sequence decode gets; the items (row, kv head, chunk)
reserve MAX_CHUNKS chunks per row, those past a row's count doing nothing.
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
    ceil_to,
    finish_kernel,
    kernel_writer,
    rsqrt_const,
)

KEYS_PER_STEP = 16  # keys per online-softmax update (16 measured best for hd=64 on Zen 4)
MAX_ACCUMULATORS = 12  # vector accumulators a group may keep (of 16 or 32 registers)
SPLIT_ROWS = 4  # calls of up to this many rows split keys into chunks (decode-sized)
MIN_CHUNK_KEYS = 64  # fewest keys in a chunk: below, a part's partials cost more than its keys
MAX_CHUNKS = 32  # most chunks of a row: bounds the scratch and the combine's work


def split(keys: int, rows: int) -> tuple[int, int]:
    """(keys per chunk, chunks) for a call of `rows` rows over a context of `keys` =
    pos + rows: chunks of at least MIN_CHUNK_KEYS keys, a multiple of KEYS_PER_STEP, at
    most MAX_CHUNKS of them; one chunk when rows > SPLIT_ROWS.  `_split` emits the same
    rule; row t uses the chunks that hold its keys 0..pos+t (its last may be short or
    empty)."""
    if rows > SPLIT_ROWS:
        return keys, 1
    span = max(MIN_CHUNK_KEYS, ceil_to(-(-keys // MAX_CHUNKS), KEYS_PER_STEP))
    return span, -(-keys // span)


def scratch_bytes(heads: int, head_dim: int, rows: int) -> int:
    """The partials of a call of up to `rows` rows (only calls of ≤ SPLIT_ROWS rows use it)."""
    return min(rows, SPLIT_ROWS) * heads * MAX_CHUNKS * _block(head_dim) * 4


def rows_scratch_bytes(heads: int, head_dim: int, rows: int) -> int:
    """The partials of a batched decode call of up to `rows` rows (every row may split)."""
    return rows * heads * MAX_CHUNKS * _block(head_dim) * 4


def _block(head_dim: int) -> int:
    """Floats per partial: Σ e**(s-m) v over hd, then m and Σ e**(s-m), padded to a cache
    line so that two parts never write one line."""
    return ceil_to(head_dim + 2, 16)


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
    last: str  # index of the last key the item may read
    ring: int = 0  # rows of a ring cache (key j in row j mod ring), or 0: key j in row j


@attrs.frozen
class _Shape:
    """What both attention kernels derive from the op's attributes and the vector width."""

    heads: int
    kv_heads: int
    head_dim: int
    w: int
    gq: int  # query heads that walk the keys together

    @property
    def rep(self) -> int:
        return self.heads // self.kv_heads

    @property
    def chunks(self) -> list[tuple[int, int]]:
        return [(c, min(self.w, self.head_dim - c)) for c in range(0, self.head_dim, self.w)]

    @property
    def subs(self) -> int:
        return max(1, KEYS_PER_STEP // self.w)

    @property
    def acc_sets(self) -> int:
        return 2 if self.gq == 1 and self.subs > 1 else 1


def group_size(rep: int, head_dim: int, width: int) -> int:
    """The group over a whole row of keys: the largest divisor of rep whose accumulators fit
    MAX_ACCUMULATORS (the row's keys come from L2/L3 once per group)."""
    chunks = -(-head_dim // width)
    return max(
        d for d in range(1, rep + 1) if rep % d == 0 and (d == 1 or d * chunks <= MAX_ACCUMULATORS)
    )


def register_group(rep: int, head_dim: int, width: int) -> int:
    """The group over a chunk of keys: the largest divisor of rep whose queries and
    accumulators leave W registers for a step's W products (32 vector registers with
    AVX-512, else 16).  The chunk's keys come from L1/L2 for the next group, so a bigger
    group saves little traffic, and one that does not fit spills at every step."""
    chunks = -(-head_dim // width)
    registers = 32 if width >= 16 else 16
    return max(
        d
        for d in range(1, rep + 1)
        if rep % d == 0 and (d == 1 or 2 * d * chunks + width <= registers)
    )


def _shape(heads: int, kv_heads: int, head_dim: int, host: HostCPU, grouping) -> _Shape:
    if heads % kv_heads:
        raise ValueError(f"attention: heads {heads} is not a multiple of kv_heads {kv_heads}")
    w = host.vector_width
    return _Shape(heads, kv_heads, head_dim, w, grouping(heads // kv_heads, head_dim, w))


def attention(heads: int, kv_heads: int, head_dim: int, context: int, host: HostCPU) -> Kernel:
    """One pass: items (row, group of query heads), each over all of its row's keys."""
    s = _shape(heads, kv_heads, head_dim, host, group_size)
    f = kernel_writer(f"attention_f32_h{heads}_kv{kv_heads}_d{head_dim}_c{context}_v{s.w}", 4)
    v = Vec(f, s.w)
    per_row = heads // s.gq  # items per token row
    with f.loop(f.i64("%tid"), f.mul("%n", per_row), f.i64("%nth"), "item") as item:
        t = f(f"sdiv i64 {item}, {per_row}", "t")
        h0 = f.mul(f(f"srem i64 {item}, {per_row}", "hg"), s.gq)  # first head of the group
        keys = f.add(f.add("%pos", t), 1)
        group = _group(f, v, s, t, h0)
        _attend(f, v, s, _keys(f, s, f(f"sdiv i64 {h0}, {s.rep}", "g"), keys), group, 0, keys)
        for i, head in enumerate(group):
            _store_output(f, v, s, head, f.add(f.mul(t, heads), f.add(h0, i)), "%a3")
    return finish_kernel(f, ("q", "kcache", "vcache", "out"))


def attention_parts(
    heads: int,
    kv_heads: int,
    head_dim: int,
    context: int,
    host: HostCPU,
    window: int = 0,
    ring: int = 0,
) -> Kernel:
    """Split by keys: items (row, kv head, chunk of `split`); each leaves the partials of
    every query head of its kv head in `partials`, or, when the row has one chunk, the
    output.  With a `window`, row t reads keys from pos+t+1-window only (`_window`); with a
    `ring` (rows of the layer's cache), key j from row j mod ring.  Chunks are cut over the
    keys' positions either way, so a ring gives the bits of a whole cache."""
    whole = _shape(heads, kv_heads, head_dim, host, group_size)
    chunk = _shape(heads, kv_heads, head_dim, host, register_group)
    name = f"attention_parts_f32_h{heads}_kv{kv_heads}_d{head_dim}_c{context}_v{whole.w}"
    name += (f"_w{window}" if window else "") + (f"_r{ring}" if ring else "")
    f = kernel_writer(name, 5)
    v = Vec(f, whole.w)
    span, count = _split(f)
    items = f.mul(f.mul("%n", kv_heads), count)
    with f.loop(f.i64("%tid"), items, f.i64("%nth"), "item") as item:
        c = f(f"srem i64 {item}, {count}", "c")
        rest = f(f"sdiv i64 {item}, {count}", "tg")
        t, g = f(f"sdiv i64 {rest}, {kv_heads}", "t"), f(f"srem i64 {rest}, {kv_heads}", "g")
        keys = f.add(f.add("%pos", t), 1)
        first = _window(f, keys, window)
        with f.if_(f(f"icmp eq i64 {count}, 1", "whole")):

            def output(head: _Head, row_head: str) -> None:
                _store_output(f, v, whole, head, row_head, "%a4")

            _attend_kv_head(f, v, whole, t, g, first, keys, output, ring=ring)
        with f.if_(f(f"icmp sgt i64 {count}, 1", "split")):
            lo, hi = _chunk_keys(f, c, span, keys, first)

            def partial(head: _Head, row_head: str) -> None:
                _store_partial(f, v, chunk, head, _partial(f, chunk, "%a3", row_head, count, c))

            _attend_kv_head(f, v, chunk, t, g, lo, hi, partial, ring=ring)
    return finish_kernel(f, ("q", "kcache", "vcache", "partials", "out"))


def _window(f: FunctionWriter, keys: str, window: int) -> str | int:
    """The first key a row with `keys` keys (0..keys-1) attends to: keys - window, or 0."""
    if not window:
        return 0
    late = f.sub(keys, window)
    return f(f"select i1 {f(f'icmp sgt i64 {late}, 0')}, i64 {late}, i64 0", "first")


def _chunk_keys(f: FunctionWriter, c: str, span: str, keys: str, first) -> tuple[str, str]:
    """Chunk c's keys [lo, hi): its share of 0..keys-1 from `first` on (a chunk wholly
    before the window is empty: lo = hi, and its partials weigh nothing in the merge)."""
    lo = f.min(f.mul(c, span), keys)
    hi = f.min(f.add(lo, span), keys)
    if first == 0:
        return lo, hi
    late = f(f"select i1 {f(f'icmp sgt i64 {first}, {lo}')}, i64 {first}, i64 {lo}", "lo")
    return f.min(late, hi), hi


def _attend_kv_head(
    f: FunctionWriter,
    v: Vec,
    s: _Shape,
    t: str,
    g: str,
    lo,
    hi,
    store,
    caches: tuple[str, str] = ("%a1", "%a2"),
    ring: int = 0,
) -> None:
    """Every query head of row t that reads kv head g over keys lo .. hi-1 of `caches` (K,
    V; a ring of `ring` rows, or 0), group after group; `store(head, row_head)` keeps each
    head's result."""
    kv = _keys(f, s, g, hi, caches, ring)
    with f.loop(0, s.rep // s.gq, 1, "grp") as grp:
        h0 = f.add(f.mul(g, s.rep), f.mul(grp, s.gq))
        group = _group(f, v, s, t, h0)
        _attend(f, v, s, kv, group, lo, hi)
        for i, head in enumerate(group):
            store(head, f.add(f.mul(t, s.heads), f.add(h0, i)))


def attention_combine(heads: int, head_dim: int, host: HostCPU) -> Kernel:
    """The outputs of a split call: items (row, head), each merging its chunks' partials in
    chunk order (nothing to do when rows have one chunk: `attention_parts` wrote them)."""
    w = host.vector_width
    f = kernel_writer(f"attention_combine_f32_h{heads}_d{head_dim}_v{w}", 2)
    v = Vec(f, w)
    s = _Shape(heads, heads, head_dim, w, 1)
    _, count = _split(f)
    with (
        f.if_(f(f"icmp sgt i64 {count}, 1", "split")),
        f.loop(f.i64("%tid"), f.mul("%n", heads), f.i64("%nth"), "item") as row_head,
    ):
        _merge(f, v, s, "%a0", "%a1", row_head, count, count)
    return finish_kernel(f, ("partials", "out"))


def _merge(
    f: FunctionWriter, v: Vec, s: _Shape, partials: str, out: str, row_head: str, count, stride
) -> None:
    """Row-head `row_head`'s output from its `count` chunks' partials (`stride` chunk
    blocks per row-head), in chunk order."""
    head_dim = s.head_dim
    top = f.var("float", NEG_INF, "top")  # the largest running max of the chunks
    with f.loop(0, count, 1, "c") as c:
        m = f.load("float", f.gep(_partial(f, s, partials, row_head, stride, c), head_dim))
        f.set(top, _fmax(f, f.get(top), m))
    top_v = v.splat(f.get(top))
    total = f.var("float", "0.0", "l")
    acc = [f.var(v.t, v.zero, "acc") for _ in s.chunks]
    with f.loop(0, count, 1, "c") as c:
        p = _partial(f, s, partials, row_head, stride, c)
        m, l_c = (f.load("float", f.gep(p, head_dim + i)) for i in (0, 1))
        scale = v.exp(v.sub(v.splat(m), top_v))  # e**(m_c - top); 0 for an empty chunk
        f.set(total, f(f"fadd float {f.get(total)}, {_fmul(f, l_c, v.lane(scale, 0))}", "l"))
        for a, (off, n) in zip(acc, s.chunks, strict=True):
            f.set(a, v.fma(scale, v.load(p, off, n), f.get(a)))
    inv = v.splat(f(f"fdiv float 1.0, {f.get(total)}", "inv"))
    dst = f.gep(out, f.mul(row_head, head_dim))
    for a, (off, n) in zip(acc, s.chunks, strict=True):
        v.store(v.mul(f.get(a), inv), dst, off, n)


def attention_rows_parts(
    heads: int,
    kv_heads: int,
    head_dim: int,
    layers: int,
    context: int,
    host: HostCPU,
    window: int = 0,
    ring: int = 0,
    slot_rows: int = 0,
) -> Kernel:
    """Batched decode, split by keys: row t (one sequence's token) reads the cache of slot
    slots[t] (kcache/vcache: this layer of slot 0; slots are L·C·KVD floats apart, or
    `slot_rows`·KVD in a packed cache) over keys 0..positions[t] (a `ring`: key j in row
    j mod ring); items (row, kv head, chunk of MAX_CHUNKS), each doing what the item of a
    one-row call at positions[t] does (the output when the row has one chunk, else its
    partials, at chunk slot c of the row-head's MAX_CHUNKS)."""
    whole = _shape(heads, kv_heads, head_dim, host, group_size)
    chunk = _shape(heads, kv_heads, head_dim, host, register_group)
    name = (
        f"attention_rows_parts_f32_h{heads}_kv{kv_heads}_d{head_dim}_l{layers}_c{context}"
        f"_v{whole.w}"
        + (f"_w{window}" if window else "")
        + (f"_r{ring}" if ring else "")
        + (f"_s{slot_rows}" if slot_rows else "")
    )
    f = kernel_writer(name, 7)
    v = Vec(f, whole.w)
    slot_floats = (slot_rows or layers * context) * kv_heads * head_dim
    items = f.mul(f.mul("%n", kv_heads), MAX_CHUNKS)
    with f.loop(f.i64("%tid"), items, f.i64("%nth"), "item") as item:
        c = f(f"srem i64 {item}, {MAX_CHUNKS}", "c")
        rest = f(f"sdiv i64 {item}, {MAX_CHUNKS}", "tg")
        t, g = f(f"sdiv i64 {rest}, {kv_heads}", "t"), f(f"srem i64 {rest}, {kv_heads}", "g")
        keys = f.add(f.load("i64", f.gep("%a3", t, "i64"), 8), 1)
        span, count = _split_keys(f, keys, 1)
        slot = f(f"sext i32 {f.load('i32', f.gep('%a4', t, 'i32'))} to i64", "slot")
        base = f.mul(slot, slot_floats)
        caches = (f.gep("%a1", base), f.gep("%a2", base))
        first = _window(f, keys, window)
        with f.if_(f(f"icmp eq i64 {count}, 1", "whole")):
            with f.if_(f(f"icmp eq i64 {c}, 0", "first")):

                def output(head: _Head, row_head: str) -> None:
                    _store_output(f, v, whole, head, row_head, "%a6")

                _attend_kv_head(f, v, whole, t, g, first, keys, output, caches, ring)
        with f.if_(f(f"icmp sgt i64 {count}, 1", "split")):
            with f.if_(f(f"icmp slt i64 {c}, {count}", "mine")):
                lo, hi = _chunk_keys(f, c, span, keys, first)

                def partial(head: _Head, row_head: str) -> None:
                    dst = _partial(f, chunk, "%a5", row_head, MAX_CHUNKS, c)
                    _store_partial(f, v, chunk, head, dst)

                _attend_kv_head(f, v, chunk, t, g, lo, hi, partial, caches, ring)
    return finish_kernel(f, ("q", "kcache", "vcache", "positions", "slots", "partials", "out"))


def ring_store(kv_dim: int, ring: int, host: HostCPU) -> Kernel:
    """kcache[(pos+t) mod ring] = k[t], vcache likewise: a call's rows into a layer's ring
    (plan-memory makes it hold them beside the window: no row overwrites one the call
    reads); threads split the rows."""
    f = kernel_writer(f"kv_ring_store_f32_d{kv_dim}_r{ring}", 4)
    lo, hi = f.share("%n", 1)
    with f.loop(lo, hi, 1, "t") as t:
        at = f.mul(f(f"urem i64 {f.add('%pos', t)}, {ring}", "row"), kv_dim)
        src = f.mul(t, kv_dim)
        f.memcpy(f.gep("%a2", at), f.gep("%a0", src), kv_dim * 4)
        f.memcpy(f.gep("%a3", at), f.gep("%a1", src), kv_dim * 4)
    return finish_kernel(f, ("k", "v", "kcache", "vcache"))


def ring_store_rows(kv_dim: int, slot_rows: int, ring: int, host: HostCPU) -> Kernel:
    """Batched decode into a packed cache: row t's k and v to row positions[t] mod `ring`
    (or positions[t], with no ring) of this layer in slot slots[t] (kcache/vcache: the
    layer's extent in slot 0; slots are slot_rows·kv_dim floats apart); threads split the
    rows."""
    f = kernel_writer(f"kv_ring_store_rows_f32_d{kv_dim}_s{slot_rows}_r{ring}", 6)
    lo, hi = f.share("%n", 1)
    with f.loop(lo, hi, 1, "t") as t:
        slot = f(f"sext i32 {f.load('i32', f.gep('%a3', t, 'i32'))} to i64", "slot")
        pos = f.load("i64", f.gep("%a2", t, "i64"), 8)
        row = f(f"urem i64 {pos}, {ring}", "row") if ring else pos
        at = f.add(f.mul(slot, slot_rows * kv_dim), f.mul(row, kv_dim))
        src = f.mul(t, kv_dim)
        f.memcpy(f.gep("%a4", at), f.gep("%a0", src), kv_dim * 4)
        f.memcpy(f.gep("%a5", at), f.gep("%a1", src), kv_dim * 4)
    return finish_kernel(f, ("k", "v", "positions", "slots", "kcache", "vcache"))


def attention_rows_combine(heads: int, head_dim: int, host: HostCPU) -> Kernel:
    """The outputs of the rows of a batched call that split: items (row, head), each
    merging its row's chunks in chunk order as `attention_combine` merges them."""
    w = host.vector_width
    f = kernel_writer(f"attention_rows_combine_f32_h{heads}_d{head_dim}_v{w}", 3)
    v = Vec(f, w)
    s = _Shape(heads, heads, head_dim, w, 1)
    with f.loop(f.i64("%tid"), f.mul("%n", heads), f.i64("%nth"), "item") as row_head:
        t = f(f"sdiv i64 {row_head}, {heads}", "t")
        _, count = _split_keys(f, f.add(f.load("i64", f.gep("%a0", t, "i64"), 8), 1), 1)
        with f.if_(f(f"icmp sgt i64 {count}, 1", "split")):
            _merge(f, v, s, "%a1", "%a2", row_head, count, MAX_CHUNKS)
    return finish_kernel(f, ("positions", "partials", "out"))


def _split(f: FunctionWriter) -> tuple[str, str]:
    """`split(pos + n, n)` in IR: (keys per chunk, chunks) of this call."""
    return _split_keys(f, f.add("%pos", "%n"), "%n")


def _split_keys(f: FunctionWriter, keys: str, rows: str | int) -> tuple[str, str]:
    """`split(keys, rows)` in IR."""
    per = f(f"sdiv i64 {f.add(keys, MAX_CHUNKS - 1)}, {MAX_CHUNKS}", "per")
    per = f.mul(f(f"sdiv i64 {f.add(per, KEYS_PER_STEP - 1)}, {KEYS_PER_STEP}"), KEYS_PER_STEP)
    wide = f(f"icmp sgt i64 {per}, {MIN_CHUNK_KEYS}")
    span = f(f"select i1 {wide}, i64 {per}, i64 {MIN_CHUNK_KEYS}", "span")
    count = f(f"sdiv i64 {f.add(keys, f.sub(span, 1))}, {span}", "count")
    few = f(f"icmp sle i64 {rows}, {SPLIT_ROWS}", "few")
    return (
        f(f"select i1 {few}, i64 {span}, i64 {keys}", "span"),
        f(f"select i1 {few}, i64 {count}, i64 1", "count"),
    )


def _partial(f: FunctionWriter, s: _Shape, base: str, row_head: str, stride, c) -> str:
    """Chunk c's partials of (row, head) number `row_head`: a row-head's chunks are
    consecutive blocks, `stride` blocks per row-head (its chunk count, or MAX_CHUNKS)."""
    return f.gep(base, f.mul(f.add(f.mul(row_head, stride), c), _block(s.head_dim)))


def _fmax(f: FunctionWriter, a: str, b: str) -> str:
    return f.intrinsic("float", "llvm.maxnum.f32", [("float", a), ("float", b)])


def _fmul(f: FunctionWriter, a: str, b: str) -> str:
    return f(f"fmul float {a}, {b}", "fm")


def _keys(
    f: FunctionWriter,
    s: _Shape,
    g: str,
    end: str,
    caches: tuple[str, str] = ("%a1", "%a2"),
    ring: int = 0,
) -> _Keys:
    """kv head g's keys and values in `caches` (K, V), of which the item reads keys below
    `end` (in a ring of `ring` rows: key j in row j mod ring)."""
    col = f.mul(g, s.head_dim)
    kc, vc = caches
    kvd = s.kv_heads * s.head_dim
    return _Keys(s.chunks, f.gep(kc, col), f.gep(vc, col), kvd, f.sub(end, 1), ring)


def _group(f: FunctionWriter, v: Vec, s: _Shape, t: str, h0: str) -> list[_Head]:
    """Fresh softmax states of query heads h0 .. h0+gq-1 of row t."""
    return [_head(f, v, s, f.add(f.mul(t, s.heads), f.add(h0, i))) for i in range(s.gq)]


def _head(f: FunctionWriter, v: Vec, s: _Shape, qrow: str) -> _Head:
    q = f.gep("%a0", f.mul(qrow, s.head_dim))
    scale = v.const(rsqrt_const(s.head_dim))
    return _Head(
        q=[v.mul(v.load(q, c, n), scale) for c, n in s.chunks],
        m=f.var("float", NEG_INF, "m"),
        l=f.var("float", "0.0", "l"),
        acc=[[f.var(v.t, v.zero, "acc") for _ in s.chunks] for _ in range(s.acc_sets)],
    )


def _attend(
    f: FunctionWriter, v: Vec, s: _Shape, kv: _Keys, group: list[_Head], lo, hi: str
) -> None:
    """Fold keys lo .. hi-1 into every head of the group."""
    with f.loop(lo, hi, s.subs * v.w, "j") as j0:
        _step(f, v, kv, group, j0, f.sub(hi, j0), s.subs)


def _summed(f: FunctionWriter, v: Vec, head: _Head) -> list[str]:
    """The head's Σ p_j v_j over hd (its interleaved partial sums added)."""
    sums = []
    for k in range(len(head.acc[0])):
        acc = f.get(head.acc[0][k])
        for more in head.acc[1:]:
            acc = v.add(acc, f.get(more[k]))
        sums.append(acc)
    return sums


def _store_output(f: FunctionWriter, v: Vec, s: _Shape, head: _Head, row_head: str, out: str):
    """The head's attention output: Σ p_j v_j / Σ p_j."""
    dst = f.gep(out, f.mul(row_head, s.head_dim))
    inv = v.splat(f(f"fdiv float 1.0, {f.get(head.l)}", "inv"))
    for acc, (c, n) in zip(_summed(f, v, head), s.chunks, strict=True):
        v.store(v.mul(acc, inv), dst, c, n)


def _store_partial(f: FunctionWriter, v: Vec, s: _Shape, head: _Head, dst: str) -> None:
    """The head's softmax partials over the item's keys (see `_block`)."""
    for acc, (c, n) in zip(_summed(f, v, head), s.chunks, strict=True):
        v.store(acc, dst, c, n)
    f.store("float", f.get(head.m), f.gep(dst, s.head_dim))
    f.store("float", f.get(head.l), f.gep(dst, s.head_dim + 1))


def _step(
    f: FunctionWriter, v: Vec, kv: _Keys, group: list[_Head], j0: str, left: str, subs: int
) -> None:
    """Fold keys j0 .. j0 + subs*W - 1 (those < j0+left) into every head of the group."""
    if kv.ring:  # the same keys in the same order, from their ring rows: the same bits
        rows = _ring_rows(f, kv, j0, subs * v.w)
        rows = [rows[u * v.w : (u + 1) * v.w] for u in range(subs)]
    else:
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


def _ring_rows(f: FunctionWriter, kv: _Keys, j0: str, keys: int) -> list[str]:
    """Ring rows of keys j0 .. j0+keys-1, each clamped to the last key as in a whole cache:
    one division a step (j0 mod ring), then row + i, wrapped by one subtraction (a ring of
    fewer rows than a step takes a division a key)."""
    if kv.ring < keys:
        return [f(f"urem i64 {f.min(f.add(j0, i), kv.last)}, {kv.ring}") for i in range(keys)]
    r0 = f(f"urem i64 {j0}, {kv.ring}", "r0")
    room = f.sub(kv.last, j0)  # keys past the last read it again
    rows = []
    for i in range(keys):
        r = f.add(r0, f.min(i, room) if i else 0)
        over = f(f"icmp sge i64 {r}, {kv.ring}")
        rows.append(f(f"select i1 {over}, i64 {f.sub(r, kv.ring)}, i64 {r}", "row"))
    return rows


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
