"""Properties of the printer and parser over random IR: print → parse → print is the identity,
and text that is damaged either still parses (and then prints stably) or is an IRParseError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckeir.errors import IRParseError
from ckeir.ir import attributes as A
from ckeir.ir import parse_ir, print_ir
from ckeir.ir.core import Operation, module_op

from .strategies import attributes, float_attrs, modules, types

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def shape(op: Operation):
    """The structure of an op tree, without value identities: names, arities, block args."""
    return (
        op.name,
        len(op.operands),
        [r.type for r in op.results],
        [
            [([a.type for a in b.args], [shape(o) for o in b.ops]) for b in r.blocks]
            for r in op.regions
        ],
    )


def uses(root: Operation) -> list[tuple[int, int]]:
    """Each operand as (index of its defining op or block in a pre-order walk, result/arg index)."""
    owners: dict = {}
    for i, op in enumerate(root.walk()):
        owners[op] = i
        for r in op.regions:
            for j, b in enumerate(r.blocks):
                owners[b] = (i, j)
    out = []
    for op in root.walk():
        for v in op.operands:
            owner = v.op if hasattr(v, "op") else v.block
            out.append((owners[owner], v.index))
    return out


@FAST
@given(modules())
def test_print_parse_print_is_the_identity(module):
    text = print_ir(module)
    parsed = parse_ir(text)
    assert print_ir(parsed) == text
    assert shape(parsed) == shape(module)
    assert uses(parsed) == uses(module)


@FAST
@given(st.dictionaries(st.text(min_size=1, max_size=4), attributes(), min_size=1, max_size=4))
def test_attributes_survive_print_and_parse(attributes_):
    op = Operation("ckt.x", attributes=attributes_)
    text = print_ir(module_op([op]))
    back = parse_ir(text).regions[0].entry.ops[0].attributes
    assert {k: str(v) for k, v in back.items()} == {k: str(v) for k, v in attributes_.items()}


@FAST
@given(float_attrs())
def test_float_attributes_keep_their_bits(attr):
    op = parse_ir(f'"ckt.x"() {{a = {attr}}} : () -> ()').regions[0].entry.ops[0]
    back = op.attributes["a"]
    assert back.type == attr.type
    assert A.float_bits(back.value, back.type) == A.float_bits(attr.value, attr.type)


@FAST
@given(types)
def test_types_survive_print_and_parse(t):
    op = parse_ir(f'%0 = "ckt.x"() {{a = {t}}} : () -> ({t})').regions[0].entry.ops[0]
    assert op.attributes["a"] == A.TypeAttr(t)
    assert op.results[0].type == t


# --- damaged text --------------------------------------------------------------------------

PIECES = [
    '"',
    "%",
    "%0",
    "#1",
    ":",
    ",",
    "(",
    ")",
    "{",
    "}",
    "<",
    ">",
    "[",
    "]",
    "^bb1",
    "=",
    "x",
    "->",
    "0x",
    "1.5",
    "e",
    "-",
    "\\",
    "@",
    "!",
    "?",
    "//",
    "\n",
    " ",
    "i32",
    "array<",
]


@st.composite
def damaged(draw) -> str:
    text = print_ir(draw(modules(max_depth=2)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        piece = draw(st.sampled_from(PIECES) | st.text(max_size=3))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + piece + text[i:]
        elif kind == "replace":
            text = text[:i] + piece + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_damaged_text_parses_or_is_a_located_parse_error(text):
    try:
        module = parse_ir(text, filename="d.mlir")
    except IRParseError as err:
        assert err.loc is not None and err.loc.file == "d.mlir"
        assert 1 <= err.loc.line <= text.count("\n") + 1
        assert 1 <= err.loc.col
        err.format()  # never raises
        return
    again = print_ir(module)
    assert print_ir(parse_ir(again)) == again
