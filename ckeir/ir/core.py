"""Operations, blocks, regions and SSA values.

The object graph is MLIR's: an `Operation` has operands (SSA `Value`s), results, an attribute
dictionary, optional properties and regions; a `Region` holds `Block`s; a `Block` holds block
arguments and a list of operations.  Types and attributes are immutable; the graph changes only
through `Builder` (insertion) and `Rewriter` (replace, erase, set attributes), so every change a
pass makes goes through one small API.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ckeir.ir.attributes import Attribute, to_attr
from ckeir.ir.types import Type


class Value:
    """An SSA value: an op result or a block argument."""

    __slots__ = ("type", "uses")

    def __init__(self, type: Type):
        self.type = type
        self.uses: list[tuple[Operation, int]] = []  # (user, operand index)

    def replace_all_uses_with(self, new: Value) -> None:
        for user, i in list(self.uses):
            user.set_operand(i, new)


class OpResult(Value):
    __slots__ = ("op", "index")

    def __init__(self, type: Type, op: Operation, index: int):
        super().__init__(type)
        self.op, self.index = op, index

    def __repr__(self) -> str:
        return f"<result {self.index} of {self.op.name}: {self.type}>"


class BlockArgument(Value):
    __slots__ = ("block", "index")

    def __init__(self, type: Type, block: Block, index: int):
        super().__init__(type)
        self.block, self.index = block, index

    def __repr__(self) -> str:
        return f"<block arg {self.index}: {self.type}>"


class Operation:
    """A generic operation; what a particular op means is stated in `ckeir.dialects`."""

    def __init__(
        self,
        name: str,
        operands: Iterable[Value] = (),
        result_types: Iterable[Type] = (),
        attributes: dict | None = None,
        regions: Iterable[Region] = (),
        properties: dict | None = None,
        loc=None,
    ):
        self.name = name
        self.operands: list[Value] = []
        for v in operands:
            self._add_operand(v)
        self.results = [OpResult(t, self, i) for i, t in enumerate(result_types)]
        self.attributes: dict[str, Attribute] = {
            k: to_attr(v) for k, v in (attributes or {}).items()
        }
        self.properties: dict[str, Attribute] = {
            k: to_attr(v) for k, v in (properties or {}).items()
        }
        self.regions: list[Region] = []
        for r in regions:
            self.add_region(r)
        self.parent: Block | None = None
        self.loc = loc  # where it came from in IR text, for error messages

    # -- structure -----------------------------------------------------------------------
    def _add_operand(self, v: Value) -> None:
        if not isinstance(v, Value):
            raise TypeError(f"{self.name}: operand {v!r} is not an SSA value")
        v.uses.append((self, len(self.operands)))
        self.operands.append(v)

    def set_operand(self, i: int, v: Value) -> None:
        old = self.operands[i]
        old.uses.remove((self, i))
        v.uses.append((self, i))
        self.operands[i] = v

    def add_region(self, r: Region) -> Region:
        r.parent = self
        self.regions.append(r)
        return r

    @property
    def result(self) -> OpResult:
        if len(self.results) != 1:
            raise ValueError(f"{self.name} has {len(self.results)} results")
        return self.results[0]

    def attr(self, name: str, default=None):
        """The Python value of an attribute (or `default`)."""
        a = self.attributes.get(name)
        return default if a is None else a.value

    def walk(self) -> Iterator[Operation]:
        """This op and every op nested in it, in pre-order."""
        yield self
        for r in self.regions:
            for b in r.blocks:
                for op in list(b.ops):
                    yield from op.walk()

    @property
    def parent_op(self) -> Operation | None:
        if self.parent is None or self.parent.parent is None:
            return None
        return self.parent.parent.parent

    def __repr__(self) -> str:
        return f"<op {self.name}>"


class Block:
    def __init__(self, arg_types: Iterable[Type] = ()):
        self.args = [BlockArgument(t, self, i) for i, t in enumerate(arg_types)]
        self.ops: list[Operation] = []
        self.parent: Region | None = None

    def add_arg(self, t: Type) -> BlockArgument:
        a = BlockArgument(t, self, len(self.args))
        self.args.append(a)
        return a

    def append(self, op: Operation) -> Operation:
        return self.insert(len(self.ops), op)

    def insert(self, index: int, op: Operation) -> Operation:
        if op.parent is not None:
            raise ValueError(f"{op.name} is already in a block")
        op.parent = self
        self.ops.insert(index, op)
        return op

    @property
    def terminator(self) -> Operation | None:
        return self.ops[-1] if self.ops else None


class Region:
    def __init__(self, blocks: Iterable[Block] = ()):
        self.blocks: list[Block] = []
        self.parent: Operation | None = None
        for b in blocks:
            self.add_block(b)

    def add_block(self, b: Block) -> Block:
        b.parent = self
        self.blocks.append(b)
        return b

    @property
    def entry(self) -> Block:
        return self.blocks[0]


class Builder:
    """Creates ops at an insertion point (the end of a block, or before an op)."""

    def __init__(self, block: Block, before: Operation | None = None):
        self.block, self.before = block, before

    @classmethod
    def before_op(cls, op: Operation) -> Builder:
        return cls(op.parent, op)

    def insert(self, op: Operation) -> Operation:
        if self.before is None:
            self.block.append(op)
        else:
            self.block.insert(self.block.ops.index(self.before), op)
        return op

    def op(self, name, operands=(), result_types=(), attributes=None, regions=()) -> Operation:
        return self.insert(Operation(name, operands, result_types, attributes, regions))

    def value(self, op_name, operands, result_type, /, **attributes) -> OpResult:
        """Create a one-result op and return its result."""
        return self.op(op_name, operands, [result_type], attributes).result


class Rewriter:
    """The one way passes change existing IR.  Counts its changes for pass statistics."""

    def __init__(self):
        self.changes = 0

    def set_attr(self, op: Operation, name: str, value) -> None:
        op.attributes[name] = to_attr(value)
        self.changes += 1

    def remove_attr(self, op: Operation, name: str) -> None:
        if op.attributes.pop(name, None) is not None:
            self.changes += 1

    def set_result_type(self, op: Operation, i: int, t: Type) -> None:
        if op.results[i].type != t:
            op.results[i].type = t
            self.changes += 1

    def set_arg_type(self, arg: BlockArgument, t: Type) -> None:
        if arg.type != t:
            arg.type = t
            self.changes += 1

    def set_operand(self, op: Operation, i: int, value: Value) -> None:
        if op.operands[i] is not value:
            op.set_operand(i, value)
            self.changes += 1

    def insert_before(self, anchor: Operation, op: Operation) -> Operation:
        self.changes += 1
        return Builder.before_op(anchor).insert(op)

    def insert_after(self, anchor: Operation, op: Operation) -> Operation:
        block = anchor.parent
        self.changes += 1
        return block.insert(block.ops.index(anchor) + 1, op)

    def erase(self, op: Operation) -> None:
        for r in op.results:
            if r.uses:
                raise ValueError(f"cannot erase {op.name}: its result is still used")
        for i, v in enumerate(op.operands):
            v.uses.remove((op, i))
        op.parent.ops.remove(op)
        op.parent = None
        self.changes += 1

    def erase_all(self, ops: Iterable[Operation]) -> None:
        """Erase several ops at once; a result may be used only by ops erased with it.  Each
        block is rebuilt once: erasing one by one searches the block every time, which is
        quadratic in a large program."""
        doomed = set(ops)
        for op in doomed:
            for r in op.results:
                if any(user not in doomed for user, _ in r.uses):
                    raise ValueError(f"cannot erase {op.name}: its result is still used")
        for v in {v for op in doomed for v in op.operands}:
            v.uses = [(user, i) for user, i in v.uses if user not in doomed]
        for block in {op.parent for op in doomed}:
            block.ops = [op for op in block.ops if op not in doomed]
        for op in doomed:
            op.parent = None
        self.changes += len(doomed)

    def insert_after_each(self, after: dict[Operation, Operation]) -> None:
        """Insert `after[anchor]` right after each anchor, rebuilding each block once (one
        search per insertion would be quadratic in a large program)."""
        for block in {anchor.parent for anchor in after}:
            ops = []
            for op in block.ops:
                ops.append(op)
                if op in after:
                    new = after[op]
                    if new.parent is not None:
                        raise ValueError(f"{new.name} is already in a block")
                    new.parent = block
                    ops.append(new)
            block.ops = ops
        self.changes += len(after)

    def replace(self, op: Operation, new_values: list[Value]) -> None:
        for old, new in zip(op.results, new_values, strict=True):
            old.replace_all_uses_with(new)
        self.erase(op)


def module_op(ops: Iterable[Operation] = ()) -> Operation:
    """A `builtin.module` holding `ops` in its single block."""
    block = Block()
    for op in ops:
        block.append(op)
    return Operation("builtin.module", regions=[Region([block])])


def clone(op: Operation, mapping: dict[Value, Value] | None = None) -> Operation:
    """A deep copy of `op` (its regions included); operands defined outside `op` are looked up
    in `mapping` (value -> value) and kept as they are if absent."""
    mapping = {} if mapping is None else mapping
    new = Operation(
        op.name,
        [mapping.get(v, v) for v in op.operands],
        [r.type for r in op.results],
        dict(op.attributes),
        (),
        dict(op.properties),
        op.loc,
    )
    for old, r in zip(op.results, new.results, strict=True):
        mapping[old] = r
    for region in op.regions:
        new_region = new.add_region(Region())
        for block in region.blocks:
            nb = new_region.add_block(Block([a.type for a in block.args]))
            for old, a in zip(block.args, nb.args, strict=True):
                mapping[old] = a
        for block, nb in zip(region.blocks, new_region.blocks, strict=True):
            for inner in block.ops:
                nb.append(clone(inner, mapping))
    return new
