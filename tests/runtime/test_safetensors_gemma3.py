"""A Gemma 3 checkpoint as Hugging Face saves it (issue 15): `model.layers.N.*` names with
four norms a layer and the per-head Q/K norms, each norm weight w stored without the +1
Gemma's RMSNorm adds (llama.cpp's converter adds it to every `*norm.weight`), no lm_head
(tied), and no hyper-parameters (the spec states them, `head_dim` and `window` included).
The same weights written as a GGUF, as the converter would, give the same logits bit for
bit."""

from __future__ import annotations

import numpy as np
import pytest
from gemma3gen import CFG, write_gemma3
from safetensors.numpy import save_file

import ckeir
from ckeir.errors import CkeError
from ckeir.models.files import GGUFFile

HF_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
PROMPT = [2, 17, 101, 33, 250, 7]


def hf_name(gguf: str) -> str:
    if gguf == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf == "output_norm.weight":
        return "model.norm.weight"
    _, layer, kind, _ = gguf.split(".")
    return f"model.layers.{layer}.{HF_LAYER[kind]}.weight"


def spec(tmp_path, name: str, weights: str, family: str = "gemma3"):
    path = tmp_path / f"{name}.cke"
    path.write_text(f"""
model g {{
  family {family}; vocab {CFG.vocab}; hidden {CFG.hidden}; layers {CFG.layers}
  heads {CFG.heads}; kv_heads {CFG.kv_heads}; ffn {CFG.ffn}; context {CFG.context}
  head_dim {CFG.head_dim}; window {CFG.window}; norm_eps {CFG.norm_eps}
  rope_theta {CFG.rope_theta}
  weights {weights}
}}
cluster c {{ node n0 {{ cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run g on c; quantize weights keep }}
""")
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """One set of weights as a GGUF (norms 1 + w, as llama.cpp's converter writes them) and
    as a safetensors checkpoint (norms w: the GGUF's minus 1, exact for norms in [0.5, 2],
    so the loader's w + 1 gives the GGUF's bits back)."""
    tmp = tmp_path_factory.mktemp("gemma3-st")
    gguf = GGUFFile(write_gemma3(tmp / "model.gguf", fmt="f32"))
    hf = {}
    for name in gguf.tensors:
        arr = np.array(gguf.data(name), np.float32)
        if name.endswith("norm.weight"):
            assert 0.5 <= arr.min() and arr.max() <= 2.0
            arr = arr - np.float32(1.0)
        hf[hf_name(name)] = arr
    save_file(hf, str(tmp / "model.safetensors"))
    return tmp


def test_the_checkpoint_computes_the_gguf_files_logits(twins):
    st = spec(twins, "st", 'safetensors("model.safetensors")')
    gg = spec(twins, "gg", 'gguf("model.gguf")')
    with ckeir.compile(st, threads=1) as a, ckeir.compile(gg, threads=1) as b:
        norm = "blk.0.post_ffw_norm.weight"
        np.testing.assert_array_equal(a.weights[norm], b.weights[norm])
        assert a.config.head_dim == 64 and a.config.rope_style == b.config.rope_style
        ta, la = a.engine.prefill(np.array(PROMPT, np.int32), 0)
        tb, lb = b.engine.prefill(np.array(PROMPT, np.int32), 0)
        np.testing.assert_array_equal(la, lb)
        assert a.generate(PROMPT, max_new_tokens=6) == b.generate(PROMPT, max_new_tokens=6)


def test_a_gemma3_checkpoint_under_another_family_is_named(twins):
    path = spec(twins, "llama", 'safetensors("model.safetensors")', family="llama")
    text = path.read_text().replace("window 16; ", "")
    path.write_text(text)
    with pytest.raises(CkeError, match="holds gemma3's tensors .*family llama"):
        ckeir.compile(path)
