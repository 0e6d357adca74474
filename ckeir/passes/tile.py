"""tile: choose each matmul's tile sizes from the target's caches and the op's shape.

Requires: shape-infer (weight types known).  Sets `tile = array<i64: TN, TK>` on `cke.matmul`:
a TN x TK block of weight rows is the unit of reuse — the prefill GEMM streams every token row
against one block while it sits in L2, so TN x row_bytes(TK) is kept within half of L2 (the
other half holds the activation rows and the outputs).  TK is the whole row when 16 rows fit
(row-at-once dot products need no partial sums), else the largest multiple of 256 that does.
TN is a multiple of 16 (one vector of outputs) and at most the rows one thread owns.
"""

from __future__ import annotations

from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.types import ShapedType, element_format
from ckeir.passes.manager import Pass, PassContext, Target, register_pass

MIN_ROWS = 16


def choose_tile(n: int, k: int, elt, target: Target) -> tuple[int, int]:
    """(TN, TK) for an N x K weight of element type `elt` on `target`."""
    fmt = element_format(elt)
    budget = target.l2 // 2
    tk = k
    while tk > 256 and MIN_ROWS * fmt.row_bytes(tk) > budget:
        tk = max(256, (tk // 2) // 256 * 256)
    per_thread = -(-n // max(target.cores, 1))
    tn = budget // fmt.row_bytes(tk)
    tn = max(MIN_ROWS, tn // MIN_ROWS * MIN_ROWS)
    tn = min(tn, -(-per_thread // MIN_ROWS) * MIN_ROWS)
    return tn, tk


@register_pass
class Tile(Pass):
    name = "tile"
    summary = "pick matmul tile sizes from the node's L2 and the weight's shape"

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        for op in module.walk():
            if op.name != "cke.matmul":
                continue
            w = op.operands[1].type
            if isinstance(w, ShapedType) and w.static:
                n, k = w.shape
                rewriter.set_attr(op, "tile", choose_tile(n, k, w.element, ctx.target))
