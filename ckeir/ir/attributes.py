"""IR attributes, printed exactly as `mlir-opt --mlir-print-op-generic` prints them.

`to_attr` turns plain Python values into attributes so that builders can write
`{"eps": 1e-5, "tile": (64, 256)}`; `.value` gives the Python value back.
"""

from __future__ import annotations

import math
import struct

import attrs

from ckeir.ir.types import FloatType, IntegerType, Type, f32, f64, i1, i64


class Attribute:
    """Base of every attribute; `str(a)` is its MLIR text."""

    @property
    def value(self):
        raise NotImplementedError


@attrs.frozen
class IntegerAttr(Attribute):
    value: int
    type: Type = i64

    def __str__(self) -> str:
        return f"{self.value} : {self.type}"


@attrs.frozen
class BoolAttr(Attribute):
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@attrs.frozen
class FloatAttr(Attribute):
    value: float
    type: FloatType = f64

    def __str__(self) -> str:
        return f"{format_float(self.value, self.type)} : {self.type}"


@attrs.frozen
class StringAttr(Attribute):
    value: str

    def __str__(self) -> str:
        return '"' + escape_string(self.value) + '"'


@attrs.frozen
class UnitAttr(Attribute):
    @property
    def value(self):
        return True

    def __str__(self) -> str:
        return "unit"


@attrs.frozen
class DenseArrayAttr(Attribute):
    """`array<i64: 1, 2>`; the element type is an integer type."""

    values: tuple[int, ...] = attrs.field(converter=tuple)
    element: IntegerType = i64

    @property
    def value(self):
        return self.values

    def __str__(self) -> str:
        if not self.values:
            return f"array<{self.element}>"
        return f"array<{self.element}: " + ", ".join(map(str, self.values)) + ">"


@attrs.frozen
class ArrayAttr(Attribute):
    items: tuple[Attribute, ...] = attrs.field(converter=tuple)

    @property
    def value(self):
        return tuple(a.value for a in self.items)

    def __str__(self) -> str:
        return "[" + ", ".join(map(str, self.items)) + "]"


@attrs.frozen
class SymbolRefAttr(Attribute):
    name: str
    nested: tuple[str, ...] = ()

    @property
    def value(self):
        return self.name

    def __str__(self) -> str:
        return "::".join(
            ["@" + symbol_name(self.name)] + ["@" + symbol_name(n) for n in self.nested]
        )


@attrs.frozen
class TypeAttr(Attribute):
    type: Type

    @property
    def value(self):
        return self.type

    def __str__(self) -> str:
        return str(self.type)


@attrs.frozen
class DictAttr(Attribute):
    """A dictionary attribute; entries are kept sorted by name, as MLIR does."""

    entries: tuple[tuple[str, Attribute], ...] = attrs.field(
        converter=lambda es: tuple(sorted(dict(es).items()))
    )

    @property
    def value(self):
        return {k: v.value for k, v in self.entries}

    def __str__(self) -> str:
        return "{" + format_entries(self.entries) + "}"


def format_entries(entries) -> str:
    """`a = 1 : i64, b` — a unit attribute prints as its bare name."""
    parts = []
    for name, a in entries:
        key = name if _BARE_ID.fullmatch(name) else '"' + escape_string(name) + '"'
        parts.append(key if isinstance(a, UnitAttr) else f"{key} = {a}")
    return ", ".join(parts)


def to_attr(v) -> Attribute:
    """Python value → attribute: bool, int (i64), float (f64), str, tuple of ints (array<i64>),
    list (array attribute), dict, Type."""
    if isinstance(v, Attribute):
        return v
    if isinstance(v, bool):
        return BoolAttr(v)
    if isinstance(v, int):
        return IntegerAttr(v)
    if isinstance(v, float):
        return FloatAttr(v)
    if isinstance(v, str):
        return StringAttr(v)
    if isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return DenseArrayAttr(v)
    if isinstance(v, list):
        return ArrayAttr(tuple(to_attr(x) for x in v))
    if isinstance(v, dict):
        return DictAttr({k: to_attr(x) for k, x in v.items()})
    if isinstance(v, Type):
        return TypeAttr(v)
    raise TypeError(f"no attribute for {v!r}")


# --- text details shared by the printer and the parser -------------------------------------

import re  # noqa: E402

_BARE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_$.]*")


def symbol_name(name: str) -> str:
    return name if _BARE_ID.fullmatch(name) else '"' + escape_string(name) + '"'


def escape_string(s: str) -> str:
    """llvm::printEscapedString: printable ASCII as is, `\\` doubled, anything else `\\XX`."""
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif 0x20 <= b < 0x7F and c != '"':
            out.append(c)
        else:
            out.append(f"\\{b:02X}")
    return "".join(out)


def format_float(v: float, t: FloatType = f64) -> str:
    """MLIR's float printing: `%.6e` when that reads back to the same value, else the shortest
    exact decimal (17 or 9 significant digits, trailing zeros cut, `E` exponent when the plain
    form would need padding)."""
    if math.isnan(v) or math.isinf(v):
        return "0x" + _hex_bits(v, t)
    sci = f"{v:.6e}"
    if _same(float(sci), v, t):
        return sci
    digits = 17 if t.width == 64 else 9
    s = f"{v:.{digits}g}"
    if "e" in s:
        mant, exp = s.split("e")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
            if "." not in mant:
                mant += ".0"
        else:
            mant += ".0"
        return f"{mant}E{int(exp)}"
    if "." in s:
        s = s.rstrip("0")
        if s.endswith("."):
            s += "0"
    return s


def _same(a: float, b: float, t: FloatType) -> bool:
    if t == f32:
        return struct.pack("<f", a) == struct.pack("<f", b)
    return struct.pack("<d", a) == struct.pack("<d", b)


def _hex_bits(v: float, t: FloatType) -> str:
    if t == f32:
        return struct.pack(">f", v).hex().upper()
    return struct.pack(">d", v).hex().upper()


TRUE, FALSE = BoolAttr(True), BoolAttr(False)
__all__ = [
    "Attribute",
    "IntegerAttr",
    "BoolAttr",
    "FloatAttr",
    "StringAttr",
    "UnitAttr",
    "DenseArrayAttr",
    "ArrayAttr",
    "SymbolRefAttr",
    "TypeAttr",
    "DictAttr",
    "to_attr",
    "format_entries",
    "escape_string",
    "format_float",
    "symbol_name",
    "i1",
    "TRUE",
    "FALSE",
]
