"""Verify IR: structure (SSA dominance inside a block, region nesting), then each op against its
declaration in the registry.  Unregistered ops are errors unless `allow_unregistered`."""

from __future__ import annotations

from ckeir.errors import VerifyError
from ckeir.ir.core import BlockArgument, Operation, OpResult
from ckeir.ir.opdef import MODULE_CHECKS, lookup


def verify(root: Operation, allow_unregistered: bool = False) -> None:
    """Raise `VerifyError` (located at the op when it came from text) on the first problem."""
    _verify_op(root, allow_unregistered, set())
    if root.name == "builtin.module":
        for check in MODULE_CHECKS:
            check(root)


def _verify_op(op: Operation, allow_unregistered: bool, visible: set) -> None:
    """Check `op` and, recursively, its regions.  `visible` holds the values defined above
    (enclosing block arguments, earlier results); it grows and shrinks as the walk enters
    and leaves regions, so that the walk is linear in the IR, not in blocks × values."""
    d = lookup(op.name)
    if d is None:
        if op.name != "builtin.module" and not allow_unregistered:
            raise VerifyError(f"unknown operation '{op.name}'", loc=op.loc)
    else:
        d.verify(op)
    for region in op.regions:
        args = [a for block in region.blocks for a in block.args]
        visible.update(args)
        for block in region.blocks:
            results = []
            for inner in block.ops:
                for i, v in enumerate(inner.operands):
                    if v not in visible and not _defined_in_other_block(v, block):
                        raise VerifyError(
                            f"'{inner.name}' op operand #{i} is used before it is defined "
                            "(or defined in a region that does not enclose it)",
                            loc=inner.loc,
                        )
                _verify_op(inner, allow_unregistered, visible)
                visible.update(inner.results)
                results.extend(inner.results)
            visible.difference_update(results)
        visible.difference_update(args)


def _defined_in_other_block(v, block) -> bool:
    # Values from other blocks of the same region are allowed (no CFG dominance analysis yet).
    owner = (
        v.block
        if isinstance(v, BlockArgument)
        else v.op.parent
        if isinstance(v, OpResult)
        else None
    )
    return owner is not None and owner is not block and owner.parent is block.parent
