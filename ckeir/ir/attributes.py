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
        if self.type == i1:  # MLIR's i1 integers are its booleans
            return "true" if self.value else "false"
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
        return "[" + ", ".join(map(_elide_type, self.items)) + "]"


def _elide_type(a: Attribute) -> str:
    """Inside an array MLIR leaves out the default types: `i64` of integers, `f64` of floats
    printed in decimal."""
    if isinstance(a, IntegerAttr) and a.type == i64:
        return str(a.value)
    if isinstance(a, FloatAttr) and a.type == f64:
        text = format_float(a.value, f64)
        return text if not text.startswith("0x") else str(a)
    return str(a)


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
        converter=lambda es: sorted_entries(dict(es))
    )

    @property
    def value(self):
        return {k: v.value for k, v in self.entries}

    def __str__(self) -> str:
        return "{" + format_entries(self.entries) + "}"


def sorted_entries(entries: dict) -> tuple[tuple[str, Attribute], ...]:
    """Entries sorted by name as MLIR sorts them: by the bytes of the name."""
    return tuple(sorted(entries.items(), key=lambda e: e[0].encode("utf-8", "surrogateescape")))


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
    for b in s.encode("utf-8", "surrogateescape"):
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif 0x20 <= b < 0x7F and c != '"':
            out.append(c)
        else:
            out.append(f"\\{b:02X}")
    return "".join(out)


def format_float(v: float, t: FloatType = f64) -> str:
    """MLIR's float printing (printFloatValue): `%.6e`-like when that reads back to the same
    value, else APFloat's default form (17 or 9 significant digits, `E` exponent when the plain
    form would need padding), else — NaN, infinities, integral values too long for the plain
    form — the bit pattern in hex."""
    if math.isfinite(v):
        sci = _apfloat_string(v, t, precision=6, max_padding=0, truncate_zero=False)
        if float_bits(float(sci), t) == float_bits(v, t):
            return sci
        text = _apfloat_string(v, t)
        if "." in text:
            return text
    return f"0x{float_bits(v, t):X}"


# total bits, exponent bits, stored mantissa bits
_LAYOUT = {"f64": (64, 11, 52), "f32": (32, 8, 23), "f16": (16, 5, 10), "bf16": (16, 8, 7)}


def float_bits(v: float, t: FloatType) -> int:
    """The bit pattern of `v` rounded to `t` (OverflowError when it does not fit)."""
    if t.name == "bf16":  # the high half of an f32, rounded to nearest even
        b = float_bits(v, f32)
        if math.isnan(v):
            return b >> 16
        return (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    code = {"f64": ">d", "f32": ">f", "f16": ">e"}[t.name]
    return int.from_bytes(struct.pack(code, v), "big")


def float_from_bits(bits: int, t: FloatType) -> float:
    """The value whose bit pattern in `t` is `bits` (the inverse of `float_bits`)."""
    if t.name == "bf16":
        return float_from_bits(bits << 16, f32)
    code = {"f64": ">d", "f32": ">f", "f16": ">e"}[t.name]
    return struct.unpack(code, bits.to_bytes(_LAYOUT[t.name][0] // 8, "big"))[0]


def _apfloat_string(
    v: float, t: FloatType, precision: int = 0, max_padding: int = 3, truncate_zero: bool = True
) -> str:
    """llvm::APFloat::toString of a finite value, digit for digit (its truncating division and
    round-half-up included, so that the text is the one mlir-opt prints)."""
    total, ebits, mbits = _LAYOUT[t.name]
    bits = float_bits(v, t)
    sign = "-" if bits >> (total - 1) else ""
    biased, sig = (bits >> mbits) & ((1 << ebits) - 1), bits & ((1 << mbits) - 1)
    if biased == 0 and sig == 0:
        if max_padding:
            return sign + "0"
        if truncate_zero:
            return sign + "0.0E+0"
        return sign + "0.0" + "0" * max(precision - 1, 0) + "e+00"
    bias = (1 << (ebits - 1)) - 1
    exp = max(biased, 1) - bias - mbits
    if biased:
        sig |= 1 << mbits
    precision = precision or 2 + (mbits + 1) * 59 // 196
    zeros = (sig & -sig).bit_length() - 1
    sig, exp = sig >> zeros, exp + zeros
    if exp > 0:  # sig * 2^exp → sig * 10^exp
        sig, exp = sig << exp, 0
    elif exp < 0:
        sig *= 5**-exp
    needed = (precision * 196 + 58) // 59
    if sig.bit_length() > needed:
        tens = (sig.bit_length() - needed) * 59 // 196
        sig, exp = sig // 10**tens, exp + tens
    digits = str(sig)
    if len(digits) > precision:
        kept = int(digits[:precision]) + (digits[precision] >= "5")
        exp += len(digits) - precision
        digits = str(kept)
    stripped = digits.rstrip("0")
    digits, exp = stripped, exp + len(digits) - len(stripped)
    n = len(digits)
    if not max_padding:
        scientific = True
    elif exp >= 0:
        scientific = exp > max_padding or n + exp > precision
    else:
        scientific = exp + n - 1 < 0 and -(exp + n - 1) > max_padding
    if scientific:
        e = exp + n - 1
        mantissa = digits[0] + "." + ("0" if n == 1 and truncate_zero else digits[1:])
        if not truncate_zero:
            mantissa += "0" * max(precision - n + 1, 0)
        power = str(abs(e)) if truncate_zero else f"{abs(e):02d}"
        return f"{sign}{mantissa}{'E' if truncate_zero else 'e'}{'+' if e >= 0 else '-'}{power}"
    if exp >= 0:
        return sign + digits + "0" * exp
    whole = exp + n
    if whole > 0:
        return sign + digits[:whole] + "." + digits[whole:]
    return sign + "0." + "0" * -whole + digits


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
    "sorted_entries",
    "escape_string",
    "format_float",
    "float_bits",
    "float_from_bits",
    "symbol_name",
    "i1",
    "TRUE",
    "FALSE",
]
