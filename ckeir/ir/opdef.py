"""Declarative op definitions: an op states its operands, results, attributes and regions;
the generic verifier follows from the declaration, and an optional `check` adds the rules a
declaration cannot say (shapes).  `infer` gives result types from operand types and
attributes; the shape-infer pass uses it.

An attribute is declared by its kind and, where it matters, its range (`Int(0, MAX)`,
`Float(lo, hi)`, `Str("a", "b")`, `Ints(length=2, lo=1)`); the plain kind names ("int",
"str", ...) declare a kind without a range.  IR text can come from anyone (`ckec opt`), so the
verifier checks every attribute of a registered op against its declaration, and refuses
attributes the op does not declare, before any pass or backend uses the value.
"""

from __future__ import annotations

import math
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
class AttrSpec:
    """What one attribute may hold: its kind (a key of ATTR_KINDS) and, for numbers, the
    inclusive range of the value (of each entry, for "ints"); for strings, the choices."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    length: tuple[int, int] | None = None  # entries of an "ints" attribute, inclusive

    def problem(self, a: A.Attribute) -> str | None:
        """Why `a` does not fit this declaration (None if it does)."""
        numeric = self.kind in ("int", "float")
        if not isinstance(a, ATTR_KINDS[self.kind]) or numeric and isinstance(a.value, bool):
            return f"must be {self.describe()}, got {_shown(a)}"
        values = a.value if self.kind == "ints" else (a.value,)
        if self.length is not None and not self.length[0] <= len(values) <= self.length[1]:
            return f"must be {self.describe()}, got {len(values)} entries"
        if self.choices and a.value not in self.choices:
            return f"must be {self.describe()}, got {_shown(a)}"
        if self.kind == "float" and not math.isfinite(a.value):
            return f"must be a finite number, got {_shown(a)}"
        if any(not self._in_range(v) for v in values):
            return f"must be {self.describe()}, got {_shown(a)}"
        return None

    def _in_range(self, v) -> bool:
        if not isinstance(v, int | float):
            return True
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(f"'{c}'" for c in self.choices)
        what = {"int": "an integer", "float": "a float", "ints": "array<i64: ...>"}.get(
            self.kind, self.kind
        )
        if self.length is not None:
            lo, hi = self.length
            n = lo if lo == hi else f"{lo}-{hi}"
            what += f" of {n} entries"
        if self.lo is not None and self.hi is not None:
            return f"{what} in [{_num(self.lo)}, {_num(self.hi)}]"
        if self.lo is not None:
            return f"{what} >= {_num(self.lo)}"
        return what


def Int(lo: int | None = 0, hi: int | None = None) -> AttrSpec:  # noqa: N802
    return AttrSpec("int", lo, hi)


def Float(lo: float | None = None, hi: float | None = None) -> AttrSpec:  # noqa: N802
    return AttrSpec("float", lo, hi)


def Str(*choices: str) -> AttrSpec:  # noqa: N802
    return AttrSpec("str", choices=choices)


def Ints(length: int | tuple[int, int] | None = None, lo=0, hi=None) -> AttrSpec:  # noqa: N802
    n = (length, length) if isinstance(length, int) else length
    return AttrSpec("ints", lo, hi, length=n)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def attr_spec(kind: str | AttrSpec) -> AttrSpec:
    return kind if isinstance(kind, AttrSpec) else AttrSpec(kind)


def _shown(a: A.Attribute) -> str:
    text = str(a)
    return text if len(text) <= 60 else text[:40] + "…" + text[-12:]


@attrs.frozen
class OpDef:
    name: str
    doc: str
    operands: tuple[str, ...] = ()  # a trailing "*name" takes the rest (variadic)
    results: tuple[str, ...] = ()
    attributes: dict[str, str | AttrSpec] = attrs.field(factory=dict)  # required
    optional: dict[str, str | AttrSpec] = attrs.field(factory=dict)
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
                fail(op, f"needs attribute '{key}' ({attr_spec(kind).describe()})")
        for key, a in op.attributes.items():
            kind = self.attributes.get(key) or self.optional.get(key)
            if kind is None:
                known = ", ".join(sorted({*self.attributes, *self.optional})) or "none"
                fail(op, f"has no attribute '{key}' (it takes: {known})")
            problem = attr_spec(kind).problem(a)
            if problem is not None:
                fail(op, f"attribute '{key}' {problem}")
        if self.check is not None:
            self.check(op)


REGISTRY: dict[str, OpDef] = {}


def register(*defs: OpDef) -> None:
    for d in defs:
        if d.name in REGISTRY:
            raise ValueError(f"op {d.name} registered twice")
        REGISTRY[d.name] = d


def fail(op: Operation, message: str):
    where = "" if op.loc is not None else _enclosing_func(op)
    raise VerifyError(f"'{op.name}' op {message}{where}", loc=op.loc)


def _enclosing_func(op: Operation) -> str:
    """` (in func decode_r1)` for an op a pass built (it has no place in a text to point at)."""
    parent = op.parent_op
    while parent is not None and parent.name != "cke.func":
        parent = parent.parent_op
    return "" if parent is None else f" (in func {parent.attr('sym_name')})"


MODULE_CHECKS: list[Callable[[Operation], None]] = []


def register_module_check(check: Callable[[Operation], None]) -> None:
    """A rule about a whole module that no single op can state (e.g. that every `dist.send`
    meets its `dist.recv`); the verifier runs it on every `builtin.module`."""
    MODULE_CHECKS.append(check)


def lookup(name: str) -> OpDef | None:
    return REGISTRY.get(name)
