"""Declarative op definitions: an op states its operands, results, attributes and regions;
the generic verifier follows from the declaration, and an optional `check` adds the rules a
declaration cannot say (shapes).  `infer` gives result types from operand types and
attributes; the shape-infer pass uses it.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ckeir.errors import VerifyError
from ckeir.ir import attributes as A
from ckeir.ir.core import Operation
from ckeir.ir.types import Type

ATTR_KINDS: dict[str, tuple[type, ...]] = {
    "int": (A.IntegerAttr,),
    "float": (A.FloatAttr,),
    "str": (A.StringAttr,),
    "bool": (A.BoolAttr,),
    "ints": (A.DenseArrayAttr,),
    "dict": (A.DictAttr,),
    "array": (A.ArrayAttr,),
    "symbol": (A.SymbolRefAttr,),
    "type": (A.TypeAttr,),
}


@attrs.frozen
class OpDef:
    name: str
    doc: str
    operands: tuple[str, ...] = ()  # a trailing "*name" takes the rest (variadic)
    results: tuple[str, ...] = ()
    attributes: dict[str, str] = attrs.field(factory=dict)  # required: name -> kind
    optional: dict[str, str] = attrs.field(factory=dict)  # optional: name -> kind
    regions: int = 0
    check: Callable[[Operation], None] | None = None
    infer: Callable[[Operation], list[Type]] | None = None

    def operand(self, op: Operation, name: str):
        return op.operands[self.operands.index(name)]

    def verify(self, op: Operation) -> None:
        variadic = bool(self.operands) and self.operands[-1].startswith("*")
        fixed = len(self.operands) - variadic
        n = len(op.operands)
        if n < fixed or (not variadic and n != fixed):
            expect = f"at least {fixed}" if variadic else str(fixed)
            fail(op, f"takes {expect} operands ({', '.join(self.operands)}), got {n}")
        if len(op.results) != len(self.results):
            fail(op, f"has {len(self.results)} results, got {len(op.results)}")
        if len(op.regions) != self.regions:
            fail(op, f"has {self.regions} regions, got {len(op.regions)}")
        for key, kind in self.attributes.items():
            if key not in op.attributes:
                fail(op, f"needs attribute '{key}' ({kind})")
        for key, a in op.attributes.items():
            kind = self.attributes.get(key) or self.optional.get(key)
            if kind is not None and not isinstance(a, ATTR_KINDS[kind]):
                fail(op, f"attribute '{key}' must be {kind}, got {a}")
        if self.check is not None:
            self.check(op)


REGISTRY: dict[str, OpDef] = {}


def register(*defs: OpDef) -> None:
    for d in defs:
        if d.name in REGISTRY:
            raise ValueError(f"op {d.name} registered twice")
        REGISTRY[d.name] = d


def fail(op: Operation, message: str):
    raise VerifyError(f"'{op.name}' op {message}", loc=op.loc)


MODULE_CHECKS: list[Callable[[Operation], None]] = []


def register_module_check(check: Callable[[Operation], None]) -> None:
    """A rule about a whole module that no single op can state (e.g. that every `dist.send`
    meets its `dist.recv`); the verifier runs it on every `builtin.module`."""
    MODULE_CHECKS.append(check)


def lookup(name: str) -> OpDef | None:
    return REGISTRY.get(name)
