"""The `cke` dialect: the model-level ops of a transformer program.

Conventions: activations are `tensor<T x D x f32>` (T token rows, `?` in prefill, where the
count is a runtime value bounded by the func's `max_tokens`); a matmul weight is
`tensor<N x K x E>` stored as N rows of K (GGML order), E = f32 or a `!cke.q*` block format;
`out = x @ w^T`.  The KV caches are `memref<L x C x KVD x f32>` function arguments that
`cke.attention` writes (rows pos..pos+T-1 of its layer) and reads.

A batched decode func (`slots = B`, schedule `batch B`) decodes up to B sequences at once:
row t of its activations is the last token of its own sequence, at position `pos[t]`
(`tensor<?xi64>`) in slot `slots[t]` (`tensor<?xi32>`) of the caches
`memref<B x L x C x KVD x f32>` (the slot outermost, so one slot's region is what a prefill
func takes).
"""

from __future__ import annotations

import re

from ckeir import limits as L
from ckeir.formats import FFN_SHARD_UNIT, FORMATS
from ckeir.ir.core import Operation
from ckeir.ir.opdef import Float, Int, Ints, OpDef, Str, fail, register, register_module_check
from ckeir.ir.types import (
    FloatType,
    IntegerType,
    MemRefType,
    ShapedType,
    TensorType,
    UnrankedTensorType,
    element_format,
    f32,
    i32,
    i64,
    nbytes,
)


def _ranked(op: Operation, i: int, rank: int | None = None) -> ShapedType | None:
    """Operand i's type if ranked (None while still unranked); checks the rank."""
    t = op.operands[i].type
    if isinstance(t, UnrankedTensorType):
        return None
    if not isinstance(t, ShapedType):
        fail(op, f"operand #{i} must be a tensor, got {t}")
    if rank is not None and t.rank != rank:
        fail(op, f"operand #{i} must have rank {rank}, got {t}")
    if 0 in t.shape:  # nothing to compute, and sizes of zero divide tile and share sizes
        fail(op, f"operand #{i} {t} is empty")
    return t


def _same_as(i: int):
    def infer(op: Operation):
        t = op.operands[i].type
        return [t]

    return infer


def _dims_match(op: Operation, what: str, a, b) -> None:
    if a is not None and b is not None and a != b:
        fail(op, f"{what}: {a} != {b}")


def _results_match_inferred(op: Operation) -> None:
    d = REG_INFER.get(op.name)
    if d is None:
        return
    for r, t in zip(op.results, d(op), strict=True):
        if isinstance(t, UnrankedTensorType) or isinstance(r.type, UnrankedTensorType):
            continue
        if r.type != t:
            fail(op, f"result type {r.type} does not match the inferred {t}")


# --- attribute ranges (checked by the generic verifier; see ckeir.ir.opdef) -------------------

MAX_DIM = max(L.MAX_VOCAB, L.MAX_FFN, L.MAX_HIDDEN)  # the longest side of any weight
RANK_BOUNDS = (0, L.MAX_NODES - 1)
RANK = Int(*RANK_BOUNDS)
LAYER = Int(0, L.MAX_LAYERS - 1)
# Every op of a layer carries its `layer` (the unit of placement); plan-memory gives every
# intermediate a byte `offset` into its func's arena (the func checks it stays inside).
PLACED = {"layer": LAYER, "offset": Int(0, L.MAX_BYTES)}


SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.$]{0,127}")


# --- checks and inference ------------------------------------------------------------------


def _check_func(op: Operation) -> None:
    if not SYMBOL.fullmatch(op.attr("sym_name")):
        fail(
            op,
            f"sym_name {op.attr('sym_name')[:80]!r} must match {SYMBOL.pattern} (it names "
            "the native function)",
        )
    if not op.regions[0].blocks:
        fail(op, "has an empty body")
    term = op.regions[0].entry.terminator
    if term is None or term.name != "cke.return":
        fail(op, "body must end with 'cke.return'")
    _check_signature(op)
    layers = op.attr("layers")
    if layers is not None and layers[0] > layers[1]:
        fail(op, f"layers {layers[0]}..{layers[1]} is an empty range")
    group = op.attr("group")
    if group is not None and op.attr("rank", 0) not in group:
        fail(op, f"group {group} does not include its rank {op.attr('rank', 0)}")
    _check_arena_offsets(op)
    _check_kv_layout(op)


def _check_kv_layout(func: Operation) -> None:
    """A packed KV cache (`kv_rows` on the func, set by plan-memory): every attention op has
    its extent (`kv_row`, and `kv_rows` on a ring, else the context), the extents lie apart
    in the func's rows; a ring holds the window and a call's rows (see the attention op)."""
    attns = [op for op in func.regions[0].entry.ops if op.name == "cke.attention"]
    total = func.attr("kv_rows")
    if total is None:
        for op in attns:
            if op.attr("kv_row") is not None or op.attr("kv_rows") is not None:
                fail(op, "kv_row and kv_rows need the func's kv_rows (a packed KV cache)")
        return
    context = func.regions[0].entry.args[2].type.shape[-2]
    extents = []
    for op in attns:
        first = op.attr("kv_row")
        if first is None:
            fail(op, f"needs kv_row: its func packs the KV cache in {total} rows")
        rows = op.attr("kv_rows", context)
        if rows > context:
            fail(op, f"kv_rows {rows} exceed the cache's context of {context}")
        extents.append((first, first + rows, op))
    end = 0
    for lo, hi, op in sorted(extents, key=lambda e: e[0]):
        if lo < end:
            fail(op, f"KV rows {lo}..{hi - 1} overlap another layer's (up to row {end - 1})")
        end = hi
    if end > total:
        fail(func, f"kv_rows {total} is fewer than its layers' KV rows ({end})")


def _check_signature(func: Operation) -> None:
    """The inputs every program takes: token ids, the position, the K and V caches; a
    batched decode func (`slots` = B) takes per-row positions, caches of B slots, and the
    slot of each row."""
    args = [a.type for a in func.regions[0].entry.args]
    if func.attr("slots") is not None:
        _check_batched_signature(func, args)
        return
    ok = (
        len(args) == 4
        and _is_rows(args[0], i32)
        and isinstance(args[1], IntegerType)
        and _is_cache(args[2], 3)
        and args[2] == args[3]
    )
    if not ok:
        fail(
            func,
            "entry block must take (ids: tensor<Nxi32> with N > 0, pos: i64, kcache, vcache: "
            f"memref<LxCxDxf32>), got ({', '.join(map(str, args))})",
        )
    context = args[2].shape[1]
    rows = func.attr("max_tokens", 1)
    if context is not None and rows > context:
        fail(func, f"max_tokens {rows} is more rows than its KV cache's context of {context}")


def _check_batched_signature(func: Operation, args: list) -> None:
    slots = func.attr("slots")
    if func.attr("phase") != "decode":
        fail(func, f"slots = {slots}: only a decode func runs several sequences at once")
    ok = (
        len(args) == 5
        and _is_rows(args[0], i32)
        and _is_rows(args[1], i64)
        and _is_cache(args[2], 4)
        and args[2] == args[3]
        and _is_rows(args[4], i32)
        and args[0].shape == args[1].shape == args[4].shape
    )
    if not ok:
        fail(
            func,
            "with slots, entry block must take (ids: tensor<?xi32>, pos: tensor<?xi64>, "
            "kcache, vcache: memref<BxLxCxDxf32>, slots: tensor<?xi32>), "
            f"got ({', '.join(map(str, args))})",
        )
    cache_slots = args[2].shape[0]
    if cache_slots is not None and cache_slots != slots:
        fail(func, f"slots = {slots} but its KV caches hold {cache_slots} slots")
    rows = func.attr("max_tokens", 1)
    if rows > slots:
        fail(func, f"max_tokens {rows} is more rows than its {slots} slots (one row a slot)")


def _is_rows(t, element) -> bool:
    """A rank-1 tensor of `element` with at least one row (`?` or N > 0)."""
    return isinstance(t, TensorType) and t.rank == 1 and t.element == element and 0 not in t.shape


def _is_cache(t, rank: int) -> bool:
    return isinstance(t, MemRefType) and t.rank == rank and t.element == f32


def _check_arena_offsets(func: Operation) -> None:
    """Every buffer plan-memory placed lies inside the func's arena: the backend addresses
    `arena + offset` without further checks."""
    arena = func.attr("arena_bytes")
    bound = func.attr("max_tokens", 1)
    for op in func.regions[0].entry.ops:
        offset = op.attr("offset")
        if type(offset) is not int:  # absent; or of the wrong kind, which the op will report
            continue  # (the func is verified before the ops in its body)
        if arena is None:
            fail(op, f"has offset {offset} but its func has no arena_bytes (run plan-memory)")
        if len(op.results) != 1 or not isinstance(op.results[0].type, ShapedType):
            fail(op, "has an offset but no tensor result to place in the arena")
        try:
            size = nbytes(op.results[0].type, dyn=bound)
        except ValueError as e:
            fail(op, f"has an offset but no byte size: {e}")
        if offset + size > arena:
            fail(
                op,
                f"buffer at offset {offset} of {size} bytes ends past its func's arena of "
                f"{arena} bytes",
            )


def _infer_weight(op: Operation):
    shape = op.attr("shape")
    old = op.results[0].type
    elt = old.element if isinstance(old, (ShapedType, UnrankedTensorType)) else f32
    return [TensorType(shape, elt)]


def _check_weight(op: Operation) -> None:
    t = op.results[0].type
    if isinstance(t, ShapedType):
        if tuple(t.shape) != tuple(op.attr("shape")):
            fail(op, f"type {t} disagrees with shape {op.attr('shape')}")
        try:
            fmt = element_format(t.element)
        except ValueError:
            fail(op, f"element type {t.element} is not a weight format")
        row = t.shape[-1] if t.shape else 1
        if fmt.quantized and row % fmt.block:
            fail(op, f"rows of {row} are not whole {fmt.name} blocks of {fmt.block}")
    shard, shape = op.attr("shard"), op.attr("shape")
    if shard is not None:
        r0, r1, c0, c1 = shard
        if len(shape) != 2 or not (r0 < r1 and c0 < c1) or (r1 - r0, c1 - c0) != tuple(shape):
            fail(op, f"shard {shard} (rows r0..r1, columns c0..c1) disagrees with shape {shape}")


def _infer_embed(op: Operation):
    ids, table = _ranked(op, 0, 1), _ranked(op, 1, 2)
    if ids is None or table is None:
        return [UnrankedTensorType(f32)]
    return [TensorType((ids.shape[0], table.shape[1]), f32)]


def _check_embed(op: Operation) -> None:
    ids = _ranked(op, 0, 1)
    if ids is not None and ids.element != i32:
        fail(op, f"ids must be i32, got {ids}")
    _ranked(op, 1, 2)


def _check_rowwise(op: Operation) -> None:
    """rmsnorm: x [T, D], w [D]; with head_dim, each head_dim-wide head of a row is normed
    alone and w is [head_dim]."""
    x, w = _ranked(op, 0, 2), _ranked(op, 1, 1)
    hd = op.attr("head_dim")
    if hd is None:
        if x is not None and w is not None:
            _dims_match(op, "weight length vs row length", w.shape[0], x.shape[1])
        return
    if w is not None:
        _dims_match(op, "weight length vs head_dim", w.shape[0], hd)
    if x is not None and x.shape[1] is not None and x.shape[1] % hd:
        fail(op, f"row length {x.shape[1]} is not a multiple of head_dim {hd}")


def _infer_matmul(op: Operation):
    x, w = _ranked(op, 0, 2), _ranked(op, 1, 2)
    if x is None or w is None:
        return [UnrankedTensorType(f32)]
    return [TensorType((x.shape[0], w.shape[0]), f32)]


def _check_matmul(op: Operation) -> None:
    x, w = _ranked(op, 0, 2), _ranked(op, 1, 2)
    if x is not None and w is not None:
        _dims_match(
            op, "contraction sizes (x columns vs weight row length)", x.shape[1], w.shape[1]
        )
    chunk = op.attr("k_chunk")
    if chunk is not None:
        if chunk % FFN_SHARD_UNIT:
            fail(op, f"k_chunk {chunk} is not a multiple of {FFN_SHARD_UNIT}")
        if w is not None and w.shape[1] % chunk:
            fail(op, f"k_chunk {chunk} does not divide the contraction size {w.shape[1]}")
        block = element_format(w.element).block if w is not None else 1
        if chunk % block and block % chunk:  # a K-quant: whole super-blocks, or 32s of one
            fail(op, f"k_chunk {chunk} cuts the weight's {block}-element blocks")
    if op.attr("tp") == "vocab":
        _check_vocab_split(op, w)
    elif op.attr("vocab_slice") is not None or op.attr("vocab_bounds") is not None:
        fail(op, 'vocab_slice and vocab_bounds belong to a matmul with tp = "vocab"')


def _check_vocab_split(op: Operation, w: ShapedType | None) -> None:
    """An LM head split by vocabulary: its rows are one of the bounds' slices of the vocab."""
    sl, bounds = op.attr("vocab_slice"), op.attr("vocab_bounds")
    if sl is None or bounds is None:
        fail(op, 'with tp = "vocab" needs vocab_slice and vocab_bounds')
    v0, v1, full = sl
    steps = list(zip(bounds, bounds[1:], strict=False))
    if bounds[0] != 0 or bounds[-1] != full or any(a >= b for a, b in steps):
        fail(op, f"vocab_bounds {bounds} must rise strictly from 0 to the vocab {full}")
    if (v0, v1) not in steps:
        fail(op, f"vocab_slice {v0}..{v1} is not one of the slices {bounds}")
    if w is not None:
        _dims_match(op, "weight rows vs vocab_slice", w.shape[0], v1 - v0)


def _check_rope(op: Operation) -> None:
    x = _ranked(op, 0, 2)
    hd = op.attr("head_dim")
    if hd % 2:
        fail(op, f"head_dim must be an even number, got {hd}")
    if x is not None and x.shape[1] is not None and x.shape[1] % hd:
        fail(op, f"row length {x.shape[1]} is not a multiple of head_dim {hd}")
    pos = op.operands[1].type
    if isinstance(pos, TensorType):
        if not _is_rows(pos, i64):
            fail(op, f"pos must be an integer or one i64 position a row, got {pos}")
        if x is not None:
            _dims_match(op, "rows of x vs positions", x.shape[0], pos.shape[0])
    elif not isinstance(pos, IntegerType):
        fail(op, "pos must be an integer")


def _check_attention(op: Operation) -> None:
    h, kvh, hd = op.attr("heads"), op.attr("kv_heads"), op.attr("head_dim")
    if h % kvh:
        fail(op, f"kv_heads {kvh} must divide heads {h}")
    q, k, v = (_ranked(op, i, 2) for i in range(3))
    if q is not None:
        _dims_match(op, "query row length vs heads*head_dim", q.shape[1], h * hd)
    for t in (k, v):
        if t is not None:
            _dims_match(op, "key/value row length vs kv_heads*head_dim", t.shape[1], kvh * hd)
    batched = len(op.operands) == 7
    if len(op.operands) > 7:
        fail(op, f"takes 6 or 7 operands (the 7th: slots), got {len(op.operands)}")
    rank = 4 if batched else 3
    for i in (3, 4):
        c = op.operands[i].type
        if not isinstance(c, MemRefType) or c.rank != rank:
            what = "a rank-4 (slot-major)" if batched else "a rank-3"
            given = " with slots (operand #6)" if batched else ""
            fail(op, f"operand #{i} must be {what} memref KV cache{given}, got {c}")
        _dims_match(op, "cache row length", c.shape[-1], kvh * hd)
        layers = c.shape[-3]
        if layers is not None and not 0 <= op.attr("layer") < layers:
            fail(op, f"layer {op.attr('layer')} outside the cache's {layers} layers")
    window = op.attr("window")
    if window is not None:
        context = op.operands[3].type.shape[-2]
        if context is not None and window >= context:
            fail(op, f"window {window} is not shorter than the cache's context of {context}")
    _check_ring(op, window)
    pos = op.operands[5].type
    if not batched:
        if not isinstance(pos, IntegerType):
            fail(op, f"pos must be an integer with rank-3 caches, got {pos}")
        return
    slots = op.operands[6].type
    if not _is_rows(pos, i64):
        fail(op, f"pos must be tensor<?xi64> (one position a row) with slots, got {pos}")
    if not _is_rows(slots, i32):
        fail(op, f"slots must be tensor<?xi32> (one slot a row), got {slots}")
    if q is not None:
        _dims_match(op, "rows of q vs positions", q.shape[0], pos.shape[0])
        _dims_match(op, "rows of q vs slots", q.shape[0], slots.shape[0])


def _check_ring(op: Operation, window: int | None) -> None:
    """A ring (`kv_rows` R) holds a sliding-window layer's keys: a call of T rows stores
    positions p..p+T-1 while its first row still reads p-W+1, so R >= W + T - 1 (T: the
    func's row bound, 1 a slot in a batched func)."""
    rows = op.attr("kv_rows")
    if rows is None:
        return
    if window is None:
        fail(op, f"kv_rows {rows} (a ring) needs a window: a global layer keeps its context")
    func = op.parent_op
    calls = 1 if func is None or func.attr("slots") else func.attr("max_tokens", 1)
    if rows < window + calls - 1:
        fail(
            op,
            f"kv_rows {rows} cannot hold a window of {window} keys and a call of {calls} "
            f"rows (needs {window + calls - 1}): a chunk would overwrite keys it still reads",
        )


def _check_same_shapes(op: Operation) -> None:
    ts = [_ranked(op, i) for i in range(len(op.operands))]
    ts = [t for t in ts if t is not None]
    for t in ts[1:]:
        if t != ts[0]:
            fail(op, f"operands must have the same type, got {ts[0]} and {t}")


def _infer_last(op: Operation):
    x = _ranked(op, 0, 2)
    return [UnrankedTensorType(f32) if x is None else TensorType((1, x.shape[1]), f32)]


def _infer_argmax(op: Operation):
    x = _ranked(op, 0, 2)
    return [UnrankedTensorType(i32) if x is None else TensorType((x.shape[0],), i32)]


def _check_float_rows(op: Operation) -> None:
    x = _ranked(op, 0, 2)
    if x is not None and not isinstance(x.element, FloatType):
        fail(op, f"operand must be a float tensor, got {x}")


def _check_whole_blocks(op: Operation) -> None:
    x = _ranked(op, 0, 2)
    fmt = FORMATS[op.attr("format")]
    if x is not None and x.shape[1] is not None and x.shape[1] % fmt.block:
        fail(op, f"rows of {x.shape[1]} are not whole {fmt.name} blocks of {fmt.block}")


def _both(*checks):
    def check(op: Operation) -> None:
        for c in checks:
            c(op)
        _results_match_inferred(op)

    return check


DEFS = [
    OpDef(
        "cke.func",
        "A program for one phase (and rank); its entry block arguments are the "
        "inputs: token ids, position, KV caches; with `slots` (a batched decode func), "
        "per-row positions, caches of `slots` sequence slots, and each row's slot.",
        regions=1,
        attributes={"sym_name": Str(), "phase": Str("prefill", "decode")},
        optional={
            "rank": RANK,
            "stage": RANK,
            "group": Ints((1, L.MAX_NODES), *RANK_BOUNDS),
            "layers": Ints(2, 0, L.MAX_LAYERS - 1),
            "max_tokens": Int(1, L.MAX_CONTEXT),
            "slots": Int(1, L.MAX_BATCH),
            "arena_bytes": Int(0, L.MAX_BYTES),
            "kv_rows": Int(1, L.MAX_CONTEXT * L.MAX_LAYERS),  # a packed KV cache's rows
        },
        check=_check_func,
    ),
    OpDef(
        "cke.return",
        "Ends a cke.func; its operands are the program's outputs.",
        operands=("*values",),
    ),
    OpDef(
        "cke.weight",
        "A named model parameter (GGUF tensor name) of the given shape.",
        results=("out",),
        attributes={"name": Str(), "shape": Ints((1, L.MAX_TENSOR_DIMS), 1, MAX_DIM)},
        optional={"layer": LAYER, "shard": Ints(4, 0, MAX_DIM)},
        check=_both(_check_weight),
        infer=_infer_weight,
    ),
    OpDef(
        "cke.embed",
        "out[t] = table[ids[t]] (times `scale` if given: Gemma's sqrt(hidden)).",
        operands=("ids", "table"),
        results=("out",),
        optional={**PLACED, "scale": Float(1e-6, float(L.MAX_HIDDEN))},
        check=_both(_check_embed),
        infer=_infer_embed,
    ),
    OpDef(
        "cke.rmsnorm",
        "out = x / sqrt(mean(x^2) + eps) * w, row by row; with head_dim, each "
        "head_dim-wide head of a row alone (w: one head's gains; Gemma's Q/K norms).",
        operands=("x", "w"),
        results=("out",),
        attributes={"eps": Float(L.MIN_NORM_EPS, L.MAX_NORM_EPS)},
        optional={**PLACED, "head_dim": Int(1, L.MAX_HIDDEN)},
        check=_both(_check_rowwise),
        infer=_same_as(0),
    ),
    OpDef(
        "cke.matmul",
        "out = x @ w^T; w is N rows of K, f32 or block-quantized.",
        operands=("x", "w"),
        results=("out",),
        optional={
            **PLACED,
            "tile": Ints(2, 1, MAX_DIM),
            "act": Str("q8_0"),
            "tp": Str("partial", "vocab"),
            "vocab_slice": Ints(3, 0, L.MAX_VOCAB),
            "vocab_bounds": Ints((2, L.MAX_NODES + 1), 0, L.MAX_VOCAB),
            # K summed in chunks of this many, each from fresh accumulators, the chunk sums
            # added in K order (place sets it where tensor parallelism splits along K)
            "k_chunk": Int(FFN_SHARD_UNIT, max(L.MAX_FFN, L.MAX_HIDDEN)),
        },
        check=_both(_check_matmul),
        infer=_infer_matmul,
    ),
    OpDef(
        "cke.rope",
        "Rotary position embedding of each head_dim-wide head; row t is at "
        "position pos + t (pos an integer) or pos[t] (pos a tensor<?xi64>); pairs (2i, 2i+1) ('interleaved') or (i, i+hd/2) ('halves').",
        operands=("x", "pos"),
        results=("out",),
        attributes={
            "theta": Float(L.MIN_ROPE_THETA, L.MAX_ROPE_THETA),
            "head_dim": Int(2, L.MAX_HIDDEN),
            "style": Str("interleaved", "halves"),
        },
        optional=PLACED,
        check=_both(_check_rope),
        infer=_same_as(0),
    ),
    OpDef(
        "cke.attention",
        "Stores k, v at rows pos.. of the layer's KV cache, then causal "
        "grouped-query attention of q over cache rows 0..pos+t.  With slots (rank-4 "
        "caches, per-row pos): row t stores at cache[slots[t], layer, pos[t]] and attends "
        "over cache[slots[t], layer, 0..pos[t]], its own sequence only.  With window W "
        "(sliding-window attention) row t at position p attends to keys p-W+1..p only.  "
        "With kv_row (a packed cache, the func's kv_rows) the layer's rows start at that "
        "row of the cache; with kv_rows R (a ring, plan-memory) position p is row p mod R.",
        operands=("q", "k", "v", "kcache", "vcache", "pos", "*slots"),
        results=("out",),
        attributes={
            "heads": Int(1, L.MAX_HEADS),
            "kv_heads": Int(1, L.MAX_HEADS),
            "head_dim": Int(1, L.MAX_HIDDEN),
            "layer": LAYER,
        },
        optional={
            "offset": PLACED["offset"],
            "window": Int(1, L.MAX_CONTEXT),
            "kv_row": Int(0, L.MAX_CONTEXT * L.MAX_LAYERS),
            "kv_rows": Int(1, L.MAX_CONTEXT),
        },
        check=_both(_check_attention),
        infer=_same_as(0),
    ),
    OpDef(
        "cke.silu_mul",
        "out = silu(gate) * up (SwiGLU).",
        operands=("gate", "up"),
        results=("out",),
        optional=PLACED,
        check=_both(_check_same_shapes),
        infer=_same_as(0),
    ),
    OpDef(
        "cke.gelu_mul",
        "out = gelu(gate) * up, GELU's tanh form (GeGLU, Gemma's FFN): "
        "gelu(x) = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).",
        operands=("gate", "up"),
        results=("out",),
        optional=PLACED,
        check=_both(_check_same_shapes),
        infer=_same_as(0),
    ),
    OpDef(
        "cke.add",
        "out = a + b (residual).",
        operands=("a", "b"),
        results=("out",),
        optional=PLACED,
        check=_both(_check_same_shapes),
        infer=_same_as(0),
    ),
    OpDef(
        "cke.last_token",
        "The last row of x (the only one the LM head needs).",
        operands=("x",),
        results=("out",),
        optional=PLACED,
        check=_both(_check_float_rows),
        infer=_infer_last,
    ),
    OpDef(
        "cke.requant",
        "x rounded through a transfer format and back, row by row: dequantize(quantize(x)) "
        "with GGML's Q8_0 rule (gguf.quants).  The single-rank twin of a schedule with "
        "`quantize transfers q8_0` applies it where the distributed plan sends x to another "
        "rank, so that both compute the same values.",
        operands=("x",),
        results=("out",),
        attributes={"format": Str("q8_0")},  # the transfer formats with a kernel
        optional=PLACED,
        check=_both(_check_float_rows, _check_whole_blocks),
        infer=_same_as(0),
    ),
    OpDef(
        "cke.argmax",
        "Index of the largest value of each row (first on ties): one index a row of x "
        "(`?` rows give tensor<?xi32>; a prefill's argmax follows cke.last_token, 1 row).",
        operands=("x",),
        results=("out",),
        optional=PLACED,
        check=_both(_check_float_rows),
        infer=_infer_argmax,
    ),
]

REG_INFER = {d.name: d.infer for d in DEFS if d.infer is not None}
register(*DEFS)


def check_unique_funcs(module: Operation) -> None:
    """One func per name (two would be one native symbol) and per phase and rank (the runtime
    runs the program of its phase and rank)."""
    names: set[str] = set()
    programs: set[tuple[str, int]] = set()
    for op in module.regions[0].entry.ops if module.regions and module.regions[0].blocks else ():
        if op.name != "cke.func":
            continue
        name, key = op.attr("sym_name"), (op.attr("phase"), op.attr("rank", 0))
        if name in names:
            fail(op, f"sym_name {name!r} is already the name of another func")
        if key in programs:
            fail(op, f"is a second {key[0]} program for rank {key[1]}")
        names.add(name)
        programs.add(key)


register_module_check(check_unique_funcs)
