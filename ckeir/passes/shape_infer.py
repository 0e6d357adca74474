"""shape-infer: give every value a ranked type.

Requires: `cke.weight` ops carry their `shape`; block arguments are typed.  Each op's result
types come from its declaration's `infer` rule (ckeir.dialects), applied in program order, so
one walk types the whole function.  Leaves typed values alone (idempotent).
"""

from __future__ import annotations

from ckeir.errors import PassError
from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.opdef import lookup
from ckeir.ir.types import UnrankedTensorType
from ckeir.passes.manager import Pass, PassContext, register_pass


def retype(root: Operation, rewriter: Rewriter | None = None) -> None:
    """Recompute every inferable result type under `root`, in program order."""
    rewriter = rewriter or Rewriter()
    for op in root.walk():
        d = lookup(op.name)
        if d is None or d.infer is None:
            continue
        for r, t in zip(op.results, d.infer(op), strict=True):
            if isinstance(t, UnrankedTensorType):
                raise PassError(
                    f"shape-infer: cannot type the result of {op.name} "
                    "(an operand is still unranked)"
                )
            rewriter.set_result_type(op, r.index, t)


def require_ranked(root: Operation, pass_name: str) -> None:
    """The precondition of the passes after shape-infer: every value of `root` is typed."""
    for op in root.walk():
        if any(isinstance(r.type, UnrankedTensorType) for r in op.results):
            raise PassError(
                f"{pass_name}: the result of {op.name} is unranked (run shape-infer first)",
                loc=op.loc,
            )


@register_pass
class ShapeInfer(Pass):
    name = "shape-infer"
    summary = "type every value from the weights' shapes and the ops' inference rules"

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        retype(module, rewriter)
