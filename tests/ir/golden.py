"""Small hand-built modules and the exact text `mlir-opt --mlir-print-op-generic` prints for
them (each text was checked against mlir-opt 22; test_mlir_opt.py keeps checking it).

Numbering rules they pin down: unique ids over the whole module; a region's own values are
numbered before the regions nested in it, and the nested regions of a region are visited
last-first (so the second function gets `%arg0`); entry-block arguments are `%argN`, other
block arguments and results `%N`; a k-result op is `%N:k`, its results `%N#i`.
"""

from __future__ import annotations

from ckeir.ir import attributes as A
from ckeir.ir import types as T
from ckeir.ir.core import Block, Builder, Operation, Region, module_op

q4_1 = T.DialectType("cke", "q4_1")


def design_example() -> Operation:
    """The example of design.md §2."""
    block = Block([T.TensorType((1,), T.i32), T.TensorType((576, 576), q4_1)])
    ids, w = block.args
    b = Builder(block)
    row = T.TensorType((1, 576), T.f32)
    x = b.value("cke.embed", [ids], row, table="token_embd")
    y = b.value("cke.matmul", [x, w], row, rank=0, tile=(64, 256))
    b.op("dist.send", [y], attributes={"bytes": 2304, "peer": 1})
    b.op("cke.return", [y])
    func = Operation(
        "cke.func",
        regions=[Region([block])],
        attributes={"sym_name": "decode", "phase": "decode", "rank": 0},
    )
    return module_op([func])


DESIGN_EXAMPLE = """\
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%arg0: tensor<1xi32>, %arg1: tensor<576x576x!cke.q4_1>):
    %0 = "cke.embed"(%arg0) {table = "token_embd"} : (tensor<1xi32>) -> tensor<1x576xf32>
    %1 = "cke.matmul"(%0, %arg1) {rank = 0 : i64, tile = array<i64: 64, 256>} : (tensor<1x576xf32>, tensor<576x576x!cke.q4_1>) -> tensor<1x576xf32>
    "dist.send"(%1) {bytes = 2304 : i64, peer = 1 : i64} : (tensor<1x576xf32>) -> ()
    "cke.return"(%1) : (tensor<1x576xf32>) -> ()
  }) {phase = "decode", rank = 0 : i64, sym_name = "decode"} : () -> ()
}) : () -> ()
"""


def nested_numbering() -> Operation:
    """Two functions with nested regions, a two-result op, a value from the module level."""
    top = module_op()
    b = Builder(top.regions[0].entry)
    outer = b.value("ckt.outer", [], T.i32)

    first = Block([T.i32])
    fb = Builder(first)
    pair = fb.op("ckt.pair", [first.args[0]], [T.f32, T.i64])
    inner = Block([T.f32])
    Builder(inner).value("ckt.use", [inner.args[0], pair.results[0], outer], T.f32)
    fb.op("ckt.inner", [pair.results[1]], regions=[Region([inner])])
    fb.op("ckt.ret", [pair.results[0]])
    b.op("ckt.f", attributes={"sym_name": "first"}, regions=[Region([first])])

    second = Block([T.i64])
    Builder(second).value("ckt.neg", [second.args[0]], T.i64)
    b.op("ckt.f", attributes={"sym_name": "second"}, regions=[Region([second])])
    return top


NESTED_NUMBERING = """\
"builtin.module"() ({
  %0 = "ckt.outer"() : () -> i32
  "ckt.f"() ({
  ^bb0(%arg1: i32):
    %2:2 = "ckt.pair"(%arg1) : (i32) -> (f32, i64)
    "ckt.inner"(%2#1) ({
    ^bb0(%arg2: f32):
      %3 = "ckt.use"(%arg2, %2#0, %0) : (f32, f32, i32) -> f32
    }) : (i64) -> ()
    "ckt.ret"(%2#0) : (f32) -> ()
  }) {sym_name = "first"} : () -> ()
  "ckt.f"() ({
  ^bb0(%arg0: i64):
    %1 = "ckt.neg"(%arg0) : (i64) -> i64
  }) {sym_name = "second"} : () -> ()
}) : () -> ()
"""


def blocks_and_regions() -> Operation:
    """Several regions per op, several blocks per region (non-entry arguments are `%N`),
    an empty region, an empty entry block, properties, unit and sorted attributes."""
    top = module_op()
    b = Builder(top.regions[0].entry)
    a = b.value("ckt.a", [], T.i32)

    entry = Block([T.i32])
    eb = Builder(entry)
    c = eb.value("ckt.b", [entry.args[0], a], T.i32)
    r2_entry = Block()
    Builder(r2_entry).value("ckt.c", [c], T.i64)
    Builder(r2_entry).op("ckt.y")
    r2_other = Block([T.f32])
    Builder(r2_other).value("ckt.d", [r2_other.args[0]], T.f32)
    eb.op("ckt.r2", regions=[Region([r2_entry]), Region([r2_other])])
    e = eb.op("ckt.e", [], [T.i32, T.i64])
    eb.op("ckt.u", [e.results[1], e.results[0]])
    second = Block([T.i32, T.i64])
    f = Builder(second).value("ckt.f", [second.args[0]], T.i32)
    third = Block()
    Builder(third).op("ckt.g", [f])
    other = Block()
    Builder(other).value("ckt.h", [], T.i32)
    b.op("ckt.r", [a], regions=[Region([entry, second, third]), Region([other])])

    b.value("ckt.i", [], T.i32)
    b.op("ckt.empty", regions=[Region(), Region([Block()])])
    b.insert(
        Operation(
            "ckt.props",
            properties={"zeta": 1, "alpha": A.UnitAttr(), "a b": "x"},
            attributes={"z": True, "m": A.UnitAttr(), "b": 2.5, "a": A.IntegerAttr(-3, T.i8)},
        )
    )
    return top


BLOCKS_AND_REGIONS = """\
"builtin.module"() ({
  %0 = "ckt.a"() : () -> i32
  "ckt.r"(%0) ({
  ^bb0(%arg0: i32):
    %3 = "ckt.b"(%arg0, %0) : (i32, i32) -> i32
    "ckt.r2"() ({
      %9 = "ckt.c"(%3) : (i32) -> i64
      "ckt.y"() : () -> ()
    }, {
    ^bb0(%arg1: f32):
      %8 = "ckt.d"(%arg1) : (f32) -> f32
    }) : () -> ()
    %4:2 = "ckt.e"() : () -> (i32, i64)
    "ckt.u"(%4#1, %4#0) : (i64, i32) -> ()
  ^bb1(%5: i32, %6: i64):  // no predecessors
    %7 = "ckt.f"(%5) : (i32) -> i32
  ^bb2:  // no predecessors
    "ckt.g"(%7) : (i32) -> ()
  }, {
    %2 = "ckt.h"() : () -> i32
  }) : (i32) -> ()
  %1 = "ckt.i"() : () -> i32
  "ckt.empty"() ({
  }, {
  ^bb0:
  }) : () -> ()
  "ckt.props"() <{"a b" = "x", alpha, zeta = 1 : i64}> {a = -3 : i8, b = 2.500000e+00 : f64, m, z = true} : () -> ()
}) : () -> ()
"""


def all_attribute_kinds() -> Operation:
    """One attribute of every kind, each printed as mlir-opt prints it."""
    attributes = {
        "int": A.IntegerAttr(7, T.i32),
        "index": A.IntegerAttr(-1, T.index),
        "i1": A.IntegerAttr(1, T.i1),
        "eps": 1e-5,
        "big": 1e5,
        "third": 1 / 3,
        "f32": A.FloatAttr(1e-5, T.f32),
        "inf": float("inf"),
        "integral": 2.0**53,
        "bool": False,
        "str": 'a "q" \\ é\n',
        "unit": A.UnitAttr(),
        "dense": (1, -2),
        "dense_empty": A.DenseArrayAttr((), T.i32),
        "array": [1, 2.5, "s", [], A.IntegerAttr(3, T.i8)],
        "dict": {"b": 1, "a": A.UnitAttr(), "not bare": "x"},
        "sym": A.SymbolRefAttr("main", ("inner", "a b")),
        "type": T.TensorType((None, 4), T.DialectType("cke", "q8_0")),
        "ftype": T.FunctionType([T.i32], [T.FunctionType([], [T.f32])]),
    }
    return module_op([Operation("ckt.attrs", attributes=attributes)])


ALL_ATTRIBUTE_KINDS = (
    '"builtin.module"() ({\n'
    '  "ckt.attrs"() {array = [1, 2.500000e+00, "s", [], 3 : i8], big = 1.000000e+05 : f64, '
    "bool = false, dense = array<i64: 1, -2>, dense_empty = array<i32>, "
    'dict = {a, b = 1 : i64, "not bare" = "x"}, eps = 1.000000e-05 : f64, '
    "f32 = 9.99999974E-6 : f32, ftype = (i32) -> (() -> f32), i1 = true, "
    "index = -1 : index, inf = 0x7FF0000000000000 : f64, int = 7 : i32, "
    'integral = 0x4340000000000000 : f64, str = "a \\22q\\22 \\\\ \\C3\\A9\\0A", '
    'sym = @main::@inner::@"a b", third = 0.33333333333333331 : f64, '
    "type = tensor<?x4x!cke.q8_0>, unit} : () -> ()\n"
    "}) : () -> ()\n"
)


def all_types() -> Operation:
    """A value of every type."""
    ts = [
        T.i1,
        T.i32,
        T.i64,
        T.index,
        T.f16,
        T.bf16,
        T.f32,
        T.f64,
        T.TensorType((2, None, 3), T.f32),
        T.TensorType((), T.f32),
        T.UnrankedTensorType(T.f32),
        T.MemRefType((2, 16, 8), T.f32),
        T.TensorType((4, 64), T.DialectType("cke", "q8_0")),
        T.FunctionType([T.i32, T.f32], []),
    ]
    return module_op([Operation("ckt.types", result_types=ts)])


ALL_TYPES = """\
"builtin.module"() ({
  %0:14 = "ckt.types"() : () -> (i1, i32, i64, index, f16, bf16, f32, f64, tensor<2x?x3xf32>, tensor<f32>, tensor<*xf32>, memref<2x16x8xf32>, tensor<4x64x!cke.q8_0>, (i32, f32) -> ())
}) : () -> ()
"""

GOLDEN = {
    "design_example": (design_example, DESIGN_EXAMPLE),
    "nested_numbering": (nested_numbering, NESTED_NUMBERING),
    "blocks_and_regions": (blocks_and_regions, BLOCKS_AND_REGIONS),
    "all_attribute_kinds": (all_attribute_kinds, ALL_ATTRIBUTE_KINDS),
    "all_types": (all_types, ALL_TYPES),
}
