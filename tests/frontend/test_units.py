"""Units: every unit the language knows, and the errors for the ones it does not."""

import pytest

from ckeir import units
from ckeir.errors import SourceLoc, SpecError


@pytest.mark.parametrize(
    "number, unit, expected",
    [
        ("7", "B", 7),
        ("1", "KB", 1000),
        ("2", "MB", 2_000_000),
        ("3", "GB", 3_000_000_000),
        ("1", "KiB", 1024),
        ("512", "KiB", 512 * 1024),
        ("1", "MiB", 1 << 20),
        ("24", "GiB", 24 << 30),
        ("1.5", "GiB", 3 << 29),
        ("2e3", "B", 2000),
    ],
)
def test_sizes_are_whole_bytes(number, unit, expected):
    value = units.to_bytes(number, unit)
    assert value == expected and isinstance(value, int)


@pytest.mark.parametrize(
    "number, unit, expected",
    [
        ("5", "B/s", 5.0),
        ("1", "KB/s", 1e3),
        ("1", "MB/s", 1e6),
        ("20", "GB/s", 2e10),
        ("100", "Mbit/s", 12.5e6),
        ("10", "Gbit/s", 1.25e9),
    ],
)
def test_rates_are_bytes_per_second(number, unit, expected):
    assert units.to_bytes_per_second(number, unit) == pytest.approx(expected)


@pytest.mark.parametrize(
    "number, unit, expected",
    [("3", "ns", 3e-9), ("50", "us", 5e-5), ("1.5", "ms", 1.5e-3), ("2", "s", 2.0)],
)
def test_times_are_seconds(number, unit, expected):
    assert units.to_seconds(number, unit) == pytest.approx(expected)


def test_parse_quantity_reads_a_whole_quantity():
    assert units.parse_quantity("24GiB", "size") == 24 << 30
    assert units.parse_quantity(" 10 Gbit/s ", "rate") == pytest.approx(1.25e9)
    assert units.parse_quantity("50us", "time") == pytest.approx(5e-5)


def test_unit_of_the_wrong_kind_says_which_kind_it_is():
    loc = SourceLoc("x.cke", 3, 14, "  dram_bw 20GiB")
    with pytest.raises(SpecError) as err:
        units.to_bytes_per_second("20", "GiB", loc)
    assert "expected a rate unit" in err.value.message
    assert "'GiB' is a size unit" in err.value.message
    assert err.value.loc == loc


def test_unknown_unit_lists_the_known_ones_and_hints_at_case():
    with pytest.raises(SpecError) as err:
        units.to_bytes("2", "GIB")
    assert "unknown unit 'GIB'" in err.value.message
    assert "KiB, MiB, GiB" in err.value.message
    assert err.value.hint == "units are case-sensitive: did you mean 'GiB'?"


def test_a_size_must_be_a_whole_number_of_bytes():
    with pytest.raises(SpecError, match="not a whole number of bytes"):
        units.to_bytes("1.5", "B")


def test_parse_quantity_rejects_text_without_a_unit():
    with pytest.raises(SpecError, match="write a number and a unit"):
        units.parse_quantity("24", "size")


def test_unit_kind():
    assert [units.unit_kind(u) for u in ("MiB", "Gbit/s", "us", "parsec")] == [
        "size",
        "rate",
        "time",
        None,
    ]


def test_formatting_for_reports():
    assert units.format_bytes(24 << 30) == "24.0 GiB"
    assert units.format_bytes(100) == "100 B"
    assert units.format_rate(2e10) == "20.0 GB/s"
    assert units.format_seconds(5e-5) == "50.0 us"
    assert units.format_seconds(2e-9) == "2.0 ns"


@pytest.mark.parametrize(
    "number, unit, message",
    [
        ("0", "GiB", "a size must be between 1 B and 1073741824 GiB, not 0GiB"),
        ("1e999999999", "GiB", "a size must be between 1 B and 1073741824 GiB, not 1e999999999GiB"),
        ("1e-999999999", "GiB", "a size must be between 1 B and 1073741824 GiB, not 1e-99999"),
        ("2", "GB/s", None),
        ("1e400", "Gbit/s", "a rate must be between 1 B/s and 1000000 GB/s, not 1e400Gbit/s"),
        ("0.5", "B/s", "a rate must be between 1 B/s and 1000000 GB/s, not 0.5B/s"),
        ("0", "us", "a time must be between 1 ns and 3600 s, not 0us"),
        ("3601", "s", "a time must be between 1 ns and 3600 s, not 3601s"),
        ("1", "ns", None),
        ("9" * 65, "B", "a number of 65 digits is too long (at most 64)"),
    ],
)
def test_quantities_are_bounded_before_they_are_built(number, unit, message):
    """Each kind has its range (ckeir/limits); a huge exponent is refused without computing
    10**exponent (`1e999999999GiB` used to hang)."""
    loc = SourceLoc("x.cke", 1, 5, "dram " + number + unit)
    convert = {"size": units.to_bytes, "rate": units.to_bytes_per_second, "time": units.to_seconds}
    if message is None:
        assert convert[units.unit_kind(unit)](number, unit, loc) > 0
        return
    with pytest.raises(SpecError) as err:
        convert[units.unit_kind(unit)](number, unit, loc)
    assert err.value.message.startswith(message) and err.value.loc == loc


def test_a_number_error_points_at_the_number_and_a_unit_error_at_the_unit():
    number_at, unit_at = SourceLoc("x.cke", 1, 6, "dram 0 GiB"), SourceLoc("x.cke", 1, 8, "")
    with pytest.raises(SpecError) as err:
        units.to_bytes("0", "GiB", unit_at, number_loc=number_at)
    assert err.value.loc == number_at
    with pytest.raises(SpecError) as err:
        units.to_bytes("1", "GIB", unit_at, number_loc=number_at)
    assert err.value.loc == unit_at
