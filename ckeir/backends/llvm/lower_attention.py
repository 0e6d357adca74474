"""Lowering of `cke.attention`: store this step's keys and values in the KV cache, then attend."""

from __future__ import annotations

from ckeir.backends.llvm import kernels as K
from ckeir.ir.core import Operation


def lower_attention(low, op: Operation) -> None:
    """`low` is the lowering of the func (`lower._Lowering`)."""
    q, k, v, kc, vc = (low.value_ptr(x) for x in op.operands[:5])
    kc, vc = low.cache_layer(kc, op, 3), low.cache_layer(vc, op, 4)
    context, kvd = tuple(op.operands[3].type.shape)[1:]
    rows = low.rows(op.operands[0])
    low.call(K.kv_store(kvd, context, low.host), [k, v, kc, vc], rows)
    low.sync()
    kern = K.attention(
        op.attr("heads"), op.attr("kv_heads"), op.attr("head_dim"), context, low.host
    )
    low.call(kern, [q, kc, vc, low.value_ptr(op.results[0])], rows)
