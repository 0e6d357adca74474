"""The `mem` dialect: the memory plan of a program.  `mem.arena` declares the one arena a
program's intermediates live in; plan-memory gives every intermediate an `offset` into it."""

from __future__ import annotations

from ckeir.ir.core import Operation
from ckeir.ir.opdef import OpDef, fail, register


def _check_arena(op: Operation) -> None:
    if op.attr("bytes") < 0 or op.attr("alignment") <= 0:
        fail(op, "bytes must be >= 0 and alignment > 0")


register(
    OpDef(
        "mem.arena",
        "The program's activation arena: size, alignment, number of buffers.",
        attributes={"bytes": "int", "alignment": "int", "buffers": "int"},
        check=_check_arena,
    ),
)
