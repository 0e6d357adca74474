"""The `mem` dialect: the memory plan of a program.  `mem.arena` declares the one arena a
program's intermediates live in; plan-memory gives every intermediate an `offset` into it."""

from __future__ import annotations

from ckeir import limits as L
from ckeir.ir.core import Operation
from ckeir.ir.opdef import Int, OpDef, fail, register

MAX_ALIGNMENT = 4096  # a page


def _check_arena(op: Operation) -> None:
    align = op.attr("alignment")
    if align & (align - 1):
        fail(op, f"alignment must be a power of two, got {align}")
    func = op.parent_op
    if func is not None and func.attr("arena_bytes") not in (None, op.attr("bytes")):
        fail(
            op,
            f"declares {op.attr('bytes')} bytes but its func's arena_bytes is "
            f"{func.attr('arena_bytes')}",
        )


register(
    OpDef(
        "mem.arena",
        "The program's activation arena: size, alignment, number of buffers.",
        attributes={
            "bytes": Int(0, L.MAX_BYTES),
            "alignment": Int(1, MAX_ALIGNMENT),
            "buffers": Int(0, L.MAX_BYTES),
        },
        check=_check_arena,
    ),
)
