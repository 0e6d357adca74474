"""Small GGUF llama files for tests, written with gguf.GGUFWriter."""

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
    path, cfg=CFG, fmt="q8_0", seed=0, drop=(), reshape=None, tokenizer=True, arch="llama"
):
    w = GGUFWriter(str(path), arch)
    w.add_block_count(cfg.layers)
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.hidden)
    w.add_feed_forward_length(cfg.ffn)
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_vocab_size(cfg.vocab)
    if tokenizer:
        tokens = [bytes([b]).decode("latin-1") for b in range(cfg.vocab)]
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_merges([])
    for name, arr in random_weights(cfg, seed).items():
        if name in drop:
            continue
        if reshape and name in reshape:
            arr = np.zeros(reshape[name], np.float32)
        if arr.ndim == 2 and fmt != "f32":
            q = quantize_rows(arr, fmt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType[fmt.upper()])
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def spec_for(path, tmp_path, quantize="keep", extra=""):
    spec = tmp_path / "m.cke"
    spec.write_text(f"""
model m {{ family llama; weights gguf("{path}"); {extra} }}
cluster c {{ node n0 {{ cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run m on c; quantize weights {quantize} }}
""")
    return spec
