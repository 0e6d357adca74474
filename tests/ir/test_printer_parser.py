"""The generic printer gives mlir-opt's exact text; the parser reads it back, and reports what
it cannot read as an `IRParseError` at the right line and column."""

from __future__ import annotations

import pytest

from ckeir.errors import IRParseError
from ckeir.ir import attributes as A
from ckeir.ir import parse_ir, print_ir
from ckeir.ir import types as T
from ckeir.ir.core import Block, Builder, Operation, Region, module_op

from .golden import GOLDEN


def ops_of(module: Operation) -> list[Operation]:
    return module.regions[0].entry.ops


# --- printer -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_printer_gives_mlir_text(name):
    build, text = GOLDEN[name]
    assert print_ir(build()) == text


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_parser_reads_back_what_the_printer_prints(name):
    build, text = GOLDEN[name]
    module = parse_ir(text)
    assert print_ir(module) == text
    assert [op.name for op in module.walk()] == [op.name for op in build().walk()]


def test_names_do_not_depend_on_the_names_in_the_input():
    text = (
        '%x = "ckt.a"() : () -> i32\n'
        '%y:2 = "ckt.b"(%x) : (i32) -> (i32, f32)\n'
        '"ckt.c"(%y#1, %x) : (f32, i32) -> ()\n'
    )
    assert print_ir(parse_ir(text)) == (
        '"builtin.module"() ({\n'
        '  %0 = "ckt.a"() : () -> i32\n'
        '  %1:2 = "ckt.b"(%0) : (i32) -> (i32, f32)\n'
        '  "ckt.c"(%1#1, %0) : (f32, i32) -> ()\n'
        "}) : () -> ()\n"
    )


def test_results_named_one_by_one_become_a_group():
    text = '%a, %b = "ckt.two"() : () -> (i32, i64)\n"ckt.use"(%b, %a) : (i64, i32) -> ()'
    assert '"ckt.use"(%0#1, %0#0)' in print_ir(parse_ir(text))


def test_region_numbering_is_unique_and_region_values_come_first():
    """An op's nested regions are numbered after all of the region the op is in."""
    top = module_op()
    b = Builder(top.regions[0].entry)
    inner = Block([T.i32])
    Builder(inner).value("ckt.in", [inner.args[0]], T.i32)
    b.value("ckt.before", [], T.i32)
    b.op("ckt.holder", regions=[Region([inner])])
    b.value("ckt.after", [], T.i32)
    text = print_ir(top)
    assert '%0 = "ckt.before"' in text
    assert '%1 = "ckt.after"' in text
    assert "^bb0(%arg0: i32):" in text
    assert '%2 = "ckt.in"(%arg0)' in text


def test_value_outside_the_printed_op_is_marked():
    outside = Operation("ckt.def", result_types=[T.i32])
    user = Operation("ckt.use", [outside.result])
    assert '"ckt.use"(<<UNKNOWN SSA VALUE>>)' in print_ir(module_op([user]))


def test_empty_module_prints_its_empty_block():
    """mlir-opt prints the label of an empty entry block; a module must have its one block."""
    text = '"builtin.module"() ({\n^bb0:\n}) : () -> ()\n'
    assert print_ir(module_op()) == text
    assert print_ir(parse_ir("")) == text
    assert len(parse_ir(text).regions[0].blocks) == 1


# --- parser: structure ---------------------------------------------------------------------


def test_top_level_ops_are_wrapped_in_a_module():
    module = parse_ir('"ckt.a"() : () -> ()\n"ckt.b"() : () -> ()\n')
    assert module.name == "builtin.module"
    assert [op.name for op in ops_of(module)] == ["ckt.a", "ckt.b"]
    assert parse_ir("").name == "builtin.module"


def test_comments_and_whitespace_are_ignored():
    text = '// a comment\n"ckt.a"() // trailing\n  {x = 1 : i64}   :\n () -> ()  // end\n'
    assert ops_of(parse_ir(text))[0].attr("x") == 1


def test_forward_reference_inside_a_region():
    text = """
    "ckt.f"() ({
      "ckt.use"(%1, %0) : (i64, i32) -> ()
      %0 = "ckt.a"() : () -> i32
      %1 = "ckt.b"(%0) : (i32) -> i64
    }) : () -> ()
    """
    f = ops_of(parse_ir(text))[0]
    use, a, b = f.regions[0].entry.ops
    assert use.operands == [b.result, a.result]
    assert (use, 0) in b.result.uses and (use, 1) in a.result.uses


def test_forward_reference_from_a_nested_region_to_the_enclosing_one():
    text = """
    "ckt.f"() ({
      "ckt.g"() ({
        "ckt.use"(%late) : (f32) -> ()
      }) : () -> ()
      %late = "ckt.a"() : () -> f32
    }) : () -> ()
    """
    g, a = ops_of(parse_ir(text))[0].regions[0].entry.ops
    assert g.regions[0].entry.ops[0].operands == [a.result]


def test_values_of_enclosing_regions_are_visible():
    text = """
    %top = "ckt.top"() : () -> i32
    "ckt.f"() ({
    ^bb0(%x: i64):
      "ckt.g"() ({
        "ckt.use"(%top, %x) : (i32, i64) -> ()
      }) : () -> ()
    }) : () -> ()
    """
    top, f = ops_of(parse_ir(text))
    use = f.regions[0].entry.ops[0].regions[0].entry.ops[0]
    assert use.operands == [top.result, f.regions[0].entry.args[0]]


def test_sibling_regions_reuse_names():
    text = """
    "ckt.two"() ({
    ^bb0(%arg0: i32):
      %0 = "ckt.a"(%arg0) : (i32) -> i32
    }, {
    ^bb0(%arg0: f32):
      %0 = "ckt.b"(%arg0) : (f32) -> f32
    }) : () -> ()
    """
    r1, r2 = ops_of(parse_ir(text))[0].regions
    assert r1.entry.ops[0].operands == [r1.entry.args[0]]
    assert r2.entry.ops[0].operands == [r2.entry.args[0]]
    assert r2.entry.ops[0].result.type == T.f32


def test_values_of_other_blocks_in_the_region():
    text = """
    "ckt.f"() ({
      "ckt.use"(%b) : (i8) -> ()
    ^bb1(%b: i8):
      %c = "ckt.c"(%b) : (i8) -> i8
    }) : () -> ()
    """
    region = ops_of(parse_ir(text))[0].regions[0]
    assert len(region.blocks) == 2
    assert region.blocks[0].ops[0].operands == [region.blocks[1].args[0]]


def test_empty_regions_and_empty_blocks():
    text = '"ckt.x"() ({\n}, {\n^bb0:\n}, {\n^bb0(%a: i32):\n}) : () -> ()'
    r0, r1, r2 = ops_of(parse_ir(text))[0].regions
    assert r0.blocks == []
    assert len(r1.blocks) == 1 and r1.entry.ops == [] and r1.entry.args == []
    assert [a.type for a in r2.entry.args] == [T.i32]


def test_block_label_with_an_empty_argument_list():
    region = ops_of(parse_ir('"ckt.x"() ({\n^bb0():\n  "ckt.y"() : () -> ()\n}) : () -> ()'))[
        0
    ].regions[0]
    assert region.entry.args == [] and [op.name for op in region.entry.ops] == ["ckt.y"]


def test_properties_and_attributes_are_kept_apart():
    text = '"ckt.x"() <{p = 1 : i32, u}> {a = "s"} : () -> ()'
    op = ops_of(parse_ir(text))[0]
    assert op.properties == {"p": A.IntegerAttr(1, T.i32), "u": A.UnitAttr()}
    assert op.attributes == {"a": A.StringAttr("s")}


def test_op_location_is_the_op_name():
    op = ops_of(parse_ir('\n  %0 = "ckt.a"() : () -> i32', filename="m.mlir"))[0]
    assert (op.loc.file, op.loc.line, op.loc.col) == ("m.mlir", 2, 8)


# --- parser: attributes --------------------------------------------------------------------


def attr_of(text: str) -> A.Attribute:
    return ops_of(parse_ir(f'"ckt.x"() {{a = {text}}} : () -> ()'))[0].attributes["a"]


@pytest.mark.parametrize(
    ("text", "attr"),
    [
        ("3 : i64", A.IntegerAttr(3)),
        ("3", A.IntegerAttr(3)),
        ("-7 : i8", A.IntegerAttr(-7, T.i8)),
        ("2 : index", A.IntegerAttr(2, T.index)),
        ("0x10 : i32", A.IntegerAttr(16, T.i32)),
        ("true", A.BoolAttr(True)),
        ("false", A.BoolAttr(False)),
        ("unit", A.UnitAttr()),
        ("1.000000e-05 : f64", A.FloatAttr(1e-5)),
        ("1.000000e-05", A.FloatAttr(1e-5)),
        ("1.000000e+05 : f64", A.FloatAttr(1e5)),
        ("1e5", A.FloatAttr(1e5)),
        ("0.33333333333333331 : f64", A.FloatAttr(1 / 3)),
        ("0.30000000000000004 : f64", A.FloatAttr(0.1 + 0.2)),
        ("2 : f64", A.FloatAttr(2.0)),
        ("0x3FF0000000000000 : f64", A.FloatAttr(1.0)),
        ("0x3F800000 : f32", A.FloatAttr(1.0, T.f32)),
        ("9.99999974E-6 : f32", A.FloatAttr(9.999999747378752e-06, T.f32)),
        ("1.000000e-05 : f32", A.FloatAttr(9.999999747378752e-06, T.f32)),  # rounded to f32
        ("-0.5 : f16", A.FloatAttr(-0.5, T.f16)),
        ('"a\\22b\\\\c\\0A\\n\\t\\C3\\A9"', A.StringAttr('a"b\\c\n\n\té')),
        ('"say \\"hi\\""', A.StringAttr('say "hi"')),
        ("array<i64: 64, 256>", A.DenseArrayAttr((64, 256))),
        ("array<i32: -1>", A.DenseArrayAttr((-1,), T.i32)),
        ("array<i64>", A.DenseArrayAttr(())),
        ("[]", A.ArrayAttr(())),
        (
            "[1, [2 : i8], unit]",
            A.ArrayAttr([A.IntegerAttr(1), A.ArrayAttr([A.IntegerAttr(2, T.i8)]), A.UnitAttr()]),
        ),
        ("{}", A.DictAttr({})),
        (
            '{b = 1 : i64, a, "c d" = "e"}',
            A.DictAttr({"a": A.UnitAttr(), "b": A.IntegerAttr(1), "c d": A.StringAttr("e")}),
        ),
        ("@main", A.SymbolRefAttr("main")),
        ('@m::@"a b"::@c', A.SymbolRefAttr("m", ("a b", "c"))),
        ("tensor<?x4xf32>", A.TypeAttr(T.TensorType((None, 4), T.f32))),
        ("!cke.q4_0", A.TypeAttr(T.DialectType("cke", "q4_0"))),
        ("(i32) -> ()", A.TypeAttr(T.FunctionType([T.i32], []))),
        ("index", A.TypeAttr(T.index)),
    ],
)
def test_attribute_kinds(text, attr):
    assert attr_of(text) == attr


@pytest.mark.parametrize(
    "value",
    [1e-5, 1e5, 1 / 3, 0.1, 2.5e-300, 1.7976931348623157e308, 5e-324, -123456.78901234567, 1e22],
)
def test_f64_values_survive_print_and_parse(value):
    assert attr_of(str(A.FloatAttr(value))).value == value


# --- parser: errors ------------------------------------------------------------------------


def parse_error(text: str) -> IRParseError:
    with pytest.raises(IRParseError) as info:
        parse_ir(text, filename="t.mlir")
    return info.value


def test_error_location_and_caret():
    text = '"builtin.module"() ({\n  %0 = "ckt.a"() : () -> i32\n  "ckt.b"(%0 : (i32) -> ()\n}) : () -> ()\n'
    err = parse_error(text)
    assert (err.loc.file, err.loc.line, err.loc.col) == ("t.mlir", 3, 14)
    lines = err.format().splitlines()
    assert lines[0].startswith("t.mlir:3:14: error: expected ')'")
    assert lines[1] == '      "ckt.b"(%0 : (i32) -> ()'
    assert lines[2] == "    " + " " * 13 + "^"


@pytest.mark.parametrize(
    ("text", "message", "line", "col"),
    [
        ('"ckt.a"(%7) : (i32) -> ()', "undefined value %7", 1, 9),
        ('%0 = "ckt.a"() : () -> i32\n%0 = "ckt.b"() : () -> i32', "defined twice", 2, 1),
        ('"ckt.f"() ({\n^bb0(%a: i32, %a: i32):\n}) : () -> ()', "defined twice", 2, 15),
        (
            '%0 = "ckt.a"() : () -> i32\n"ckt.b"(%0) : (i64) -> ()',
            "has type i32 but is used as i64",
            2,
            9,
        ),
        (
            '"ckt.b"(%0) : (i64) -> ()\n%0 = "ckt.a"() : () -> i32',
            "has type i32 but is used as i64",
            1,
            9,
        ),
        (
            '%0 = "ckt.a"() : () -> i32\n"ckt.b"(%0, %0) : (i32) -> ()',
            "2 operands but the type lists 1",
            2,
            19,
        ),
        ('%0 = "ckt.a"() : () -> (i32, i32)', "1 result names but the type lists 2", 1, 1),
        ('%0:3 = "ckt.a"() : () -> (i32, i32)', "3 result names but the type lists 2", 1, 1),
        (
            '%0:2 = "ckt.a"() : () -> (i32, i32)\n"ckt.b"(%0) : (i32) -> ()',
            "undefined value %0",
            2,
            9,
        ),
        ('"ckt.a"() : i32', "function type", 1, 13),
        ('"ckt.a"()', "':' and the op's function type", 1, 10),
        ("ckt.a() : () -> ()", "operation name in quotes", 1, 1),
        ('"ckt.a"() {x = } : () -> ()', "attribute value", 1, 16),
        ('"ckt.a"() {x = 1, x = 2} : () -> ()', "appears twice", 1, 19),
        ('"ckt.a"() {x = "open} : () -> ()', "string literal", 1, 16),
        ('"ckt.a"() {x = "\\q"} : () -> ()', "string literal", 1, 16),
        ('"ckt.a"() {x = array<f32: 1.0>} : () -> ()', "integer", 1, 22),
        ('"ckt.a"() {x = 256 : i8} : () -> ()', "integer literal out of range for i8", 1, 16),
        ('"ckt.a"() {x = -129 : i8} : () -> ()', "integer literal out of range for i8", 1, 16),
        ('"ckt.a"() {x = 18446744073709551616} : () -> ()', "out of range for i64", 1, 16),
        ('"ckt.a"() {x = ' + "9" * 4000 + "} : () -> ()", "out of range for i64", 1, 16),
        ('"ckt.a"() {x = array<i8: 1, 300>} : () -> ()', "out of range for i8", 1, 29),
        ('%0 = "ckt.a"() : () -> i99999999999', "is not i1 to i1024", 1, 24),
        ('%0 = "ckt.a"() : () -> i0', "is not i1 to i1024", 1, 24),
        ('%0 = "ckt.a"() : () -> tensor<99999999999999999999x4xf32>', "dimension", 1, 31),
        ('"ckt.a"() {x = 1.5 : i32} : () -> ()', "float literal cannot have type i32", 1, 16),
        ('"ckt.a"() {x = 1 : tensor<2xf32>} : () -> ()', "integer literal cannot have type", 1, 16),
        ('"ckt.a"() {x = 1.0e39 : f32} : () -> ()', "out of range for f32", 1, 16),
        ('"ckt.a"() {x = 0x1FFFFFFFF : f32} : () -> ()', "out of range for f32", 1, 16),
        ('"ckt.a"() {x = 0x10000000000000000 : f64} : () -> ()', "out of range for f64", 1, 16),
        ('%0 = "ckt.a"() : () -> tensor<4xf33>', "expected a type", 1, 33),
        ('"ckt.f"() ({\n  "ckt.a"() : () -> ()', "operation name", 2, 23),
        ('"ckt.f"() ({\n^bb0(%a i32):\n}) : () -> ()', "expected ':'", 2, 9),
    ],
)
def test_parse_errors(text, message, line, col):
    err = parse_error(text)
    assert message in err.message
    assert (err.loc.line, err.loc.col) == (line, col), err.format()
    caret = err.format().splitlines()[2]
    assert caret == "    " + " " * (col - 1) + "^"


def test_type_mismatch_between_two_forward_uses_in_different_regions():
    text = """
    "ckt.use"(%v) : (i32) -> ()
    "ckt.f"() ({
      "ckt.use"(%v) : (i64) -> ()
    }) : () -> ()
    %v = "ckt.def"() : () -> i32
    """
    err = parse_error(text)
    assert "%v is used as i32 and as i64" in err.message
    assert err.loc.line == 4


def test_value_of_a_sibling_region_is_not_visible():
    text = '"ckt.f"() ({\n  %0 = "ckt.a"() : () -> i32\n}, {\n  "ckt.b"(%0) : (i32) -> ()\n}) : () -> ()'
    err = parse_error(text)
    assert "undefined value %0" in err.message and err.loc.line == 4


def test_value_of_a_nested_region_is_not_visible_outside():
    text = '"ckt.f"() ({\n  %0 = "ckt.a"() : () -> i32\n}) : () -> ()\n"ckt.b"(%0) : (i32) -> ()'
    assert "undefined value %0" in parse_error(text).message


@pytest.mark.parametrize(
    "text",
    [
        '"',
        "%",
        "%0 =",
        '"ckt.a"(',
        '"ckt.a"() ({',
        '"ckt.a"() <{',
        '"ckt.a"() {a = [1, 2} : () -> ()',
        '"ckt.a"() {a = {b = 1} : () -> ()',
        '"ckt.a"() {a = @} : () -> ()',
        '"ckt.a"() {a = array<i64: 1,>} : () -> ()',
        '"ckt.a"() {a = 0x} : () -> ()',
        '"ckt.a"() : (tensor<) -> ()',
        '"ckt.a"() : () -> (i32',
        '"ckt.a"() : () ->',
        '%0#1 = "ckt.a"() : () -> i32',
        "^bb0:",
        '"ckt.a"() ({ ^bb0(%x: i32) }) : () -> ()',
        '"ckt.a"() {a = ' + "[" * 5000 + "]" * 5000 + "} : () -> ()",
    ],
)
def test_malformed_text_is_always_a_parse_error(text):
    parse_error(text)
