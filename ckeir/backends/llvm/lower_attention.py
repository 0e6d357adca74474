"""Lowering of `cke.attention`: store this step's keys and values in the KV cache, then attend.

Attention is split by keys (`kernels.attention`): `attention_parts` leaves each chunk's
softmax partials in arena scratch, and after a sync `attention_combine` merges them.  The
scratch holds the partials of a call of the func's row bound (at most `SPLIT_ROWS` rows:
longer calls have one chunk per row and need none); every attention op of the func uses
the same block, one op after another.

A sliding-window layer in a ring (plan-memory's `kv_rows` R) stores position p at row p mod R
of its extent (`ring_store`) and reads key j from row j mod R; the chunks and the order of
the keys stay those of a whole cache, so the outputs are its bits.
"""

from __future__ import annotations

from ckeir.backends.llvm import kernels as K
from ckeir.backends.llvm.kernels.attention import (
    attention_combine,
    attention_parts,
    attention_rows_combine,
    attention_rows_parts,
    ring_store,
    ring_store_rows,
    rows_scratch_bytes,
    scratch_bytes,
)
from ckeir.ir.core import Operation


def lower_attention(low, op: Operation) -> None:
    """`low` is the lowering of the func (`lower._Lowering`)."""
    if low.batched:
        _lower_batched(low, op)
        return
    q, k, v, kc, vc = (low.value_ptr(x) for x in op.operands[:5])
    kc, vc = low.cache_layer(kc, op, 3), low.cache_layer(vc, op, 4)
    context, kvd = tuple(op.operands[3].type.shape)[1:]
    rows = low.rows(op.operands[0])
    ring = op.attr("kv_rows", 0)
    store = ring_store(kvd, ring, low.host) if ring else K.kv_store(kvd, context, low.host)
    low.call(store, [k, v, kc, vc], rows)
    low.sync()
    heads, hd = op.attr("heads"), op.attr("head_dim")
    out = low.value_ptr(op.results[0])
    partials = low.scratch("attention", scratch_bytes(heads, hd, _row_bound(low, op)))
    window = op.attr("window", 0)
    parts = attention_parts(heads, op.attr("kv_heads"), hd, context, low.host, window, ring)
    low.call(parts, [q, kc, vc, partials, out], rows)
    low.sync()
    low.call(attention_combine(heads, hd, low.host), [partials, out], rows)


def _row_bound(low, op: Operation) -> int:
    """The most rows a call of the op has: its static row count, or the func's bound."""
    rows = op.operands[0].type.shape[0]
    return rows if rows is not None else low.func.attr("max_tokens", 1)


def _lower_batched(low, op: Operation) -> None:
    """A batched decode step: row t stores and attends in slot slots[t] at positions[t]
    (the kernels offset slot 0's layer by the slot); every row may split, so the partials
    hold MAX_CHUNKS chunks of each row of the func's bound."""
    q, k, v, kc, vc, positions, slots = (low.value_ptr(x) for x in op.operands[:7])
    kc, vc = low.cache_layer(kc, op, 3), low.cache_layer(vc, op, 4)
    _, layers, context, kvd = op.operands[3].type.shape
    rows = low.rows(op.operands[0])
    ring, packed = op.attr("kv_rows", 0), low.func.attr("kv_rows", 0)  # packed: rows a slot
    store = (
        ring_store_rows(kvd, packed, ring, low.host)
        if packed
        else K.kv_store_rows(kvd, layers, context, low.host)
    )
    low.call(store, [k, v, positions, slots, kc, vc], rows)
    low.sync()
    heads, hd = op.attr("heads"), op.attr("head_dim")
    out = low.value_ptr(op.results[0])
    partials = low.scratch("attention", rows_scratch_bytes(heads, hd, _row_bound(low, op)))
    window = op.attr("window", 0)
    parts = attention_rows_parts(
        heads, op.attr("kv_heads"), hd, layers, context, low.host, window, ring, packed
    )
    low.call(parts, [q, kc, vc, positions, slots, partials, out], rows)
    low.sync()
    low.call(attention_rows_combine(heads, hd, low.host), [positions, partials, out], rows)
