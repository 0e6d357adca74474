"""Hypothesis strategies for GGUF headers: metadata of any type and value under the keys
ckeir reads, counts that lie, tensor infos of any shape, type and offset."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from .mutators import (
    GGUF_ARRAY,
    GGUF_SCALARS,
    GGUF_STRING,
    base_kvs,
    gguf_header,
    gguf_kv,
    gguf_value,
)

KEYS = (
    "general.architecture",
    "general.alignment",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "llama.vocab_size",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
)
_INT_RANGES = {
    0: (0, 2**8 - 1),
    1: (-(2**7), 2**7 - 1),
    2: (0, 2**16 - 1),
    3: (-(2**15), 2**15 - 1),
    4: (0, 2**32 - 1),
    5: (-(2**31), 2**31 - 1),
    10: (0, 2**64 - 1),
    11: (-(2**63), 2**63 - 1),
}


def scalar(vtype: int) -> st.SearchStrategy:
    if vtype in _INT_RANGES:
        lo, hi = _INT_RANGES[vtype]
        return st.one_of(st.integers(lo, hi), st.sampled_from((lo, hi, 0, 1, 64)))
    if vtype == 6:
        return st.floats(width=32)
    if vtype == 12:
        return st.floats()
    if vtype == 7:
        return st.booleans()
    return st.one_of(st.text(max_size=20), st.binary(max_size=20), st.just("llama"))


def value(vtype: int) -> st.SearchStrategy:
    if vtype == GGUF_ARRAY:
        return st.sampled_from((*GGUF_SCALARS, GGUF_STRING)).flatmap(
            lambda etype: st.tuples(st.just(etype), st.lists(scalar(etype), max_size=6))
        )
    return scalar(vtype)


@st.composite
def metadata(draw) -> bytes:
    """One metadata entry, of a type drawn independently of what its key should hold."""
    key = draw(st.sampled_from(KEYS))
    vtype = draw(st.sampled_from((*GGUF_SCALARS, GGUF_STRING, GGUF_ARRAY)))
    return gguf_kv(key, vtype, draw(value(vtype)))


@st.composite
def llama_metadata(draw) -> list[bytes]:
    """A plausible llama header's entries, each kept, dropped or given any type and value."""
    out = []
    for key, (vtype, val) in base_kvs().items():
        fate = draw(st.sampled_from(("keep", "keep", "drop", "change")))
        if fate == "change":
            vtype = draw(st.sampled_from((*GGUF_SCALARS, GGUF_STRING, GGUF_ARRAY)))
            val = draw(value(vtype))
        if fate != "drop":
            out.append(gguf_kv(key, vtype, val))
    return out


@st.composite
def tensor_info(draw) -> bytes:
    name = draw(st.sampled_from(("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight")))
    dims = draw(st.lists(st.sampled_from((0, 1, 64, 256, 2**32, 2**63 - 1)), max_size=5))
    n_dims = draw(st.one_of(st.just(len(dims)), st.integers(0, 2**32 - 1)))
    ttype = draw(st.one_of(st.sampled_from((0, 1, 8, 2, 3)), st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from((0, 32, 64, 3, 2**40, 2**64 - 1)))
    head = gguf_value(GGUF_STRING, name) + struct.pack("<I", n_dims)
    return head + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, offset)


@st.composite
def gguf_files(draw) -> bytes:
    """A GGUF header (metadata, tensor infos, counts that may lie), then a little data."""
    kvs = draw(llama_metadata()) + draw(st.lists(metadata(), max_size=3))
    tensors = draw(st.lists(tensor_info(), max_size=3))
    n_kv = draw(st.one_of(st.just(len(kvs)), st.sampled_from((0, 2**16, 2**40, 2**64 - 1))))
    n_tensors = draw(st.one_of(st.just(len(tensors)), st.sampled_from((0, 2**20, 2**64 - 1))))
    body = gguf_header(kvs, n_tensors, n_kv) + b"".join(tensors)
    body += b"\x00" * (-len(body) % 32)
    return body + draw(st.binary(max_size=512))
