"""Small GGUF llama files for tests: whole ones (and ones with metadata of any type or value)
written with gguf.GGUFWriter, and raw GGUF bytes for damage the writer refuses to make."""

import struct

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ckeir.models.llama import LlamaConfig
from ckeir.runtime.weights import quantize_rows, random_weights

CFG = LlamaConfig(
    vocab=256,
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    ffn=128,
    context=64,
    norm_eps=1e-5,
    rope_theta=10000.0,
    tie_embeddings=True,
    rope_style="interleaved",
)


def write_gguf(
    path,
    cfg=CFG,
    fmt="q8_0",
    seed=0,
    drop=(),
    reshape=None,
    tokenizer=True,
    arch="llama",
    meta=None,
):
    """A llama GGUF of `cfg`.  `meta` replaces metadata: key -> (value, GGUFValueType[,
    item type]) written as given (wrong types included), or None to leave the key out."""
    meta = meta or {}
    w = GGUFWriter(str(path), arch)
    adds = {
        "llama.block_count": lambda: w.add_block_count(cfg.layers),
        "llama.context_length": lambda: w.add_context_length(cfg.context),
        "llama.embedding_length": lambda: w.add_embedding_length(cfg.hidden),
        "llama.feed_forward_length": lambda: w.add_feed_forward_length(cfg.ffn),
        "llama.attention.head_count": lambda: w.add_head_count(cfg.heads),
        "llama.attention.head_count_kv": lambda: w.add_head_count_kv(cfg.kv_heads),
        "llama.attention.layer_norm_rms_epsilon": lambda: w.add_layer_norm_rms_eps(cfg.norm_eps),
        "llama.rope.freq_base": lambda: w.add_rope_freq_base(cfg.rope_theta),
        "llama.vocab_size": lambda: w.add_vocab_size(cfg.vocab),
    }
    if tokenizer:
        tokens = [bytes([b]).decode("latin-1") for b in range(cfg.vocab)]
        adds |= {
            "tokenizer.ggml.model": lambda: w.add_tokenizer_model("gpt2"),
            "tokenizer.ggml.tokens": lambda: w.add_token_list(tokens),
            "tokenizer.ggml.merges": lambda: w.add_token_merges([]),
        }
    write_file(w, adds, meta, random_weights(cfg, seed), fmt, drop, reshape, 0.0)
    return path


def write_file(w, adds, meta, weights, fmt, drop=(), reshape=None, fill=0.0) -> None:
    """Finish a GGUF `w`: each metadata key of `adds` (key -> its writer call) that `meta`
    does not replace, then `meta`'s (None: left out), then the tensors in `fmt` (matrices
    packed), less `drop`, those in `reshape` given that shape filled with `fill`."""
    for key, add in adds.items():
        if key not in meta:
            add()
    for key, value in meta.items():
        if value is not None:
            w.add_key_value(key, *value)
    for name, arr in weights.items():
        if name in drop:
            continue
        if reshape and name in reshape:
            arr = np.full(reshape[name], fill, np.float32)
        if arr.ndim == 2 and fmt != "f32":
            q = quantize_rows(arr, fmt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType[fmt.upper()])
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spec_for(path, tmp_path, quantize="keep", extra=""):
    spec = tmp_path / "m.cke"
    spec.write_text(f"""
model m {{ family llama; weights gguf("{path}"); {extra} }}
cluster c {{ node n0 {{ cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run m on c; quantize weights {quantize} }}
""")
    return spec


# ---- raw bytes, for damage the writer refuses to make ---------------------------------------


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def gstr(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return u64(len(data)) + data


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One metadata key/value: the key, its GGUFValueType, the value's bytes as given."""
    return gstr(key) + u32(vtype) + payload


def array(item: int, count: int, payload: bytes = b"") -> bytes:
    """An array value: item type, the count it claims, then whatever bytes follow."""
    return u32(item) + u64(count) + payload


def tensor_info(name: str, dims, ggml_type: int = 0, offset: int = 0) -> bytes:
    """One tensor table entry (dims contiguous first, as GGUF stores them; type 0 = F32)."""
    return gstr(name) + u32(len(dims)) + b"".join(map(u64, dims)) + u32(ggml_type) + u64(offset)


def raw_gguf(kvs=(), tensors=(), n_kv=None, n_tensors=None, version=3, tail=b"") -> bytes:
    """A GGUF file's bytes; the counts default to what is given and may claim more."""
    n_kv = len(kvs) if n_kv is None else n_kv
    n_tensors = len(tensors) if n_tensors is None else n_tensors
    head = b"GGUF" + u32(version) + u64(n_tensors) + u64(n_kv)
    return head + b"".join(kvs) + b"".join(tensors) + tail
