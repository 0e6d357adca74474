"""Small GGUF gemma3 files for tests, written with gguf.GGUFWriter as llama.cpp's converter
writes them: `gemma3.*` keys, 64-wide heads that are not hidden / heads, a sliding window,
four norms a layer and the per-head Q/K norms, no output.weight (tied)."""

from __future__ import annotations

from gguf import GGUFWriter
from ggufgen import write_file

from ckeir.models.transformer import ModelConfig
from ckeir.runtime.weights import random_weights

CFG = ModelConfig(
    vocab=256, hidden=96, layers=7, heads=4, kv_heads=1, ffn=128, context=64,
    norm_eps=1e-6, rope_theta=1e6, tie_embeddings=True, family="gemma3", key_length=64,
    window=16,
)  # fmt: skip


def write_gemma3(path, cfg=CFG, fmt="q8_0", arch="gemma3", drop=(), reshape=None, meta=None):
    """A gemma3 GGUF of `cfg`; `drop` leaves tensors out, `reshape` gives some another shape,
    `meta` replaces metadata (key -> (value, GGUFValueType) or None to leave it out)."""
    meta = meta or {}
    w = GGUFWriter(str(path), arch)
    a = arch + "."
    adds = {
        a + "block_count": lambda: w.add_block_count(cfg.layers),
        a + "context_length": lambda: w.add_context_length(cfg.context),
        a + "embedding_length": lambda: w.add_embedding_length(cfg.hidden),
        a + "feed_forward_length": lambda: w.add_feed_forward_length(cfg.ffn),
        a + "attention.head_count": lambda: w.add_head_count(cfg.heads),
        a + "attention.head_count_kv": lambda: w.add_head_count_kv(cfg.kv_heads),
        a + "attention.key_length": lambda: w.add_key_length(cfg.head_dim),
        a + "attention.value_length": lambda: w.add_value_length(cfg.head_dim),
        a + "attention.layer_norm_rms_epsilon": lambda: w.add_layer_norm_rms_eps(cfg.norm_eps),
        a + "attention.sliding_window": lambda: w.add_sliding_window(cfg.window),
        a + "rope.freq_base": lambda: w.add_rope_freq_base(cfg.rope_theta),
    }
    write_file(w, adds, meta, random_weights(cfg, 0), fmt, drop, reshape, 1.0)
    return path


def gemma3_spec(path, tmp_path, family="gemma3", extra=""):
    spec = tmp_path / "g.cke"
    spec.write_text(f"""
model g {{ family {family}; weights gguf("{path}"); {extra} }}
cluster c {{ node n0 {{ cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run g on c; quantize weights keep }}
""")
    return spec
