"""Units of sizes, rates and times: the one place that knows what `24GiB` or `10Gbit/s` means.

Sizes become whole bytes (int), rates bytes per second (float), times seconds (float).
Decimal prefixes are powers of 1000 (KB = 1000 B), binary ones powers of 1024 (KiB = 1024 B),
and bit rates count 8 bits to the byte.  Every quantity must lie in the range ckeir/limits
gives its kind: a size of 0 B or a rate of 1e400 Gbit/s is refused here, where it is read.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ckeir import limits
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

# kind -> the values it may take, in bytes, bytes per second or seconds (inclusive); a bound
# is read from its decimal text, so that 1ns is exactly limits.MIN_SECONDS (1e-9).
RANGES: dict[str, tuple[Fraction, Fraction]] = {
    kind: (Fraction(str(lo)), Fraction(str(hi)))
    for kind, (lo, hi) in {
        "size": (1, limits.MAX_BYTES),
        "rate": (limits.MIN_RATE, limits.MAX_RATE),
        "time": (limits.MIN_SECONDS, limits.MAX_SECONDS),
    }.items()
}

_DECIMAL = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
_QUANTITY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]+(?:/s)?)\s*")


# Each conversion takes the unit's location `loc` and, where it differs, the number's
# (`number_loc`): an error about the number points at the number, one about the unit at it.


def to_bytes(
    number: str | int | float, unit: str, loc: SourceLoc | None = None, *, number_loc=None
) -> int:
    """`24`, `GiB` -> 25769803776.  A size must come to a whole number of bytes."""
    value = _scaled(number, unit, "size", loc, number_loc or loc)
    if value.denominator != 1:
        raise SpecError(f"{number}{unit} is not a whole number of bytes", loc=number_loc or loc)
    return int(value)


def to_bytes_per_second(
    number: str | int | float, unit: str, loc: SourceLoc | None = None, *, number_loc=None
) -> float:
    """`10`, `Gbit/s` -> 1.25e9."""
    return float(_scaled(number, unit, "rate", loc, number_loc or loc))


def to_seconds(
    number: str | int | float, unit: str, loc: SourceLoc | None = None, *, number_loc=None
) -> float:
    """`50`, `us` -> 5e-05."""
    return float(_scaled(number, unit, "time", loc, number_loc or loc))


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


def check_digits(number: str, loc: SourceLoc | None = None) -> None:
    """A numeric literal has at most limits.MAX_NUMBER_DIGITS digits: converting a longer one
    costs time (and Python refuses ints over 4,300 digits) for no value a spec can need."""
    digits = sum(c.isdigit() for c in number)
    if digits > limits.MAX_NUMBER_DIGITS:
        raise SpecError(
            f"a number of {digits} digits is too long (at most {limits.MAX_NUMBER_DIGITS})",
            loc=loc,
        )


def _scaled(
    number: str | int | float, unit: str, kind: str, unit_loc: SourceLoc | None, loc
) -> Fraction:
    units = KINDS[kind][0]
    if unit not in units:
        raise SpecError(_unit_message(unit, kind), loc=unit_loc, hint=_unit_hint(unit, kind))
    mantissa, exponent = _decimal(str(number), loc)
    # Bound the exponent before 10**exponent is built: `1e999999999GiB` as an exact fraction
    # would take minutes and gigabytes, yet is plainly out of range.
    magnitude = len(str(mantissa)) + exponent  # 10**(magnitude - 1) <= value < 10**magnitude
    if mantissa == 0 or abs(magnitude) > _MAX_MAGNITUDE:
        raise _out_of_range(number, unit, kind, loc)
    value = mantissa * Fraction(10) ** exponent * units[unit]
    lo, hi = RANGES[kind]
    if not lo <= value <= hi:
        raise _out_of_range(number, unit, kind, loc)
    return value


# Far beyond every range in any unit: a literal outside 10**±this is out of range.
_MAX_MAGNITUDE = 2 * limits.MAX_NUMBER_DIGITS


def _decimal(number: str, loc: SourceLoc | None) -> tuple[int, int]:
    """`1.5e3` -> (15, 2): the literal is mantissa * 10**exponent, exactly."""
    m = _DECIMAL.fullmatch(number)
    if m is None:
        raise SpecError(f"'{_shorten(number)}' is not a number", loc=loc)
    check_digits(number, loc)
    whole, fraction, exponent = m.group(1), m.group(2) or "", m.group(3) or "0"
    return int(whole + fraction), int(exponent) - len(fraction)


def _out_of_range(number: str | int | float, unit: str, kind: str, loc: SourceLoc | None):
    lo, hi = (_readable(bound, kind) for bound in RANGES[kind])
    what = KINDS[kind][1]
    return SpecError(
        f"{what} must be between {lo} and {hi}, not {_shorten(str(number))}{unit}", loc=loc
    )


def _readable(value: Fraction, kind: str) -> str:
    """A bound in the largest unit that keeps it at least 1: 2**60 -> '1073741824 GiB'."""
    units = KINDS[kind][0]
    fitting = [u for u in units if units[u] <= value] or [min(units, key=units.get)]
    unit = max(fitting, key=units.get)
    n = value / units[unit]
    return f"{n.numerator if n.denominator == 1 else f'{float(n):g}'} {unit}"


def _shorten(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


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
