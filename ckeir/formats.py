"""Number formats of weights and activations: the GGML block layouts, defined once.

A quantized tensor is stored row by row; each row of K elements is K/block blocks (GGML
packs along the contiguous dimension).  Byte sizes of every element type come from here,
and so do the layouts the kernels read (where the scales, the high bits and the quants of a
block lie).  Every GGML type a model file may hold has a `Format` (its sizes are gguf's);
`computes` says whether ckeir has kernels for it.

The 32-element GGML blocks (ggml-common.h), each starting with its f16 scale d:

    q8_0  d, 32 x int8 q                          x = d·q
    q4_0  d, 16 bytes of nibbles                  x = d·(q - 8)
    q4_1  d, f16 min m, 16 bytes of nibbles       x = d·q + m
    q5_0  d, u32 high bits, 16 bytes of nibbles   x = d·(q - 16)
    q5_1  d, m, u32 high bits, 16 bytes           x = d·q + m

Nibbles: element j < 16 is byte j's low nibble, element j + 16 its high one; q5's fifth bit
of element j is bit j of the 32-bit mask.
"""

from __future__ import annotations

import re

import attrs
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256  # elements per K-quant super-block


@attrs.frozen
class Format:
    name: str  # the schedule's spelling and the IR's `!cke.<name>`
    block: int  # elements per block (1 for plain floats)
    block_bytes: int  # bytes per block
    ggml_type: str | None = None  # name of gguf.GGMLQuantizationType
    computes: bool = False  # ckeir has kernels that compute on it as stored
    # the 32-element blocks' layout (see the module docstring)
    bits: int = 0  # bits per stored quant: 8 (signed), 4 or 5 (unsigned)
    zero: int = 0  # subtracted from an unsigned quant (q4_0: 8, q5_0: 16)
    mins: bool = False  # an f16 min m follows d (x = d·q + m)

    @property
    def quantized(self) -> bool:
        return self.block > 1

    @property
    def head(self) -> int:
        """Bytes of f16 scales at the start of a 32-element block: d, or d and m."""
        return 4 if self.mins else 2

    @property
    def high_bits(self) -> bool:
        """Whether a 32-bit mask of fifth bits follows the scales (q5_0, q5_1)."""
        return self.bits == 5

    @property
    def quants_at(self) -> int:
        """Byte offset of a 32-element block's quants (int8 or nibbles)."""
        return self.head + (4 if self.high_bits else 0)

    @property
    def super_block(self) -> bool:
        """A K-quant: 256 elements in sub-blocks with scales of their own."""
        return self.block == QK_K

    def row_bytes(self, k: int) -> int:
        if k % self.block:
            raise ValueError(f"{self.name}: row length {k} is not a multiple of {self.block}")
        return k // self.block * self.block_bytes


def _ggml(name: str, **layout) -> Format:
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
    return Format(name, block, block_bytes, name.upper(), **layout)


F32 = _ggml("f32", computes=True)
F16 = _ggml("f16", computes=True)
BF16 = _ggml("bf16", computes=True)
Q8_0 = _ggml("q8_0", computes=True, bits=8)
Q4_0 = _ggml("q4_0", computes=True, bits=4, zero=8)
Q4_1 = _ggml("q4_1", computes=True, bits=4, mins=True)
Q5_0 = _ggml("q5_0", computes=True, bits=5, zero=16)
Q5_1 = _ggml("q5_1", computes=True, bits=5, mins=True)


@attrs.frozen
class KLayout:
    """Byte offsets in a K-quant super-block (ggml-common.h; None: the type has no such
    part).  Q4_K and Q5_K: f16 d and dmin, 12 bytes packing eight 6-bit scales and eight 6-bit
    mins of 32-element sub-blocks (x = d·sc·q - dmin·m), Q5_K's fifth bits (bit j of byte l:
    sub-block j, element l), then 128 bytes of nibbles (32 bytes per pair of sub-blocks: low
    nibbles the first, high the second).  Q6_K: 128 bytes of low nibbles (per 128 elements,
    64 bytes: low nibbles elements 0-63, high 64-127), 64 bytes of high 2-bit pairs (per 128,
    32 bytes: bits 2i..2i+1 of byte l for element 32i + l), sixteen int8 scales of 16-element
    sub-blocks, f16 d last (x = d·scale·(q - 32)).  Q3_K: 32 bytes of third bits (bit j of
    byte l: element 32j + l), 64 bytes of 2-bit pairs (per 128 elements, 32 bytes: bits
    2i..2i+1 of byte l for element 32i + l), sixteen 6-bit scales of 16 (low nibbles in bytes
    0-7, both halves; high pairs in bytes 8-11), f16 d last (x = d·(sc - 32)·(q - 4)).
    Q2_K: sixteen bytes of a 4-bit scale (low) and min (high) per 16 elements, 64 bytes of
    2-bit pairs (as Q3_K's), f16 d and dmin last (x = d·sc·q - dmin·m)."""

    d: int
    dmin: int | None
    scales: int
    qh: int | None
    qs: int
    sub: int  # elements per scale
    zero: int = 0  # subtracted from the unsigned quant (Q6_K 32, Q3_K 4)


K_LAYOUTS = {
    "q4_k": KLayout(d=0, dmin=2, scales=4, qh=None, qs=16, sub=32),
    "q5_k": KLayout(d=0, dmin=2, scales=4, qh=16, qs=48, sub=32),
    "q6_k": KLayout(d=208, dmin=None, scales=192, qh=128, qs=0, sub=16, zero=32),
    "q3_k": KLayout(d=108, dmin=None, scales=96, qh=0, qs=32, sub=16, zero=4),
    "q2_k": KLayout(d=80, dmin=82, scales=0, qh=None, qs=16, sub=16),
}

# A tensor-parallel shard along K is a whole number of quantization blocks (rows stay
# packable) and of int8 activation blocks: at least 32 elements, whatever the weights' type.
FFN_SHARD_UNIT = 32


def split_unit(fmt: Format, least: int = FFN_SHARD_UNIT) -> int:
    """Elements along K a tensor-parallel column shard of a matrix stored in `fmt` is made of:
    its block (256 for a K-quant's super-block), and never fewer than `least` (the FFN's
    FFN_SHARD_UNIT, the int8 activations' blocks; attention's split by heads takes 1: F32,
    F16 and BF16 have one-element "blocks")."""
    return max(least, fmt.block)


Q4_K = _ggml("q4_k", computes=True)
Q5_K = _ggml("q5_k", computes=True)
Q6_K = _ggml("q6_k", computes=True)
Q3_K = _ggml("q3_k", computes=True)
Q2_K = _ggml("q2_k", computes=True)

_KNOWN = (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# every other float or block type a GGUF file may hold: sized, not computed on
_OTHERS = tuple(
    _ggml(t.name.lower())
    for t in GGML_QUANT_SIZES
    if t.name.lower() not in {f.name for f in _KNOWN} and not re.fullmatch(r"I\d+|F64", t.name)
)
FORMATS = {f.name: f for f in (*_KNOWN, *_OTHERS)}
# the block formats the int8-activation kernels (quant_matmul) compute on
QUANT_FORMATS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
# the formats ckeir computes on as stored (what `quantize weights keep` can keep)
COMPUTED = tuple(f.name for f in FORMATS.values() if f.computes)
# the formats `quantize weights` converts to (gguf.quants packs them; the K-quants,
# which it cannot make, `ckeir.quant.kquantize`)
TARGETS = (
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
)
