"""Hypothesis strategies for random IR: types, attributes of every kind, and whole modules of
unregistered ops with nested regions, several blocks, block arguments, multi-result ops and
references to values defined later, in other blocks or in enclosing regions.

Everything generated is also valid for upstream MLIR (`mlir-opt --allow-unregistered-dialect`)
once `rewire` is off:
no empty attribute names or symbols, memref elements are builtin scalars, a block may be empty
only when it is the only one of its region, dense arrays are not of i1.
"""

from __future__ import annotations

import functools

from hypothesis import strategies as st

from ckeir.ir import attributes as A
from ckeir.ir import types as T
from ckeir.ir.core import Block, Operation, Region, Value, module_op

INT_TYPES = [T.i1, T.i8, T.IntegerType(16), T.i32, T.i64, T.IntegerType(17)]
FLOAT_TYPES = [T.f16, T.bf16, T.f32, T.f64]
SCALARS = [*INT_TYPES, T.index, *FLOAT_TYPES]
DIALECT_TYPES = [T.DialectType("cke", q) for q in ("q8_0", "q4_0", "q4_1")] + [
    T.DialectType("ckt", "opaque")
]
OP_NAMES = ["ckt.a", "ckt.b", "ckt.op", "zz.x_y", "ckt.long.name"]

scalar_types = st.sampled_from(SCALARS)
dims = st.lists(st.one_of(st.none(), st.integers(0, 64)), max_size=3)
tensor_types = st.builds(T.TensorType, dims, st.sampled_from(SCALARS + DIALECT_TYPES))
value_types = st.one_of(
    scalar_types,
    st.sampled_from(DIALECT_TYPES),
    tensor_types,
    st.builds(T.UnrankedTensorType, st.sampled_from(SCALARS + DIALECT_TYPES)),
    st.builds(T.MemRefType, dims, scalar_types),
)
function_types = st.builds(
    T.FunctionType, st.lists(value_types, max_size=3), st.lists(value_types, max_size=3)
)
types = st.one_of(value_types, function_types)


def _signed_range(width: int) -> st.SearchStrategy[int]:
    return st.integers(-(1 << (width - 1)), (1 << (width - 1)) - 1)


@st.composite
def integer_attrs(draw) -> A.IntegerAttr:
    t = draw(st.sampled_from([*INT_TYPES, T.index]))
    width = 64 if t == T.index else t.width
    value = draw(st.integers(0, 1) if width == 1 else _signed_range(width))
    return A.IntegerAttr(value, t)


def float_attrs(float_types=tuple(FLOAT_TYPES)) -> st.SearchStrategy[A.FloatAttr]:
    """Floats of each type, every value the type holds (NaN, infinities, subnormals, -0.0)."""

    def of(t: T.FloatType):
        bits = st.integers(0, (1 << t.width) - 1).map(lambda b: A.float_from_bits(b, t))
        nice = st.sampled_from([1e-5, 1e5, 0.1, 0.5, 1.0, -2.0, 10000.0, 1 / 3, 1e-7, 1e17])
        values = st.one_of(bits, nice, st.floats(width=64 if t == T.f64 else 32))
        return (
            values.map(lambda v: _rounded(v, t))
            .filter(lambda v: v is not None)
            .map(lambda v: A.FloatAttr(v, t))
        )

    return st.one_of([of(t) for t in float_types])


def _rounded(v: float, t: T.FloatType) -> float | None:
    try:
        return A.float_from_bits(A.float_bits(v, t), t)
    except OverflowError:
        return None


texts = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=6).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(['"', "\\", "a\nb", "\t", "é", "\\22"]),
)
bare_names = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from("abcxyz_ABZ"),
    st.text(alphabet="abcdz09_$.", max_size=5),
)
names = st.one_of(bare_names, texts.filter(bool))


@st.composite
def dense_arrays(draw) -> A.DenseArrayAttr:
    t = draw(st.sampled_from([T.i8, T.IntegerType(16), T.i32, T.i64]))
    return A.DenseArrayAttr(draw(st.lists(_signed_range(t.width), max_size=5)), t)


@functools.cache
def attributes(float_types: tuple[T.FloatType, ...] = tuple(FLOAT_TYPES)) -> st.SearchStrategy:
    leaves = st.one_of(
        integer_attrs(),
        float_attrs(float_types),
        st.builds(A.BoolAttr, st.booleans()),
        st.builds(A.StringAttr, texts),
        st.just(A.UnitAttr()),
        dense_arrays(),
        st.builds(A.SymbolRefAttr, names, st.lists(names, max_size=2).map(tuple)),
        st.builds(A.TypeAttr, types),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(A.ArrayAttr, st.lists(inner, max_size=4)),
            st.builds(A.DictAttr, st.dictionaries(names, inner, max_size=4)),
        ),
        max_leaves=4,
    )


@functools.cache
def _attribute_dicts(float_types) -> st.SearchStrategy:
    return st.dictionaries(names, attributes(float_types), max_size=2)


@st.composite
def modules(draw, float_types=tuple(FLOAT_TYPES), max_depth: int = 2, rewire: bool = True):
    """A `builtin.module` of random unregistered ops (see the module docstring).  Without
    `rewire`, every operand is defined before its use (above it in the block, or before the op
    that encloses it): MLIR checks that dominance in the regions of unregistered ops."""
    attrs_of = _attribute_dicts(float_types)

    def op(visible: list[Value], depth: int) -> Operation:
        operands = draw(st.lists(st.sampled_from(visible), max_size=3)) if visible else []
        regions = []
        if depth < max_depth:
            regions = [region(visible, depth + 1) for _ in range(draw(st.integers(0, 2)))]
        return Operation(
            draw(st.sampled_from(OP_NAMES)),
            operands,
            draw(st.lists(value_types, max_size=3)),
            draw(attrs_of),
            regions,
            draw(st.one_of(st.just({}), attrs_of)),
        )

    def block(visible: list[Value], depth: int, may_be_empty: bool) -> Block:
        b = Block(draw(st.lists(value_types, max_size=2)))
        seen = visible + b.args
        for _ in range(draw(st.integers(0 if may_be_empty else 1, 3))):
            o = b.append(op(seen, depth))
            seen = seen + o.results
        return b

    def region(visible: list[Value], depth: int) -> Region:
        n = draw(st.integers(0, 2))
        return Region([block(visible, depth, may_be_empty=n == 1) for _ in range(n)])

    top = module_op()
    body = top.regions[0].entry
    seen: list[Value] = []
    for _ in range(draw(st.integers(0, 4))):
        o = body.append(op(seen, 1))
        seen = seen + o.results
    if rewire and draw(st.booleans()):
        _rewire(draw, top)
    return top


def _rewire(draw, root: Operation) -> None:
    """Point some operands at values the text names later: further down the block, in a later
    block of the region, in the enclosing regions, or the op's own results."""

    def region_values(r: Region) -> list[Value]:
        return [v for b in r.blocks for v in [*b.args, *(x for o in b.ops for x in o.results)]]

    def visit(op: Operation, pool: list[Value]) -> None:
        for i in range(len(op.operands)):
            if pool and draw(st.integers(0, 3)) == 0:
                op.set_operand(i, draw(st.sampled_from(pool)))
        for r in op.regions:
            inner = pool + region_values(r)
            for b in r.blocks:
                for o in b.ops:
                    visit(o, inner)

    visit(root, [])
