"""Units of sizes, rates and times: the one place that knows what `24GiB` or `10Gbit/s` means.

Sizes become whole bytes (int), rates bytes per second (float), times seconds (float).
Decimal prefixes are powers of 1000 (KB = 1000 B), binary ones powers of 1024 (KiB = 1024 B),
and bit rates count 8 bits to the byte.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ckeir.errors import SourceLoc, SpecError

SIZES: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
RATES: dict[str, Fraction] = {
    "B/s": Fraction(1),
    "KB/s": Fraction(1000),
    "MB/s": Fraction(1000**2),
    "GB/s": Fraction(1000**3),
    "Mbit/s": Fraction(1000**2, 8),
    "Gbit/s": Fraction(1000**3, 8),
}
TIMES: dict[str, Fraction] = {
    "ns": Fraction(1, 1000**3),
    "us": Fraction(1, 1000**2),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
}

# kind -> (its units, how a message names the kind, the unit to show as an example)
KINDS: dict[str, tuple[dict, str, str]] = {
    "size": (SIZES, "a size", "GiB"),
    "rate": (RATES, "a rate", "GB/s"),
    "time": (TIMES, "a time", "us"),
}

_QUANTITY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]+(?:/s)?)\s*")


def to_bytes(number: str | int | float, unit: str, loc: SourceLoc | None = None) -> int:
    """`24`, `GiB` -> 25769803776.  A size must come to a whole number of bytes."""
    value = _scaled(number, unit, "size", loc)
    if value.denominator != 1:
        raise SpecError(f"{number}{unit} is not a whole number of bytes", loc=loc)
    return int(value)


def to_bytes_per_second(
    number: str | int | float, unit: str, loc: SourceLoc | None = None
) -> float:
    """`10`, `Gbit/s` -> 1.25e9."""
    return float(_scaled(number, unit, "rate", loc))


def to_seconds(number: str | int | float, unit: str, loc: SourceLoc | None = None) -> float:
    """`50`, `us` -> 5e-05."""
    return float(_scaled(number, unit, "time", loc))


def parse_quantity(text: str, kind: str, loc: SourceLoc | None = None) -> int | float:
    """Parse a whole quantity such as `"24GiB"` or `"10 Gbit/s"` (e.g. from a command line)."""
    m = _QUANTITY.fullmatch(text)
    if m is None:
        _, what, example = KINDS[kind]
        raise SpecError(
            f"'{text}' is not {what}; write a number and a unit, such as 24{example}", loc=loc
        )
    convert = {"size": to_bytes, "rate": to_bytes_per_second, "time": to_seconds}[kind]
    return convert(m.group(1), m.group(2), loc)


def unit_kind(unit: str) -> str | None:
    """Which kind ('size', 'rate', 'time') a unit belongs to, or None if it is no unit."""
    return next((kind for kind, (units, _, _) in KINDS.items() if unit in units), None)


def _scaled(number: str | int | float, unit: str, kind: str, loc: SourceLoc | None) -> Fraction:
    units = KINDS[kind][0]
    if unit not in units:
        raise SpecError(_unit_message(unit, kind), loc=loc, hint=_unit_hint(unit, kind))
    return Fraction(number) * units[unit]


def _unit_message(unit: str, kind: str) -> str:
    units, what, example = KINDS[kind]
    expected = f"expected {what} unit such as {example} (one of {', '.join(units)})"
    other = unit_kind(unit)
    if other is not None:
        return f"{expected}, but '{unit}' is {KINDS[other][1]} unit"
    return f"unknown unit '{unit}'; {expected}"


def _unit_hint(unit: str, kind: str) -> str | None:
    """Units are case-sensitive (Mbit vs MB); point at the intended one if only the case is off."""
    units = KINDS[kind][0]
    same_but_case = [u for u in units if u.lower() == unit.lower()]
    return (
        f"units are case-sensitive: did you mean '{same_but_case[0]}'?" if same_but_case else None
    )


def format_bytes(n: int | float) -> str:
    """Binary-prefixed size for reports: 25769803776 -> '24.0 GiB'."""
    for unit in ("GiB", "MiB", "KiB"):
        if abs(n) >= SIZES[unit]:
            return f"{n / SIZES[unit]:.1f} {unit}"
    return f"{int(n)} B"


def format_rate(bytes_per_second: float) -> str:
    """Decimal-prefixed rate for reports: 2e10 -> '20.0 GB/s'."""
    for unit in ("GB/s", "MB/s", "KB/s"):
        if abs(bytes_per_second) >= RATES[unit]:
            return f"{bytes_per_second / float(RATES[unit]):.1f} {unit}"
    return f"{bytes_per_second:.1f} B/s"


def format_seconds(seconds: float) -> str:
    """A time for reports with a readable unit: 5e-05 -> '50.0 us'."""
    for unit in ("s", "ms", "us"):
        if abs(seconds) >= TIMES[unit]:
            return f"{seconds / float(TIMES[unit]):.1f} {unit}"
    return f"{seconds / float(TIMES['ns']):.1f} ns"
