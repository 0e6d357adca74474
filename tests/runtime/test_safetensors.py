"""Weights from a Hugging Face style safetensors file: tensor names mapped to GGUF's, the
hyper-parameters stated in the spec, memory-mapped loading, and the same tokens as the same
numbers given as random weights."""

import json
import struct

import numpy as np
import pytest
from cli_runner import ckec

import ckeir
from ckeir.errors import CkeError, ModelFileError
from ckeir.models.llama import LlamaConfig
from ckeir.runtime.weights import random_weights

safetensors_numpy = pytest.importorskip("safetensors.numpy")

CFG = LlamaConfig(vocab=256, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, context=64)
HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
SIZES = "vocab 256; hidden 64; layers 2; heads 4; kv_heads 2; ffn 128; context 64"


def hf_name(name):
    if name in HF:
        return HF[name]
    _, i, kind, _ = name.split(".")
    return f"model.layers.{i}.{LAYER[kind]}.weight"


def write(tmp_path, weights, sizes=SIZES, extra=""):
    st = tmp_path / "model.safetensors"
    safetensors_numpy.save_file({hf_name(k): v for k, v in weights.items()}, str(st))
    spec = tmp_path / "m.cke"
    spec.write_text(f"""
model m {{ family llama; {sizes}; weights safetensors("model.safetensors"); {extra} }}
cluster c {{ node n0 {{ cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run m on c; quantize weights f32 }}
""")
    return spec


def test_same_tokens_as_the_same_numbers_in_memory(tmp_path):
    w = random_weights(CFG, seed=4)
    spec = write(tmp_path, w)
    got = ckeir.compile(spec).generate([1, 2, 3], 12)
    rand = tmp_path / "r.cke"
    rand.write_text(
        spec.read_text().replace('safetensors("model.safetensors")', "random(seed = 4)")
    )
    assert got == ckeir.compile(rand, backend="reference").generate([1, 2, 3], 12)


def test_missing_tensor_is_named(tmp_path):
    w = random_weights(CFG, seed=4)
    del w["blk.1.ffn_up.weight"]
    with pytest.raises(ModelFileError, match="blk.1.ffn_up.weight.*missing"):
        ckeir.compile(write(tmp_path, w), backend="reference")  # before any IR is built


def test_sizes_must_be_stated(tmp_path):
    with pytest.raises(CkeError, match="hyper-parameters|state them"):
        ckeir.compile(write(tmp_path, random_weights(CFG, 4), sizes="vocab 256"))


def test_not_a_safetensors_file(tmp_path):
    spec = write(tmp_path, random_weights(CFG, 4))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError, match="model.safetensors"):
        ckeir.compile(spec, backend="reference")


@pytest.mark.parametrize(
    "sizes, message",
    [
        (
            SIZES.replace("layers 2", "layers 1"),
            "the model has 1 layers, but the file holds tensors for 2",
        ),
        (
            SIZES.replace("layers 2", "layers 3"),
            "the model has 3 layers, but the file holds tensors for 2",
        ),
        (SIZES.replace("ffn 128", "ffn 96"), "tensor 'blk.0.ffn_gate.weight' has shape [128, 64]"),
    ],
)
def test_stated_sizes_must_match_the_tensors(tmp_path, sizes, message):
    """The spec's hyper-parameters are checked against the file's tensors, extra layers too
    (a 1-layer model once ran on a 2-layer file, ignoring the second)."""
    spec = write(tmp_path, random_weights(CFG, 4), sizes=sizes)
    with pytest.raises(ModelFileError) as e:
        _ = ckeir.compile(spec, backend="reference").weights
    assert "model.safetensors" in str(e.value) and message in str(e.value), str(e.value)


def write_raw(tmp_path, weights, stored):
    """`weights` as a safetensors file whose tensors `stored` names are in another type:
    name -> (safetensors dtype, bytes); written by hand (numpy has no bfloat16)."""
    header, body = {}, b""
    for name, w in weights.items():
        dtype, data = stored.get(name, ("F32", w.tobytes()))
        header[hf_name(name)] = {
            "dtype": dtype,
            "shape": list(w.shape),
            "data_offsets": [len(body), len(body) + len(data)],
        }
        body += data
    spec = write(tmp_path, weights)
    head = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + body)
    return spec


def bf16(w):
    return (w.view(np.uint32) >> 16).astype(np.uint16)


UP = "blk.0.ffn_up.weight"


@pytest.mark.parametrize(
    "dtype, stored, loaded",
    [
        ("F16", lambda w: w.astype(np.float16), lambda w: w.astype(np.float16).astype(np.float32)),
        ("BF16", bf16, lambda w: (bf16(w).astype(np.uint32) << 16).view(np.float32)),
    ],
)
def test_half_precision_tensors_are_read(tmp_path, dtype, stored, loaded):
    w = random_weights(CFG, 4)
    spec = write_raw(tmp_path, w, {UP: (dtype, stored(w[UP]).tobytes())})
    prog = ckeir.compile(spec, backend="reference")
    np.testing.assert_array_equal(prog.weights[UP], loaded(w[UP]))
    assert len(prog.generate([1, 2, 3], 3)) == 3


@pytest.mark.parametrize("dtype, size", [("F8_E4M3", 1), ("I64", 8), ("BOOL", 1)])
def test_unreadable_tensor_types_are_refused(tmp_path, dtype, size):
    w = random_weights(CFG, 4)
    spec = write_raw(tmp_path, w, {UP: (dtype, bytes(w[UP].size * size))})
    with pytest.raises(ModelFileError) as e:
        _ = ckeir.compile(spec, backend="reference").weights
    assert "model.safetensors" in str(e.value) and f"'{UP}' is stored as {dtype}" in str(e.value)


def test_stated_layers_are_checked_before_any_ir_is_built(tmp_path):
    """A layer count the file contradicts is refused by compiling alone (`--emit=mlir` reads
    no weights): a spec's sizes never size the IR, passes and code generation first."""
    spec = write(tmp_path, random_weights(CFG, 4), sizes=SIZES.replace("layers 2", "layers 3"))
    res = ckec(spec, "--emit=mlir")
    assert res.returncode == 1, res.stdout[:200]
    assert "model.safetensors" in res.stderr and "holds tensors for 2" in res.stderr, res.stderr
    assert not res.stdout
