"""The gemma3 family on the shared graph (ckeir.models.transformer): the blocks it adds to a
llama layer, which layers attend in a window and with which RoPE base, its weights, and that
upstream mlir-opt reads its programs back unchanged."""

from __future__ import annotations

from collections import Counter

import attrs
import numpy as np
import pytest
from needs import needs_mlir_opt

from ckeir.frontend.semantic import KNOWN_FAMILIES
from ckeir.ir import parse_ir, print_ir, verify
from ckeir.models.family import known_families
from ckeir.models.transformer import ModelConfig, build_module
from ckeir.passes import PassContext, PassManager, parse_pipeline

from .test_mlir_opt import assert_unchanged_by_mlir_opt

GEMMA = ModelConfig(
    vocab=64, hidden=48, layers=7, heads=2, kv_heads=1, ffn=96, context=32,
    family="gemma3", key_length=32, window=8, rope_theta=1e6, tie_embeddings=True,
)  # fmt: skip

LAYER_ORDER = [
    "cke.rmsnorm", "cke.matmul", "cke.rmsnorm", "cke.rope", "cke.matmul", "cke.rmsnorm",
    "cke.rope", "cke.matmul", "cke.attention", "cke.matmul", "cke.rmsnorm", "cke.add",
    "cke.rmsnorm", "cke.matmul", "cke.matmul", "cke.gelu_mul", "cke.matmul", "cke.rmsnorm",
    "cke.add",
]  # fmt: skip


def typed(cfg: ModelConfig, batch: int = 1):
    module = build_module(cfg, max_tokens=4, batch=batch)
    PassManager(parse_pipeline("shape-infer,tile,plan-memory")).run(module, PassContext())
    return module


def layer_ops(func, layer: int) -> list:
    return [
        op for op in func.regions[0].entry.ops
        if op.attr("layer") == layer and op.name != "cke.weight"
    ]  # fmt: skip


@pytest.mark.parametrize("batch", [1, 3])
def test_a_gemma3_layer_adds_norms_and_a_gelu_gate(batch):
    for func in typed(GEMMA, batch).regions[0].entry.ops:
        for layer in range(GEMMA.layers):
            assert [op.name for op in layer_ops(func, layer)] == LAYER_ORDER
        heads = [
            op for op in func.regions[0].entry.ops
            if op.name == "cke.rmsnorm" and op.attr("head_dim") is not None
        ]  # fmt: skip
        assert len(heads) == 2 * GEMMA.layers
        assert {op.operands[1].type.shape for op in heads} == {(32,)}
        assert {op.operands[0].type.shape[1] for op in heads} == {64, 32}  # Q: 2 heads, K: 1


def test_five_of_six_layers_attend_in_a_window_with_the_local_rope_base():
    func = typed(GEMMA).regions[0].entry.ops[1]
    windows = [op.attr("window") for op in func.regions[0].entry.ops if op.name == "cke.attention"]
    assert windows == [8, 8, 8, 8, 8, None, 8]
    thetas = Counter(
        (op.attr("layer"), op.attr("theta"))
        for op in func.regions[0].entry.ops
        if op.name == "cke.rope"
    )
    assert thetas == {(i, 1e6 if i == 5 else 1e4): 2 for i in range(7)}


def test_embeddings_are_scaled_by_sqrt_hidden_as_float32():
    func = typed(GEMMA).regions[0].entry.ops[0]
    embed = next(op for op in func.regions[0].entry.ops if op.name == "cke.embed")
    assert embed.attr("scale") == float(np.float32(np.sqrt(48)))


def test_a_window_no_shorter_than_the_context_is_left_out():
    cfg = attrs.evolve(GEMMA, window=32)
    func = typed(cfg).regions[0].entry.ops[1]
    assert all(op.attr("window") is None for op in func.regions[0].entry.ops)


def test_gemma3_weights_are_llamas_plus_four_norms_a_layer_and_no_output():
    llama = attrs.evolve(GEMMA, family="llama", tie_embeddings=True)
    extra = set(GEMMA.weight_shapes()) - set(llama.weight_shapes())
    per_layer = {"attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"}
    assert extra == {f"blk.{i}.{n}.weight" for i in range(7) for n in per_layer}
    assert GEMMA.weight_shapes()["blk.0.attn_q_norm.weight"] == (32,)
    assert GEMMA.weight_shapes()["blk.0.attn_q.weight"] == (64, 48)  # heads x 32, not hidden


def test_the_frontend_knows_every_family_module():
    assert tuple(sorted(KNOWN_FAMILIES)) == known_families()


@needs_mlir_opt
@pytest.mark.mlir
@pytest.mark.parametrize("batch", [1, 4])
def test_gemma3_graphs_pass_through_mlir_opt_unchanged(batch):
    built = build_module(GEMMA, max_tokens=4, batch=batch)
    texts = [print_ir(built), print_ir(typed(GEMMA, batch))]
    assert_unchanged_by_mlir_opt(texts)
    for text in texts:
        verify(parse_ir(text))
