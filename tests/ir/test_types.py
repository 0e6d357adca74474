"""Types and attributes: their MLIR text, their helpers, and that the parser reads each back."""

from __future__ import annotations

import math

import pytest

from ckeir.errors import IRParseError
from ckeir.ir import attributes as A
from ckeir.ir import parse_ir
from ckeir.ir import types as T

q8_0, q4_1 = T.DialectType("cke", "q8_0"), T.DialectType("cke", "q4_1")

TYPE_TEXT = [
    (T.i1, "i1"),
    (T.i32, "i32"),
    (T.i64, "i64"),
    (T.index, "index"),
    (T.f16, "f16"),
    (T.bf16, "bf16"),
    (T.f32, "f32"),
    (T.f64, "f64"),
    (T.TensorType((4, 576), T.f32), "tensor<4x576xf32>"),
    (T.TensorType((None, 576), T.f32), "tensor<?x576xf32>"),
    (T.TensorType((None, None), T.i32), "tensor<?x?xi32>"),
    (T.TensorType((), T.f32), "tensor<f32>"),
    (T.TensorType((0,), T.f32), "tensor<0xf32>"),
    (T.UnrankedTensorType(T.f32), "tensor<*xf32>"),
    (T.MemRefType((2, 16, 8), T.f32), "memref<2x16x8xf32>"),
    (T.MemRefType((None, 8), T.i64), "memref<?x8xi64>"),
    (q8_0, "!cke.q8_0"),
    (T.TensorType((576, 576), q4_1), "tensor<576x576x!cke.q4_1>"),
    (T.FunctionType([], []), "() -> ()"),
    (T.FunctionType([T.i32], [T.f32]), "(i32) -> f32"),
    (T.FunctionType([T.i32, T.i64], [T.f32, T.f32]), "(i32, i64) -> (f32, f32)"),
    (T.FunctionType([], [T.FunctionType([T.i1], [])]), "() -> ((i1) -> ())"),
]


@pytest.mark.parametrize(("t", "text"), TYPE_TEXT, ids=[text for _, text in TYPE_TEXT])
def test_type_text_and_parse_back(t, text):
    assert str(t) == text
    op = parse_ir(f'"ckt.x"() {{t = {text}}} : () -> ()').regions[0].entry.ops[0]
    assert op.attributes["t"] == A.TypeAttr(t)


def test_function_type_with_single_result_in_parens_parses_to_the_same_type():
    op = parse_ir('"ckt.x"() {t = (i32) -> (f32)} : () -> ()').regions[0].entry.ops[0]
    assert op.attr("t") == T.FunctionType([T.i32], [T.f32])


def test_shaped_type_helpers():
    t = T.TensorType((None, 64), T.f32)
    assert t.rank == 2 and not t.static
    assert t.with_shape((3, 64)) == T.TensorType((3, 64), T.f32)
    assert t.with_shape((3, 64)).static
    assert t.with_element(q8_0) == T.TensorType((None, 64), q8_0)
    assert T.TensorType([1, 2], T.f32) == T.TensorType((1, 2), T.f32)  # lists become tuples
    assert T.TensorType((2,), T.f32) != T.MemRefType((2,), T.f32)


def test_quant_type_and_element_format_are_inverse():
    for name in ("f32", "f16", "q8_0", "q4_0", "q4_1"):
        assert T.element_format(T.quant_type(name)).name == name
    assert T.quant_type("q4_1") == q4_1
    with pytest.raises(ValueError):
        T.element_format(T.f64)


@pytest.mark.parametrize(
    ("t", "dyn", "size"),
    [
        (T.TensorType((4, 576), T.f32), None, 4 * 576 * 4),
        (T.TensorType((576, 576), q8_0), None, 576 * 18 * 34),
        (T.TensorType((576, 64), q4_1), None, 576 * 2 * 20),
        (T.TensorType((None, 8), T.f32), 5, 5 * 8 * 4),
        (T.TensorType((8,), T.f16), None, 16),
        (T.TensorType((), T.f32), None, 4),
        (T.TensorType((3,), T.i32), None, 12),
        (T.i64, None, 8),
    ],
)
def test_nbytes(t, dyn, size):
    assert T.nbytes(t, dyn=dyn) == size


def test_nbytes_needs_a_bound_for_dynamic_dims_and_whole_blocks():
    with pytest.raises(ValueError, match="dynamic"):
        T.nbytes(T.TensorType((None, 8), T.f32))
    with pytest.raises(ValueError, match="multiple of 32"):
        T.nbytes(T.TensorType((2, 48), q8_0))


ATTR_TEXT = [
    (A.IntegerAttr(7), "7 : i64"),
    (A.IntegerAttr(-3, T.i8), "-3 : i8"),
    (A.IntegerAttr(5, T.index), "5 : index"),
    (A.IntegerAttr(1, T.i1), "true"),  # MLIR's booleans are i1 integers
    (A.IntegerAttr(0, T.i1), "false"),
    (A.BoolAttr(True), "true"),
    (A.FloatAttr(1e-5), "1.000000e-05 : f64"),
    (A.FloatAttr(0.5, T.f32), "5.000000e-01 : f32"),
    (A.StringAttr("token_embd"), '"token_embd"'),
    (A.StringAttr('q"\\\n\té'), '"q\\22\\\\\\0A\\09\\C3\\A9"'),
    (A.StringAttr(""), '""'),
    (A.UnitAttr(), "unit"),
    (A.DenseArrayAttr((64, 256)), "array<i64: 64, 256>"),
    (A.DenseArrayAttr((-1, 2), T.i32), "array<i32: -1, 2>"),
    (A.DenseArrayAttr(()), "array<i64>"),
    (A.ArrayAttr(()), "[]"),
    (A.ArrayAttr((A.IntegerAttr(1), A.FloatAttr(2.0))), "[1, 2.000000e+00]"),
    (
        A.ArrayAttr((A.IntegerAttr(1, T.i32), A.FloatAttr(2.0, T.f32))),
        "[1 : i32, 2.000000e+00 : f32]",
    ),
    (A.ArrayAttr((A.FloatAttr(math.inf),)), "[0x7FF0000000000000 : f64]"),
    (A.ArrayAttr((A.UnitAttr(), A.DictAttr({}))), "[unit, {}]"),
    (A.DictAttr({"b": A.IntegerAttr(1), "a": A.UnitAttr()}), "{a, b = 1 : i64}"),
    (A.DictAttr({"x y": A.StringAttr("z")}), '{"x y" = "z"}'),
    (A.SymbolRefAttr("decode"), "@decode"),
    (A.SymbolRefAttr("m", ("f", "g h")), '@m::@f::@"g h"'),
    (A.TypeAttr(T.TensorType((2,), q8_0)), "tensor<2x!cke.q8_0>"),
]


@pytest.mark.parametrize(("attr", "text"), ATTR_TEXT, ids=[text for _, text in ATTR_TEXT])
def test_attribute_text_and_parse_back(attr, text):
    assert str(attr) == text
    op = parse_ir(f'"ckt.x"() {{a = {text}}} : () -> ()').regions[0].entry.ops[0]
    assert str(op.attributes["a"]) == text


@pytest.mark.parametrize(
    ("value", "t", "text"),
    [
        (1e-5, T.f64, "1.000000e-05"),
        (1e5, T.f64, "1.000000e+05"),
        (10000.0, T.f64, "1.000000e+04"),
        (0.0, T.f64, "0.000000e+00"),
        (-0.0, T.f64, "-0.000000e+00"),
        (1.5, T.f64, "1.500000e+00"),
        (1 / 3, T.f64, "0.33333333333333331"),  # 17 significant digits
        (0.1 + 0.2, T.f64, "0.30000000000000004"),
        (123456.789, T.f64, "123456.789"),
        (1e-7 + 1e-23, T.f64, "1.0000000000000001E-7"),
        (1.234567, T.f64, "1.234567"),  # 7 digits: the `%.6e` form has only 6
        (1e23, T.f64, "9.9999999999999991E+22"),
        (1.2345678901234568e17, T.f64, "1.2345678901234568E+17"),
        (5e-324, T.f64, "4.940660e-324"),  # APFloat truncates before it rounds
        (1000000000000000.2, T.f64, "1000000000000000.3"),  # ... and rounds half up
        (2.0**53, T.f64, "0x4340000000000000"),  # integral, too long for the plain form
        (math.inf, T.f64, "0x7FF0000000000000"),
        (-math.inf, T.f64, "0xFFF0000000000000"),
        (math.nan, T.f64, "0x7FF8000000000000"),
        (0.5, T.f32, "5.000000e-01"),
        (1e-5, T.f32, "9.99999974E-6"),
        (12345678.0, T.f32, "0x4B3C614E"),
        (0.1, T.f16, "9.997550e-02"),
        (65504.0, T.f16, "6.550400e+04"),
        (1.0, T.bf16, "1.000000e+00"),
    ],
)
def test_format_float_matches_mlir(value, t, text):
    """Each expected text is what mlir-opt 22 prints for the value's bit pattern."""
    assert A.format_float(value, t) == text


@pytest.mark.parametrize(
    ("t", "largest", "infinity"),
    [
        (T.f16, 0x7BFF, 0x7C00),
        (T.bf16, 0x7F7F, 0x7F80),
        (T.f32, 0x7F7FFFFF, 0x7F800000),
        (T.f64, 0x7FEFFFFFFFFFFFFF, 0x7FF0000000000000),
    ],
)
def test_float_bits_round_trip(t, largest, infinity):
    for bits in (0, 1, 0x3C, 1 << (t.width - 1), largest, infinity, largest | 1 << (t.width - 1)):
        assert A.float_bits(A.float_from_bits(bits, t), t) == bits
    if t != T.f64:  # a finite value beyond the type's range does not fit
        with pytest.raises(OverflowError):
            A.float_bits(A.float_from_bits(largest, t) * 2, t)


def test_f64_nan_payloads_survive():
    text = '"ckt.x"() {a = 0x7FF8000000000001 : f64, b = 0xFFF0000000000001 : f64} : () -> ()'
    op = parse_ir(text).regions[0].entry.ops[0]
    assert [str(a) for a in op.attributes.values()] == [
        "0x7FF8000000000001 : f64",
        "0xFFF0000000000001 : f64",
    ]


def test_to_attr():
    assert A.to_attr(True) == A.BoolAttr(True)
    assert A.to_attr(3) == A.IntegerAttr(3, T.i64)
    assert A.to_attr(0.5) == A.FloatAttr(0.5, T.f64)
    assert A.to_attr("s") == A.StringAttr("s")
    assert A.to_attr((1, 2)) == A.DenseArrayAttr((1, 2), T.i64)
    assert A.to_attr([1, "a"]) == A.ArrayAttr((A.IntegerAttr(1), A.StringAttr("a")))
    assert A.to_attr({"k": 1}) == A.DictAttr({"k": A.IntegerAttr(1)})
    assert A.to_attr(T.f32) == A.TypeAttr(T.f32)
    assert A.to_attr({"k": [1]}).value == {"k": (1,)}
    with pytest.raises(TypeError):
        A.to_attr(object())


def test_escape_string_bytes_that_are_not_utf8_survive():
    """A string holding bytes that are not UTF-8 (`"\\FF"`) prints back as it was read."""
    text = '"ckt.x"() {s = "\\FF\\C3"} : () -> ()\n'
    op = parse_ir(text).regions[0].entry.ops[0]
    assert str(op.attributes["s"]) == '"\\FF\\C3"'


@pytest.mark.parametrize(
    "text",
    ["tensor<4xf33>", "tensor<4x576>", "tensor<4xf32", "!cke", "memref<*xf32>", "q8_0"],
)
def test_bad_types_are_parse_errors(text):
    with pytest.raises(IRParseError):
        parse_ir(f'%0 = "ckt.x"() : () -> {text}')
