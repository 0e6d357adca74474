"""Number formats of weights and activations: the GGML block layouts, defined once.

A quantized tensor is stored row by row; each row of K elements is K/32 blocks (GGML packs
along the contiguous dimension).  Byte sizes of every element type come from here.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Format:
    name: str  # the schedule's spelling and the IR's `!cke.<name>`
    block: int  # elements per block (1 for plain floats)
    block_bytes: int  # bytes per block
    ggml_type: str | None = None  # name of gguf.GGMLQuantizationType

    @property
    def quantized(self) -> bool:
        return self.block > 1

    def row_bytes(self, k: int) -> int:
        if k % self.block:
            raise ValueError(f"{self.name}: row length {k} is not a multiple of {self.block}")
        return k // self.block * self.block_bytes


F32 = Format("f32", 1, 4, "F32")
F16 = Format("f16", 1, 2, "F16")
# GGML layouts: q8_0 = f16 scale + 32 x int8; q4_0 = f16 scale + 16 bytes of nibbles;
# q4_1 = f16 scale + f16 min + 16 bytes of nibbles.
Q8_0 = Format("q8_0", 32, 34, "Q8_0")
Q4_0 = Format("q4_0", 32, 18, "Q4_0")
Q4_1 = Format("q4_1", 32, 20, "Q4_1")

# A tensor-parallel FFN shard is a whole number of quantization blocks (rows stay packable).
FFN_SHARD_UNIT = 32

FORMATS = {f.name: f for f in (F32, F16, Q8_0, Q4_0, Q4_1)}
QUANT_FORMATS = ("q8_0", "q4_0", "q4_1")
