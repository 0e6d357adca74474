"""The verifier: every registered op's declaration is enforced, the shape rules of the cke
dialect fire, SSA values are defined before use, and unknown ops are rejected.  Errors are
`VerifyError`s located at the op when it came from text."""

from __future__ import annotations

import pytest

from ckeir.dialects import REGISTRY
from ckeir.errors import VerifyError
from ckeir.ir import attributes as A
from ckeir.ir import parse_ir, verify
from ckeir.ir import types as T
from ckeir.ir.core import Block, Operation, Region, module_op
from ckeir.ir.opdef import ATTR_KINDS, attr_spec

# One valid instance of every registered op: (block argument types, the op's text).
VALID = {
    "cke.func": (
        [],
        '"cke.func"() ({\n^bb0(%ids: tensor<1xi32>, %pos: i64, %k: memref<1x8x4xf32>, '
        '%v: memref<1x8x4xf32>):\n  "cke.return"(%ids) : (tensor<1xi32>) -> ()\n'
        '}) {arena_bytes = 0 : i64, max_tokens = 8 : i64, phase = "prefill", rank = 0 : i64, '
        'sym_name = "prefill"} : () -> ()',
    ),
    "cke.return": (["tensor<1xi32>"], '"cke.return"(%a0) : (tensor<1xi32>) -> ()'),
    "cke.weight": (
        [],
        '%r = "cke.weight"() {name = "w", shape = array<i64: 32, 64>} : () -> tensor<32x64x!cke.q8_0>',
    ),
    "cke.embed": (
        ["tensor<2xi32>", "tensor<10x64xf32>"],
        '%r = "cke.embed"(%a0, %a1) : (tensor<2xi32>, tensor<10x64xf32>) -> tensor<2x64xf32>',
    ),
    "cke.rmsnorm": (
        ["tensor<2x64xf32>", "tensor<64xf32>"],
        '%r = "cke.rmsnorm"(%a0, %a1) {eps = 1.000000e-05 : f64} : (tensor<2x64xf32>, tensor<64xf32>) -> tensor<2x64xf32>',
    ),
    "cke.matmul": (
        ["tensor<2x64xf32>", "tensor<32x64x!cke.q8_0>"],
        '%r = "cke.matmul"(%a0, %a1) {tile = array<i64: 16, 64>} : (tensor<2x64xf32>, tensor<32x64x!cke.q8_0>) -> tensor<2x32xf32>',
    ),
    "cke.rope": (
        ["tensor<2x64xf32>", "i64"],
        '%r = "cke.rope"(%a0, %a1) {head_dim = 16 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<2x64xf32>, i64) -> tensor<2x64xf32>',
    ),
    "cke.attention": (
        [
            "tensor<2x64xf32>",
            "tensor<2x32xf32>",
            "tensor<2x32xf32>",
            "memref<2x8x32xf32>",
            "memref<2x8x32xf32>",
            "i64",
        ],
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 1 : i64} : (tensor<2x64xf32>, tensor<2x32xf32>, tensor<2x32xf32>, memref<2x8x32xf32>, memref<2x8x32xf32>, i64) -> tensor<2x64xf32>',
    ),
    "cke.silu_mul": (
        ["tensor<2x128xf32>", "tensor<2x128xf32>"],
        '%r = "cke.silu_mul"(%a0, %a1) : (tensor<2x128xf32>, tensor<2x128xf32>) -> tensor<2x128xf32>',
    ),
    "cke.gelu_mul": (
        ["tensor<2x128xf32>", "tensor<2x128xf32>"],
        '%r = "cke.gelu_mul"(%a0, %a1) : (tensor<2x128xf32>, tensor<2x128xf32>) -> tensor<2x128xf32>',
    ),
    "cke.add": (
        ["tensor<2x64xf32>", "tensor<2x64xf32>"],
        '%r = "cke.add"(%a0, %a1) : (tensor<2x64xf32>, tensor<2x64xf32>) -> tensor<2x64xf32>',
    ),
    "cke.last_token": (
        ["tensor<?x64xf32>"],
        '%r = "cke.last_token"(%a0) : (tensor<?x64xf32>) -> tensor<1x64xf32>',
    ),
    "cke.requant": (
        ["tensor<2x64xf32>"],
        '%r = "cke.requant"(%a0) {format = "q8_0"} : (tensor<2x64xf32>) -> tensor<2x64xf32>',
    ),
    "cke.argmax": (
        ["tensor<1x100xf32>"],
        '%r = "cke.argmax"(%a0) : (tensor<1x100xf32>) -> tensor<1xi32>',
    ),
    "dist.send": (
        ["tensor<1x64xf32>"],
        '"dist.send"(%a0) {bytes = 256 : i64, format = "f32", peer = 1 : i64} : (tensor<1x64xf32>) -> ()',
    ),
    "dist.recv": (
        [],
        '%r = "dist.recv"() {bytes = 256 : i64, format = "f32", peer = 0 : i64} : () -> tensor<1x64xf32>',
    ),
    "dist.allreduce": (
        ["tensor<1x64xf32>"],
        '%r = "dist.allreduce"(%a0) {bytes = 256 : i64, group = array<i64: 0, 1>} : (tensor<1x64xf32>) -> tensor<1x64xf32>',
    ),
    "dist.allgather": (
        ["tensor<1x32xf32>"],
        '%r = "dist.allgather"(%a0) {axis = 1 : i64, bytes = 128 : i64, group = array<i64: 0, 1>} : (tensor<1x32xf32>) -> tensor<1x64xf32>',
    ),
    "mem.arena": (
        [],
        '"mem.arena"() {alignment = 64 : i64, buffers = 3 : i64, bytes = 4096 : i64} : () -> ()',
    ),
}

OP_LINE = 3  # the line of the op in `holder`'s text


def holder(args: list[str], op_text: str) -> str:
    """The op in an unregistered op's block whose arguments are the op's operands."""
    params = ", ".join(f"%a{i}: {t}" for i, t in enumerate(args))
    return f'"ckt.holder"() ({{\n^bb0({params}):\n  {op_text}\n}}) : () -> ()\n'


def parse_sample(name: str) -> tuple[Operation, Operation]:
    module = parse_ir(holder(*VALID[name]), filename="v.mlir")
    op = module.regions[0].entry.ops[0].regions[0].entry.ops[0]
    assert op.name == name
    return module, op


def verify_error(module: Operation, allow_unregistered: bool = True) -> VerifyError:
    with pytest.raises(VerifyError) as info:
        verify(module, allow_unregistered=allow_unregistered)
    return info.value


def replace(op: Operation, new: Operation) -> None:
    block = op.parent
    for i, v in enumerate(op.operands):
        v.uses.remove((op, i))
    block.ops[block.ops.index(op)] = new
    new.parent, new.loc = block, op.loc


def rebuilt(op: Operation, **changes) -> Operation:
    parts = {
        "operands": list(op.operands),
        "result_types": [r.type for r in op.results],
        "attributes": dict(op.attributes),
        "regions": [],
    }
    parts.update(changes)
    return Operation(op.name, **parts)


def test_every_registered_op_has_a_valid_sample():
    assert set(VALID) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_sample_verifies(name):
    module, _ = parse_sample(name)
    verify(module, allow_unregistered=True)


def required_attributes():
    return [(n, k) for n, d in sorted(REGISTRY.items()) for k in d.attributes]


def declared_attributes():
    return [(n, k) for n, d in sorted(REGISTRY.items()) for k in {**d.attributes, **d.optional}]


@pytest.mark.parametrize(("name", "key"), required_attributes())
def test_missing_required_attribute(name, key):
    module, op = parse_sample(name)
    del op.attributes[key]
    err = verify_error(module)
    assert f"'{name}' op needs attribute '{key}'" in err.message
    assert (err.loc.file, err.loc.line, err.loc.col) == ("v.mlir", OP_LINE, op.loc.col)


@pytest.mark.parametrize(("name", "key"), declared_attributes())
def test_attribute_of_the_wrong_kind(name, key):
    module, op = parse_sample(name)
    spec = attr_spec({**REGISTRY[name].attributes, **REGISTRY[name].optional}[key])
    wrong = A.IntegerAttr(1) if spec.kind == "str" else A.StringAttr("1")
    assert not isinstance(wrong, ATTR_KINDS[spec.kind])
    op.attributes[key] = wrong
    err = verify_error(module)
    assert f"attribute '{key}' must be {spec.describe()}, got {wrong}" in err.message
    assert err.loc.line == OP_LINE


def test_declared_optional_attributes_verify():
    module, op = parse_sample("cke.add")
    op.attributes["offset"] = A.IntegerAttr(64)
    op.attributes["layer"] = A.IntegerAttr(3)
    verify(module, allow_unregistered=True)


def test_undeclared_attributes_are_refused():
    # A misspelt attribute (`tiel` for `tile`) would otherwise be carried along unused.
    module, op = parse_sample("cke.matmul")
    op.attributes["tiel"] = A.DenseArrayAttr((16, 64))
    err = verify_error(module)
    assert "'cke.matmul' op has no attribute 'tiel' (it takes: " in err.message
    assert "tile" in err.message and err.loc.line == OP_LINE


@pytest.mark.parametrize("name", sorted(VALID))
def test_operand_count(name):
    declared = REGISTRY[name].operands
    variadic = bool(declared) and declared[-1].startswith("*")
    module, op = parse_sample(name)
    spare = _spare_value(op)
    replace(op, rebuilt(op, operands=[*op.operands, spare], regions=_moved_regions(op)))
    if name in OPTIONAL_LAST_OPERAND:  # a 7th operand is the slots of a batched attention
        assert OPTIONAL_LAST_OPERAND[name] in verify_error(module).message
    elif variadic:
        verify(module, allow_unregistered=True)
    else:
        assert f"takes {len(declared)} operands" in verify_error(module).message
    if declared and not variadic:
        module, op = parse_sample(name)
        replace(op, rebuilt(op, operands=op.operands[:-1], regions=_moved_regions(op)))
        assert f"takes {len(declared)} operands" in verify_error(module).message


# ops whose last declared operand is optional (declared variadic), with the error an extra
# operand of the wrong kind gets (the sample has rank-3 caches, which take no slots)
OPTIONAL_LAST_OPERAND = {
    "cke.attention": "must be a rank-4 (slot-major) memref KV cache with slots"
}


def _spare_value(op: Operation):
    """A value defined before `op`, from a producer op put at the top of its block."""
    src = Operation("ckt.src", result_types=[T.i64])
    op.parent.insert(0, src)
    return src.result


@pytest.mark.parametrize("name", sorted(VALID))
def test_result_count(name):
    module, op = parse_sample(name)
    types = [r.type for r in op.results]
    expected = f"has {len(REGISTRY[name].results)} results"
    replace(op, rebuilt(op, result_types=[*types, T.i1], regions=_moved_regions(op)))
    assert expected in verify_error(module).message
    if types:
        module, op = parse_sample(name)
        replace(op, rebuilt(op, result_types=types[:-1], regions=_moved_regions(op)))
        assert expected in verify_error(module).message


@pytest.mark.parametrize("name", sorted(VALID))
def test_region_count(name):
    module, op = parse_sample(name)
    regions = _moved_regions(op)
    new = regions[:-1] if regions else [Region([Block()])]
    replace(op, rebuilt(op, regions=new))
    assert f"has {REGISTRY[name].regions} regions" in verify_error(module).message


def _moved_regions(op: Operation) -> list[Region]:
    regions, op.regions = op.regions, []
    return regions


# --- shape rules of the cke dialect --------------------------------------------------------

SHAPE_ERRORS = [
    (
        "matmul contraction mismatch",
        ["tensor<2x64xf32>", "tensor<32x48xf32>"],
        '%r = "cke.matmul"(%a0, %a1) : (tensor<2x64xf32>, tensor<32x48xf32>) -> tensor<2x32xf32>',
        "contraction sizes (x columns vs weight row length): 64 != 48",
    ),
    (
        "matmul result disagrees with inference",
        ["tensor<2x64xf32>", "tensor<32x64xf32>"],
        '%r = "cke.matmul"(%a0, %a1) : (tensor<2x64xf32>, tensor<32x64xf32>) -> tensor<2x64xf32>',
        "result type tensor<2x64xf32> does not match the inferred tensor<2x32xf32>",
    ),
    (
        "matmul tile",
        ["tensor<2x64xf32>", "tensor<32x64xf32>"],
        '%r = "cke.matmul"(%a0, %a1) {tile = array<i64: 16>} : (tensor<2x64xf32>, tensor<32x64xf32>) -> tensor<2x32xf32>',
        "attribute 'tile' must be array<i64: ...> of 2 entries in [1, ",
    ),
    (
        "matmul k_chunk off the block size",
        ["tensor<2x64xf32>", "tensor<32x64xf32>"],
        '%r = "cke.matmul"(%a0, %a1) {k_chunk = 48 : i64} : (tensor<2x64xf32>, tensor<32x64xf32>) -> tensor<2x32xf32>',
        "k_chunk 48 is not a multiple of 32",
    ),
    (
        "matmul k_chunk not dividing K",
        ["tensor<2x96xf32>", "tensor<32x96xf32>"],
        '%r = "cke.matmul"(%a0, %a1) {k_chunk = 64 : i64} : (tensor<2x96xf32>, tensor<32x96xf32>) -> tensor<2x32xf32>',
        "k_chunk 64 does not divide the contraction size 96",
    ),
    (
        "matmul weight of rank 1",
        ["tensor<2x64xf32>", "tensor<64xf32>"],
        '%r = "cke.matmul"(%a0, %a1) : (tensor<2x64xf32>, tensor<64xf32>) -> tensor<2x64xf32>',
        "operand #1 must have rank 2",
    ),
    (
        "rope head_dim odd",
        ["tensor<2x63xf32>", "i64"],
        '%r = "cke.rope"(%a0, %a1) {head_dim = 7 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<2x63xf32>, i64) -> tensor<2x63xf32>',
        "head_dim must be an even number, got 7",
    ),
    (
        "rope row not whole heads",
        ["tensor<2x60xf32>", "i64"],
        '%r = "cke.rope"(%a0, %a1) {head_dim = 16 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<2x60xf32>, i64) -> tensor<2x60xf32>',
        "row length 60 is not a multiple of head_dim 16",
    ),
    (
        "rope style",
        ["tensor<2x64xf32>", "i64"],
        '%r = "cke.rope"(%a0, %a1) {head_dim = 16 : i64, style = "spiral", theta = 1.000000e+04 : f64} : (tensor<2x64xf32>, i64) -> tensor<2x64xf32>',
        "attribute 'style' must be one of 'interleaved', 'halves', got \"spiral\"",
    ),
    (
        "rope pos not an integer",
        ["tensor<2x64xf32>", "f32"],
        '%r = "cke.rope"(%a0, %a1) {head_dim = 16 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<2x64xf32>, f32) -> tensor<2x64xf32>',
        "pos must be an integer",
    ),
    (
        "attention kv_heads does not divide heads",
        [
            "tensor<2x64xf32>",
            "tensor<2x48xf32>",
            "tensor<2x48xf32>",
            "memref<2x8x48xf32>",
            "memref<2x8x48xf32>",
            "i64",
        ],
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 3 : i64, layer = 0 : i64} : (tensor<2x64xf32>, tensor<2x48xf32>, tensor<2x48xf32>, memref<2x8x48xf32>, memref<2x8x48xf32>, i64) -> tensor<2x64xf32>',
        "kv_heads 3 must divide heads 4",
    ),
    (
        "attention query width",
        [
            "tensor<2x48xf32>",
            "tensor<2x32xf32>",
            "tensor<2x32xf32>",
            "memref<2x8x32xf32>",
            "memref<2x8x32xf32>",
            "i64",
        ],
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 0 : i64} : (tensor<2x48xf32>, tensor<2x32xf32>, tensor<2x32xf32>, memref<2x8x32xf32>, memref<2x8x32xf32>, i64) -> tensor<2x48xf32>',
        "query row length vs heads*head_dim: 48 != 64",
    ),
    (
        "attention key width",
        [
            "tensor<2x64xf32>",
            "tensor<2x64xf32>",
            "tensor<2x32xf32>",
            "memref<2x8x32xf32>",
            "memref<2x8x32xf32>",
            "i64",
        ],
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 0 : i64} : (tensor<2x64xf32>, tensor<2x64xf32>, tensor<2x32xf32>, memref<2x8x32xf32>, memref<2x8x32xf32>, i64) -> tensor<2x64xf32>',
        "key/value row length vs kv_heads*head_dim: 64 != 32",
    ),
    (
        "attention cache is a tensor",
        [
            "tensor<2x64xf32>",
            "tensor<2x32xf32>",
            "tensor<2x32xf32>",
            "tensor<2x8x32xf32>",
            "memref<2x8x32xf32>",
            "i64",
        ],
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 0 : i64} : (tensor<2x64xf32>, tensor<2x32xf32>, tensor<2x32xf32>, tensor<2x8x32xf32>, memref<2x8x32xf32>, i64) -> tensor<2x64xf32>',
        "operand #3 must be a rank-3 memref KV cache",
    ),
    (
        "attention layer outside the cache",
        [
            "tensor<2x64xf32>",
            "tensor<2x32xf32>",
            "tensor<2x32xf32>",
            "memref<2x8x32xf32>",
            "memref<2x8x32xf32>",
            "i64",
        ],
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 2 : i64} : (tensor<2x64xf32>, tensor<2x32xf32>, tensor<2x32xf32>, memref<2x8x32xf32>, memref<2x8x32xf32>, i64) -> tensor<2x64xf32>',
        "layer 2 outside the cache's 2 layers",
    ),
    (
        "weight type vs shape attribute",
        [],
        '%r = "cke.weight"() {name = "w", shape = array<i64: 32, 64>} : () -> tensor<64x32xf32>',
        "type tensor<64x32xf32> disagrees with shape (32, 64)",
    ),
    (
        "quantized row not whole blocks",
        [],
        '%r = "cke.weight"() {name = "w", shape = array<i64: 4, 48>} : () -> tensor<4x48x!cke.q8_0>',
        "rows of 48 are not whole q8_0 blocks of 32",
    ),
    (
        "quantized rank-0 weight",
        [],
        '%r = "cke.weight"() {name = "w", shape = array<i64>} : () -> tensor<!cke.q4_0>',
        "attribute 'shape' must be array<i64: ...> of 1-4 entries",
    ),
    (
        "weight of a type with no storage format",
        [],
        '%r = "cke.weight"() {name = "w", shape = array<i64: 4>} : () -> tensor<4xf64>',
        "element type f64 is not a weight format",
    ),
    (
        "requant of rows that are not whole Q8_0 blocks",
        ["tensor<2x40xf32>"],
        '%r = "cke.requant"(%a0) {format = "q8_0"} : (tensor<2x40xf32>) -> tensor<2x40xf32>',
        "rows of 40 are not whole q8_0 blocks of 32",
    ),
    (
        "embed ids not i32",
        ["tensor<2xi64>", "tensor<10x64xf32>"],
        '%r = "cke.embed"(%a0, %a1) : (tensor<2xi64>, tensor<10x64xf32>) -> tensor<2x64xf32>',
        "ids must be i32",
    ),
    (
        "embed result disagrees with the table",
        ["tensor<2xi32>", "tensor<10x64xf32>"],
        '%r = "cke.embed"(%a0, %a1) : (tensor<2xi32>, tensor<10x64xf32>) -> tensor<2x32xf32>',
        "does not match the inferred tensor<2x64xf32>",
    ),
    (
        "rmsnorm weight length",
        ["tensor<2x64xf32>", "tensor<32xf32>"],
        '%r = "cke.rmsnorm"(%a0, %a1) {eps = 1.000000e-05 : f64} : (tensor<2x64xf32>, tensor<32xf32>) -> tensor<2x64xf32>',
        "weight length vs row length: 32 != 64",
    ),
    (
        "rmsnorm eps not positive",
        ["tensor<2x64xf32>", "tensor<64xf32>"],
        '%r = "cke.rmsnorm"(%a0, %a1) {eps = 0.000000e+00 : f64} : (tensor<2x64xf32>, tensor<64xf32>) -> tensor<2x64xf32>',
        "attribute 'eps' must be a float in [1e-30, 1], got 0.000000e+00",
    ),
    (
        "add of different shapes",
        ["tensor<2x64xf32>", "tensor<1x64xf32>"],
        '%r = "cke.add"(%a0, %a1) : (tensor<2x64xf32>, tensor<1x64xf32>) -> tensor<2x64xf32>',
        "operands must have the same type",
    ),
    (
        "silu_mul of different shapes",
        ["tensor<2x128xf32>", "tensor<2x64xf32>"],
        '%r = "cke.silu_mul"(%a0, %a1) : (tensor<2x128xf32>, tensor<2x64xf32>) -> tensor<2x128xf32>',
        "operands must have the same type",
    ),
    (
        "gelu_mul of different shapes",
        ["tensor<2x128xf32>", "tensor<2x64xf32>"],
        '%r = "cke.gelu_mul"(%a0, %a1) : (tensor<2x128xf32>, tensor<2x64xf32>) -> tensor<2x128xf32>',
        "operands must have the same type",
    ),
    (
        "per-head rmsnorm gains of another width than a head",
        ["tensor<2x64xf32>", "tensor<32xf32>"],
        '%r = "cke.rmsnorm"(%a0, %a1) {eps = 1.000000e-05 : f64, head_dim = 16 : i64} : (tensor<2x64xf32>, tensor<32xf32>) -> tensor<2x64xf32>',
        "weight length vs head_dim: 32 != 16",
    ),
    (
        "per-head rmsnorm of rows that are not whole heads",
        ["tensor<2x72xf32>", "tensor<16xf32>"],
        '%r = "cke.rmsnorm"(%a0, %a1) {eps = 1.000000e-05 : f64, head_dim = 16 : i64} : (tensor<2x72xf32>, tensor<16xf32>) -> tensor<2x72xf32>',
        "row length 72 is not a multiple of head_dim 16",
    ),
    (
        "attention window as long as the cache",
        [
            "tensor<2x64xf32>",
            "tensor<2x32xf32>",
            "tensor<2x32xf32>",
            "memref<2x8x32xf32>",
            "memref<2x8x32xf32>",
            "i64",
        ],
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 1 : i64, window = 8 : i64} : (tensor<2x64xf32>, tensor<2x32xf32>, tensor<2x32xf32>, memref<2x8x32xf32>, memref<2x8x32xf32>, i64) -> tensor<2x64xf32>',
        "window 8 is not shorter than the cache's context of 8",
    ),
    (
        "embed scale of zero",
        ["tensor<2xi32>", "tensor<10x64xf32>"],
        '%r = "cke.embed"(%a0, %a1) {scale = 0.000000e+00 : f64} : (tensor<2xi32>, tensor<10x64xf32>) -> tensor<2x64xf32>',
        "attribute 'scale' must be a float in",
    ),
    (
        "argmax of integers",
        ["tensor<1x100xi32>"],
        '%r = "cke.argmax"(%a0) : (tensor<1x100xi32>) -> tensor<1xi32>',
        "operand must be a float tensor",
    ),
    (
        "last_token result",
        ["tensor<?x64xf32>"],
        '%r = "cke.last_token"(%a0) : (tensor<?x64xf32>) -> tensor<?x64xf32>',
        "does not match the inferred tensor<1x64xf32>",
    ),
    (
        "operand that is not a tensor",
        ["i64", "tensor<64xf32>"],
        '%r = "cke.rmsnorm"(%a0, %a1) {eps = 1.000000e-05 : f64} : (i64, tensor<64xf32>) -> i64',
        "operand #0 must be a tensor, got i64",
    ),
    (
        "func phase",
        [],
        '"cke.func"() ({\n  "cke.return"() : () -> ()\n}) {phase = "train", sym_name = "f"} : () -> ()',
        "attribute 'phase' must be one of 'prefill', 'decode', got \"train\"",
    ),
    (
        "func without a body",
        [],
        '"cke.func"() ({\n}) {phase = "decode", sym_name = "f"} : () -> ()',
        "has an empty body",
    ),
    (
        "func without cke.return",
        [],
        '"cke.func"() ({\n  "mem.arena"() {alignment = 64 : i64, buffers = 0 : i64, bytes = 0 : i64} : () -> ()\n}) {phase = "decode", sym_name = "f"} : () -> ()',
        "body must end with 'cke.return'",
    ),
    (
        "send to a negative peer",
        ["tensor<1x64xf32>"],
        '"dist.send"(%a0) {bytes = 256 : i64, peer = -1 : i64} : (tensor<1x64xf32>) -> ()',
        "attribute 'peer' must be an integer in [0, 4095], got -1",
    ),
    (
        "allreduce over one rank",
        ["tensor<1x64xf32>"],
        '%r = "dist.allreduce"(%a0) {bytes = 256 : i64, group = array<i64: 0>} : (tensor<1x64xf32>) -> tensor<1x64xf32>',
        "attribute 'group' must be array<i64: ...> of 2-4096 entries",
    ),
    (
        "allgather with a repeated rank",
        ["tensor<1x32xf32>"],
        '%r = "dist.allgather"(%a0) {axis = 1 : i64, bytes = 128 : i64, group = array<i64: 1, 1>} : (tensor<1x32xf32>) -> tensor<1x64xf32>',
        "group must list distinct ranks, got (1, 1)",
    ),
    (
        "arena alignment",
        [],
        '"mem.arena"() {alignment = 0 : i64, buffers = 3 : i64, bytes = 4096 : i64} : () -> ()',
        "attribute 'alignment' must be an integer in [1, 4096], got 0",
    ),
]


@pytest.mark.parametrize(
    ("args", "text", "message"), [c[1:] for c in SHAPE_ERRORS], ids=[c[0] for c in SHAPE_ERRORS]
)
def test_shape_rules(args, text, message):
    source = holder(args, text)
    err = verify_error(parse_ir(source, filename="s.mlir"))
    assert message in err.message
    assert (err.loc.file, err.loc.line) == ("s.mlir", OP_LINE)
    op_col = source.splitlines()[OP_LINE - 1].index('"') + 1
    assert err.loc.col == op_col
    assert err.format().splitlines()[2] == "    " + " " * (op_col - 1) + "^"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (  # unranked operands (before shape-infer): nothing to check yet
            ["tensor<*xf32>", "tensor<*xf32>"],
            '%r = "cke.matmul"(%a0, %a1) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>',
        ),
        (
            ["tensor<?x64xf32>", "tensor<32x64xf32>"],
            '%r = "cke.matmul"(%a0, %a1) : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>',
        ),
        (  # a dynamic row length cannot be checked against head_dim
            ["tensor<1x?xf32>", "i64"],
            '%r = "cke.rope"(%a0, %a1) {head_dim = 16 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x?xf32>, i64) -> tensor<1x?xf32>',
        ),
        (  # nor a layer against a dynamic number of cached layers
            [
                "tensor<2x64xf32>",
                "tensor<2x32xf32>",
                "tensor<2x32xf32>",
                "memref<?x8x32xf32>",
                "memref<?x8x32xf32>",
                "i64",
            ],
            '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 5 : i64} : (tensor<2x64xf32>, tensor<2x32xf32>, tensor<2x32xf32>, memref<?x8x32xf32>, memref<?x8x32xf32>, i64) -> tensor<2x64xf32>',
        ),
    ],
)
def test_unknown_sizes_pass(args, text):
    verify(parse_ir(holder(args, text)), allow_unregistered=True)


# --- structure -----------------------------------------------------------------------------


def test_use_before_definition_in_a_block():
    text = """\
"cke.func"() ({
^bb0(%ids: tensor<1xi32>, %pos: i64, %k: memref<1x8x4xf32>, %v: memref<1x8x4xf32>):
  %s = "cke.add"(%t, %t) : (tensor<1x4xf32>, tensor<1x4xf32>) -> tensor<1x4xf32>
  %t = "ckt.src"() : () -> tensor<1x4xf32>
  "cke.return"(%s) : (tensor<1x4xf32>) -> ()
}) {phase = "decode", sym_name = "decode"} : () -> ()
"""
    err = verify_error(parse_ir(text, filename="f.mlir"))
    assert "'cke.add' op operand #0 is used before it is defined" in err.message
    assert (err.loc.line, err.loc.col) == (3, 8)


def test_use_in_a_nested_region_of_a_later_value():
    text = """\
"ckt.outer"() ({
  "ckt.inner"() ({
    "ckt.use"(%late) : (i32) -> ()
  }) : () -> ()
  %late = "ckt.src"() : () -> i32
}) : () -> ()
"""
    err = verify_error(parse_ir(text))
    assert "'ckt.use' op operand #0 is used before it is defined" in err.message
    assert err.loc.line == 3


def test_values_of_enclosing_regions_and_earlier_ops_are_fine():
    text = """\
%top = "ckt.src"() : () -> i32
"ckt.outer"() ({
^bb0(%x: i32):
  %y = "ckt.b"(%x, %top) : (i32, i32) -> i32
  "ckt.inner"() ({
    "ckt.use"(%x, %y, %top) : (i32, i32, i32) -> ()
  }) : () -> ()
}) : () -> ()
"""
    verify(parse_ir(text), allow_unregistered=True)


def test_unknown_op_is_rejected_unless_allowed():
    module = parse_ir('"ckt.mystery"() : () -> ()', filename="u.mlir")
    err = verify_error(module, allow_unregistered=False)
    assert err.message == "unknown operation 'ckt.mystery'"
    assert (err.loc.line, err.loc.col) == (1, 1)
    assert err.format().startswith("u.mlir:1:1: verifier error: unknown operation")
    verify(module, allow_unregistered=True)


def test_unknown_op_nested_in_a_registered_one_is_rejected():
    text = """\
"cke.func"() ({
^bb0(%ids: tensor<1xi32>, %pos: i64, %k: memref<1x8x4xf32>, %v: memref<1x8x4xf32>):
  "ckt.mystery"() : () -> ()
  "cke.return"() : () -> ()
}) {phase = "decode", sym_name = "decode"} : () -> ()
"""
    err = verify_error(parse_ir(text), allow_unregistered=False)
    assert "ckt.mystery" in err.message and err.loc.line == 3


def test_errors_of_ops_built_by_a_pass_name_their_func():
    module = parse_ir(VALID["cke.func"][1])
    func = module.regions[0].entry.ops[0]
    func.regions[0].entry.insert(0, Operation("cke.add", result_types=[]))  # no location
    err = verify_error(module)
    assert err.loc is None
    assert err.message.endswith("got 0 (in func prefill)")


def test_errors_of_built_ops_have_no_location():
    with pytest.raises(VerifyError) as info:
        verify(module_op([Operation("cke.add", result_types=[])]))
    assert info.value.loc is None
    assert info.value.format().startswith("verifier error: 'cke.add' op takes 2 operands")


# --- batched decode funcs (schedule `batch B`): per-row positions, slot-major caches ---------

BATCHED_ARGS = (
    "%ids: tensor<?xi32>, %pos: tensor<?xi64>, %k: memref<4x2x8x32xf32>, "
    "%v: memref<4x2x8x32xf32>, %slots: tensor<?xi32>"
)


def batched_func(
    args: str = BATCHED_ARGS,
    attrs: str = "max_tokens = 4 : i64, slots = 4 : i64",
    phase: str = "decode",
) -> str:
    return (
        f'"cke.func"() ({{\n^bb0({args}):\n  "cke.return"(%ids) : (tensor<?xi32>) -> ()\n'
        f'}}) {{{attrs}, phase = "{phase}", sym_name = "decode"}} : () -> ()\n'
    )


CACHE4 = "memref<4x2x8x32xf32>"


def batched_attention(k=CACHE4, v=CACHE4, pos="tensor<?xi64>", slots="tensor<?xi32>", rows="?"):
    """A batched cke.attention's (operand types, text)."""
    args = [f"tensor<{rows}x64xf32>", f"tensor<{rows}x32xf32>", f"tensor<{rows}x32xf32>"]
    args += [k, v, pos, slots]
    text = (
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5, %a6) {head_dim = 16 : i64, '
        "heads = 4 : i64, kv_heads = 2 : i64, layer = 1 : i64} : "
        f"({', '.join(args)}) -> tensor<{rows}x64xf32>"
    )
    return args, text


def test_batched_decode_func_verifies():
    verify(parse_ir(batched_func()), allow_unregistered=True)


@pytest.mark.parametrize(
    ("args", "attrs", "phase", "message"),
    [
        (
            BATCHED_ARGS.replace("tensor<?xi64>", "i64"),
            None,
            "decode",
            "with slots, entry block must take (ids: tensor<?xi32>, pos: tensor<?xi64>",
        ),
        (
            BATCHED_ARGS.replace("memref<4x2x8x32xf32>", "memref<2x8x32xf32>"),
            None,
            "decode",
            "with slots, entry block must take",
        ),
        (
            BATCHED_ARGS.replace(", %slots: tensor<?xi32>", ""),
            None,
            "decode",
            "with slots, entry block must take",
        ),
        (
            BATCHED_ARGS.replace("%slots: tensor<?xi32>", "%slots: tensor<3xi32>"),
            None,
            "decode",
            "with slots, entry block must take",
        ),
        (
            BATCHED_ARGS.replace("%v: memref<4x2x8x32xf32>", "%v: memref<4x2x8x16xf32>"),
            None,
            "decode",
            "with slots, entry block must take",
        ),
        (
            None,
            "max_tokens = 4 : i64, slots = 2 : i64",
            "decode",
            "slots = 2 but its KV caches hold 4 slots",
        ),
        (
            BATCHED_ARGS.replace("4x2", "8x2"),
            "max_tokens = 8 : i64, slots = 8 : i64",
            "prefill",
            "slots = 8: only a decode func runs several sequences at once",
        ),
        (
            None,
            "max_tokens = 5 : i64, slots = 4 : i64",
            "decode",
            "max_tokens 5 is more rows than its 4 slots",
        ),
        (  # a batched signature without the attribute is an ordinary func's bad signature
            None,
            "max_tokens = 4 : i64",
            "decode",
            "entry block must take (ids: tensor<Nxi32> with N > 0, pos: i64",
        ),
    ],
)
def test_batched_signature_errors(args, attrs, phase, message):
    text = batched_func(
        args or BATCHED_ARGS, attrs or "max_tokens = 4 : i64, slots = 4 : i64", phase
    )
    err = verify_error(parse_ir(text, filename="b.mlir"))
    assert message in err.message
    assert (err.loc.file, err.loc.line) == ("b.mlir", 1)


def test_batched_attention_and_rope_verify():
    verify(parse_ir(holder(*batched_attention())), allow_unregistered=True)
    rope = (
        '%r = "cke.rope"(%a0, %a1) {head_dim = 16 : i64, style = "halves", theta = '
        "1.000000e+04 : f64} : (tensor<?x64xf32>, tensor<?xi64>) -> tensor<?x64xf32>"
    )
    verify(parse_ir(holder(["tensor<?x64xf32>", "tensor<?xi64>"], rope)), allow_unregistered=True)


def test_argmax_gives_one_index_a_row():
    text = '%r = "cke.argmax"(%a0) : (tensor<?x100xf32>) -> tensor<?xi32>'
    verify(parse_ir(holder(["tensor<?x100xf32>"], text)), allow_unregistered=True)
    wrong = '%r = "cke.argmax"(%a0) : (tensor<?x100xf32>) -> tensor<1xi32>'
    err = verify_error(parse_ir(holder(["tensor<?x100xf32>"], wrong)))
    assert "does not match the inferred tensor<?xi32>" in err.message
    three = '%r = "cke.argmax"(%a0) : (tensor<3x100xf32>) -> tensor<3xi32>'
    verify(parse_ir(holder(["tensor<3x100xf32>"], three)), allow_unregistered=True)


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (
            batched_attention(k="memref<2x8x32xf32>"),
            "operand #3 must be a rank-4 (slot-major) memref KV cache with slots (operand #6)",
        ),
        (batched_attention(v="memref<4x2x8x16xf32>"), "cache row length: 16 != 32"),
        (
            batched_attention(k="memref<4x1x8x32xf32>", v="memref<4x1x8x32xf32>"),
            "layer 1 outside the cache's 1 layers",
        ),
        (
            batched_attention(pos="i64"),
            "pos must be tensor<?xi64> (one position a row) with slots, got i64",
        ),
        (batched_attention(pos="tensor<?xi32>"), "pos must be tensor<?xi64>"),
        (
            batched_attention(slots="tensor<?xi64>"),
            "slots must be tensor<?xi32> (one slot a row), got tensor<?xi64>",
        ),
        (
            batched_attention(pos="tensor<3xi64>", slots="tensor<2xi32>", rows=2),
            "rows of q vs positions: 2 != 3",
        ),
        (
            batched_attention(pos="tensor<2xi64>", slots="tensor<3xi32>", rows=2),
            "rows of q vs slots: 2 != 3",
        ),
    ],
)
def test_batched_attention_errors(sample, message):
    err = verify_error(parse_ir(holder(*sample), filename="a.mlir"))
    assert message in err.message
    assert (err.loc.file, err.loc.line) == ("a.mlir", OP_LINE)


def test_scalar_pos_goes_with_rank3_caches_only():
    args = [
        "tensor<2x64xf32>",
        "tensor<2x32xf32>",
        "tensor<2x32xf32>",
        "memref<2x8x32xf32>",
        "memref<2x8x32xf32>",
        "tensor<2xi64>",
    ]
    text = (
        '%r = "cke.attention"(%a0, %a1, %a2, %a3, %a4, %a5) {head_dim = 16 : i64, heads = 4 : '
        "i64, kv_heads = 2 : i64, layer = 1 : i64} : (tensor<2x64xf32>, tensor<2x32xf32>, "
        "tensor<2x32xf32>, memref<2x8x32xf32>, memref<2x8x32xf32>, tensor<2xi64>) -> "
        "tensor<2x64xf32>"
    )
    err = verify_error(parse_ir(holder(args, text)))
    assert "pos must be an integer with rank-3 caches, got tensor<2xi64>" in err.message


def test_rope_rows_vs_positions():
    text = (
        '%r = "cke.rope"(%a0, %a1) {head_dim = 16 : i64, style = "halves", theta = '
        "1.000000e+04 : f64} : (tensor<2x64xf32>, tensor<3xi64>) -> tensor<2x64xf32>"
    )
    err = verify_error(parse_ir(holder(["tensor<2x64xf32>", "tensor<3xi64>"], text)))
    assert "rows of x vs positions: 2 != 3" in err.message
    text = text.replace("tensor<3xi64>", "tensor<2xf32>")
    err = verify_error(parse_ir(holder(["tensor<2x64xf32>", "tensor<2xf32>"], text)))
    assert "pos must be an integer or one i64 position a row, got tensor<2xf32>" in err.message
