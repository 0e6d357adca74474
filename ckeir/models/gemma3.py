"""The gemma3 family (llama.cpp's gemma3 graph): embeddings times sqrt(hidden); four RMSNorms
a layer (before and after attention, before and after the FFN, each "after" norm before its
residual add; GGUF stores the norm weights with Gemma's +1 already added); a per-head RMSNorm
of Q and K before RoPE; a GELU (tanh) gated FFN; sliding-window attention on layers with
i % 6 < 5 (the window from the file, RoPE base 10,000 on those layers and the file's base on
the global ones); the output tied to the embedding table.  GGUF gemma3 files store Q/K
unpermuted: RoPE pairs the halves of each head (llama.cpp's NEOX style), as Hugging Face's
checkpoints do; a safetensors checkpoint stores the norm weights w without the +1, which
llama.cpp's converter adds to every `*norm.weight` (and ckeir as it reads one)."""

from __future__ import annotations

from ckeir.models.family import Family

FAMILY = Family(
    name="gemma3",
    gguf_arch="gemma3",
    post_norms=True,
    qk_norm=True,
    gate="gelu",
    embed_scale=True,
    sliding_period=6,
    window=512,
    local_rope_theta=10000.0,
    gguf_rope_style="halves",
    tied_by_default=True,
    hf_layer_names=(
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
    ),
    hf_marker="pre_feedforward_layernorm",
    hf_norm_shift=1.0,
)
