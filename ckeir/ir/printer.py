"""Print IR in MLIR's generic operation syntax, exactly as `mlir-opt --mlir-print-op-generic`.

Knows nothing of particular ops.  Value names follow MLIR's scheme for the generic form
(unique ids across the whole printed op): regions are numbered from a stack, so a region's
own values are numbered before the regions nested in it, and the nested regions of a block
are visited last-first; entry-block arguments are `%argN`, other values `%N`, and an op with
several results is `%N:k` (used as `%N#i`).
"""

from __future__ import annotations

from ckeir.ir.attributes import format_entries, sorted_entries
from ckeir.ir.core import Block, Operation, Region, Value
from ckeir.ir.types import FunctionType


class _Names:
    def __init__(self, root: Operation):
        self.values: dict[Value, str] = {}
        self.blocks: dict[Block, str] = {}
        next_value = next_arg = 0
        stack: list[Region] = list(root.regions)
        while stack:
            region = stack.pop()
            for bi, block in enumerate(region.blocks):
                self.blocks[block] = f"^bb{bi}"
                for a in block.args:
                    if bi == 0:
                        self.values[a] = f"%arg{next_arg}"
                        next_arg += 1
                    else:
                        self.values[a] = f"%{next_value}"
                        next_value += 1
                for op in block.ops:
                    if len(op.results) == 1:
                        self.values[op.results[0]] = f"%{next_value}"
                    for i, r in enumerate(op.results if len(op.results) > 1 else ()):
                        self.values[r] = f"%{next_value}#{i}"
                    if op.results:
                        next_value += 1
            for block in region.blocks:
                for op in block.ops:
                    stack.extend(op.regions)

    def result_group(self, op: Operation) -> str:
        first = self.values[op.results[0]]
        if len(op.results) == 1:
            return first
        return first.split("#")[0] + f":{len(op.results)}"


def print_ir(op: Operation) -> str:
    """The generic-syntax text of `op` (usually a `builtin.module`), ending in a newline."""
    names = _Names(op)
    lines: list[str] = []
    _print_op(op, names, lines, 0)
    return "\n".join(lines) + "\n"


def _print_op(op: Operation, names: _Names, out: list[str], indent: int) -> None:
    pad = "  " * indent
    head = f"{names.result_group(op)} = " if op.results else ""
    operands = ", ".join(_name(names, v) for v in op.operands)
    text = f'{pad}{head}"{op.name}"({operands})'
    if op.properties:
        text += " <{" + format_entries(sorted_entries(op.properties)) + "}>"
    if op.regions:
        text += " ("
        out.append(text)
        for ri, region in enumerate(op.regions):
            if ri:
                out[-1] += ", "
            out[-1] += "{"
            _print_region(region, names, out, indent)
            out.append(pad + "}")
        text = out.pop() + ")"
    if op.attributes:
        text += " {" + format_entries(sorted_entries(op.attributes)) + "}"
    ftype = FunctionType([v.type for v in op.operands], [r.type for r in op.results])
    out.append(f"{text} : {ftype}")


def _print_region(region: Region, names: _Names, out: list[str], indent: int) -> None:
    pad = "  " * indent
    for bi, block in enumerate(region.blocks):
        # MLIR omits the entry block's label when it has no arguments and is not empty.
        if bi or block.args or not block.ops:
            args = ", ".join(f"{names.values[a]}: {a.type}" for a in block.args)
            label = f"{pad}{names.blocks[block]}" + (f"({args})" if args else "") + ":"
            # No op has successors here, so no block but the entry one has predecessors.
            out.append(label + ("  // no predecessors" if bi else ""))
        for op in block.ops:
            _print_op(op, names, out, indent + 1)


def _name(names: _Names, v: Value) -> str:
    try:
        return names.values[v]
    except KeyError:
        return "<<UNKNOWN SSA VALUE>>"
