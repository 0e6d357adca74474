"""The llama family: RMSNorm, RoPE, grouped-query attention, SwiGLU, optional tied embeddings
(the shared graph, `ckeir.models.transformer`, with no extra blocks).

GGUF llama files store Q/K permuted for RoPE on interleaved pairs.  `LlamaConfig`,
`build_program` and `build_module` are the shared config and builder under their first names.
"""

from __future__ import annotations

from ckeir.models.family import Family
from ckeir.models.transformer import ModelConfig, build_module, build_program

FAMILY = Family(name="llama", gguf_arch="llama")

LlamaConfig = ModelConfig

__all__ = ["FAMILY", "LlamaConfig", "build_module", "build_program"]
