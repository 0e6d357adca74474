"""IR types, printed exactly as MLIR prints them.

Builtin: integers (`i32`, `i64`), `index`, floats (`f16`, `bf16`, `f32`, `f64`), ranked
`tensor<AxBxT>` and `memref<AxBxT>` (a `?` dimension is dynamic), function types.
Dialect types: `!cke.q8_0`, `!cke.q4_k`, ... — GGML block-quantized elements, one per GGML
type (`ckeir.formats.FORMATS`); f16 and bf16 weights are the builtin float types.
"""

from __future__ import annotations

import math

import attrs

from ckeir.formats import FORMATS, Format


class Type:
    """Base of every type.  Subclasses are frozen attrs classes; `str(t)` is the MLIR text."""


@attrs.frozen
class IntegerType(Type):
    width: int

    def __str__(self) -> str:
        return f"i{self.width}"


@attrs.frozen
class IndexType(Type):
    def __str__(self) -> str:
        return "index"


@attrs.frozen
class FloatType(Type):
    name: str  # f16 bf16 f32 f64

    def __str__(self) -> str:
        return self.name

    @property
    def width(self) -> int:
        return {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}[self.name]


@attrs.frozen
class DialectType(Type):
    """An opaque `!dialect.name` type; `!cke.q*` are the quantized element types."""

    dialect: str
    name: str

    def __str__(self) -> str:
        return f"!{self.dialect}.{self.name}"


DYN = None  # a dynamic dimension, printed `?`


@attrs.frozen
class ShapedType(Type):
    shape: tuple[int | None, ...] = attrs.field(converter=tuple)
    element: Type

    keyword = ""

    def __str__(self) -> str:
        dims = "".join(("?" if d is None else str(d)) + "x" for d in self.shape)
        return f"{self.keyword}<{dims}{self.element}>"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def static(self) -> bool:
        return all(d is not None for d in self.shape)

    def with_shape(self, shape) -> ShapedType:
        return attrs.evolve(self, shape=tuple(shape))

    def with_element(self, element: Type) -> ShapedType:
        return attrs.evolve(self, element=element)


@attrs.frozen
class TensorType(ShapedType):
    keyword = "tensor"


@attrs.frozen
class MemRefType(ShapedType):
    keyword = "memref"


@attrs.frozen
class UnrankedTensorType(Type):
    """`tensor<*xf32>`: a tensor whose shape is not known yet (before shape inference)."""

    element: Type

    def __str__(self) -> str:
        return f"tensor<*x{self.element}>"


@attrs.frozen
class FunctionType(Type):
    inputs: tuple[Type, ...] = attrs.field(converter=tuple)
    results: tuple[Type, ...] = attrs.field(converter=tuple)

    def __str__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        if len(self.results) == 1 and not isinstance(self.results[0], FunctionType):
            outs = str(self.results[0])
        else:
            outs = "(" + ", ".join(map(str, self.results)) + ")"
        return f"({ins}) -> {outs}"


i1, i8, i32, i64 = IntegerType(1), IntegerType(8), IntegerType(32), IntegerType(64)
index = IndexType()
f16, bf16, f32, f64 = FloatType("f16"), FloatType("bf16"), FloatType("f32"), FloatType("f64")


def quant_type(fmt: str) -> Type:
    """The element type for a weight format name (`f32`, `q8_0`, ...)."""
    if fmt in ("f32", "f16", "bf16"):
        return FloatType(fmt)
    return DialectType("cke", fmt)


def element_format(t: Type) -> Format:
    """The storage format of an element type (the inverse of `quant_type`)."""
    if isinstance(t, FloatType) and t.name in FORMATS:
        return FORMATS[t.name]
    if isinstance(t, DialectType) and t.dialect == "cke" and t.name in FORMATS:
        return FORMATS[t.name]
    if isinstance(t, IntegerType) and t.width in (8, 32, 64):
        return Format(str(t), 1, t.width // 8)
    raise ValueError(f"type {t} has no storage format")


def nbytes(t: Type, dyn: int | None = None) -> int:
    """Bytes a value of shaped type `t` occupies; `dyn` stands in for `?` dimensions."""
    if not isinstance(t, ShapedType):
        return element_format(t).block_bytes
    shape = [dyn if d is None else d for d in t.shape]
    if any(d is None for d in shape):
        raise ValueError(f"{t} has a dynamic dimension and no bound was given")
    fmt = element_format(t.element)
    if not shape:
        return fmt.block_bytes
    rows = math.prod(shape[:-1])
    return rows * fmt.row_bytes(shape[-1])
