"""The llama graph (ckeir.models.llama): its ops, weights and types for several configs, before
and after `shape-infer,tile,plan-memory`."""

from __future__ import annotations

from collections import Counter

import pytest

from ckeir.ir import parse_ir, print_ir, verify
from ckeir.ir import types as T
from ckeir.ir.core import Operation
from ckeir.models.llama import LlamaConfig, build_module, build_program
from ckeir.passes import PassContext, PassManager, parse_pipeline

CONFIGS = {
    "gqa": LlamaConfig(vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, ffn=64, context=16),
    "mha": LlamaConfig(vocab=50, hidden=48, layers=1, heads=3, kv_heads=3, ffn=96, context=8),
    "tied": LlamaConfig(
        vocab=40, hidden=32, layers=2, heads=2, kv_heads=1, ffn=48, context=12, tie_embeddings=True
    ),
    "odd": LlamaConfig(
        vocab=37,
        hidden=24,
        layers=3,
        heads=6,
        kv_heads=3,
        ffn=40,
        context=7,
        norm_eps=1e-6,
        rope_theta=500000.0,
        rope_style="interleaved",
    ),
    "smollm2_135m": LlamaConfig(
        vocab=49152,
        hidden=576,
        layers=30,
        heads=9,
        kv_heads=3,
        ffn=1536,
        context=2048,
        tie_embeddings=True,
    ),
}
ids = sorted(CONFIGS)

PER_LAYER = {
    "cke.weight": 9,
    "cke.rmsnorm": 2,
    "cke.matmul": 7,
    "cke.rope": 2,
    "cke.attention": 1,
    "cke.add": 2,
    "cke.silu_mul": 1,
}
LAYER_ORDER = [
    "cke.rmsnorm", "cke.matmul", "cke.rope", "cke.matmul", "cke.rope", "cke.matmul",
    "cke.attention", "cke.matmul", "cke.add", "cke.rmsnorm", "cke.matmul", "cke.matmul",
    "cke.silu_mul", "cke.matmul", "cke.add",
]  # fmt: skip


def funcs(module: Operation) -> dict[str, Operation]:
    return {op.attr("phase"): op for op in module.regions[0].entry.ops if op.name == "cke.func"}


def body(func: Operation) -> list[Operation]:
    return func.regions[0].entry.ops


def compiled(cfg: LlamaConfig, max_tokens: int | None = 5) -> Operation:
    module = build_module(cfg, max_tokens=max_tokens)
    PassManager(parse_pipeline("shape-infer,tile,plan-memory")).run(module, PassContext())
    return module


@pytest.fixture(scope="module", params=ids)
def config(request) -> LlamaConfig:
    return CONFIGS[request.param]


@pytest.fixture(scope="module")
def module(config) -> Operation:
    return compiled(config)


def test_builds_and_verifies_before_shape_inference(config):
    module = build_module(config)
    verify(module)
    assert set(funcs(module)) == {"prefill", "decode"}
    values = [r.type for op in module.walk() for r in op.results if op.name != "cke.argmax"]
    assert all(isinstance(t, T.UnrankedTensorType) for t in values)


def test_every_value_is_ranked_after_shape_inference(module):
    verify(module)
    for op in module.walk():
        for r in op.results:
            assert isinstance(r.type, T.TensorType), (op.name, r.type)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_op_counts(config, phase):
    func = funcs(build_module(config))[phase]
    counts = Counter(op.name for op in body(func))
    expected = Counter({name: n * config.layers for name, n in PER_LAYER.items()})
    expected.update(
        {
            "cke.embed": 1,
            "cke.weight": 2 + (not config.tie_embeddings),  # token_embd, output_norm, output
            "cke.rmsnorm": 1,
            "cke.matmul": 1,
            "cke.argmax": 1,
            "cke.return": 1,
        }
    )
    if phase == "prefill":
        expected["cke.last_token"] = 1
    assert counts == expected


def test_layer_order_and_attributes(config):
    func = funcs(build_module(config))["decode"]
    ops = [op for op in body(func) if op.name != "cke.weight"]
    for layer in range(config.layers):
        chunk = ops[1 + layer * len(LAYER_ORDER) : 1 + (layer + 1) * len(LAYER_ORDER)]
        assert [op.name for op in chunk] == LAYER_ORDER
        (attention,) = [op for op in chunk if op.name == "cke.attention"]
        assert attention.attr("layer") == layer
        assert attention.attr("heads") == config.heads
        assert attention.attr("kv_heads") == config.kv_heads
        assert attention.attr("head_dim") == config.head_dim
        for rope in (op for op in chunk if op.name == "cke.rope"):
            assert rope.attr("head_dim") == config.head_dim
            assert rope.attr("theta") == config.rope_theta
            assert rope.attr("style") == config.rope_style
    for norm in (op for op in ops if op.name == "cke.rmsnorm"):
        assert norm.attr("eps") == config.norm_eps


def test_weights_are_the_config_weight_shapes(module, config):
    for func in funcs(module).values():
        weights = [op for op in body(func) if op.name == "cke.weight"]
        by_name = {op.attr("name"): op for op in weights}
        assert len(by_name) == len(weights)  # each parameter once per program
        assert {n: op.attr("shape") for n, op in by_name.items()} == config.weight_shapes()
        for name, op in by_name.items():
            assert op.result.type == T.TensorType(config.weight_shapes()[name], T.f32)


def test_lm_head_is_tied_to_the_embedding_table_or_not(module, config):
    for func in funcs(module).values():
        ops = body(func)
        head = [op for op in ops if op.name == "cke.matmul"][-1]
        table = head.operands[1].op
        assert table.attr("name") == (
            "token_embd.weight" if config.tie_embeddings else "output.weight"
        )
        embed = next(op for op in ops if op.name == "cke.embed")
        assert (embed.operands[1].op is table) == config.tie_embeddings


def test_decode_rows_are_one_and_prefill_rows_are_dynamic(module, config):
    cache = T.MemRefType((config.layers, config.context, config.kv_dim), T.f32)
    for phase, rows in (("decode", 1), ("prefill", None)):
        func = funcs(module)[phase]
        args = func.regions[0].entry.args
        assert [a.type for a in args] == [T.TensorType((rows,), T.i32), T.i64, cache, cache]
        last = next((op for op in body(func) if op.name == "cke.last_token"), None)
        assert (last is None) == (phase == "decode")
        for op in body(func):
            if op is last:
                break
            if op.name not in ("cke.weight", "mem.arena", "cke.return"):
                assert op.result.type.shape[0] == rows, (phase, op.name, op.result.type)
        ret = body(func)[-1]
        assert ret.name == "cke.return"
        assert [v.type for v in ret.operands] == [
            T.TensorType((1,), T.i32),
            T.TensorType((1, config.vocab), T.f32),
        ]
    assert funcs(module)["prefill"].attr("max_tokens") == 5
    assert funcs(module)["decode"].attr("max_tokens") is None


def test_max_tokens_defaults_to_the_context(config):
    assert build_program(config, "prefill").attr("max_tokens") == config.context
    decode_only = build_module(config, phases=("decode",))
    assert list(funcs(decode_only)) == ["decode"]


def test_tile_and_plan_memory_annotate_the_program(module):
    for func in funcs(module).values():
        ops = body(func)
        assert ops[0].name == "mem.arena"
        assert ops[0].attr("bytes") == func.attr("arena_bytes")
        for op in ops:
            if op.name == "cke.matmul":
                tn, tk = op.attr("tile")
                assert tn > 0 and tk > 0 and tn % 16 == 0
            if op.name not in ("cke.weight", "mem.arena", "cke.return"):
                offset = op.attr("offset")
                assert offset is not None and offset % 64 == 0
                assert offset < func.attr("arena_bytes")


def test_compiled_module_prints_and_parses_back(module):
    text = print_ir(module)
    again = parse_ir(text)
    verify(again)
    assert print_ir(again) == text


def test_a_batched_decode_program_takes_one_row_per_slot(config):
    """`batch 4`: each row its own sequence's token, at its own position, in its own slot of
    caches of 4 slots; the prefill program is the one-sequence one."""
    module = build_module(config, max_tokens=5, batch=4)
    PassManager(parse_pipeline("shape-infer,tile,plan-memory")).run(module, PassContext())
    verify(module)
    one = compiled(config)
    assert print_ir(funcs(module)["prefill"]) == print_ir(funcs(one)["prefill"])
    func = funcs(module)["decode"]
    cache = T.MemRefType((4, config.layers, config.context, config.kv_dim), T.f32)
    rows = T.TensorType((None,), T.i32)
    assert [a.type for a in func.regions[0].entry.args] == [
        rows,
        T.TensorType((None,), T.i64),
        cache,
        cache,
        rows,
    ]
    assert (func.attr("slots"), func.attr("max_tokens")) == (4, 4)
    counts = Counter(op.name for op in body(func))
    assert "cke.last_token" not in counts
    assert counts["cke.attention"] == config.layers
    for op in body(func):
        if op.name == "cke.attention":
            assert len(op.operands) == 7 and op.operands[6] is func.regions[0].entry.args[4]
        if op.name == "cke.rope":
            assert op.operands[1] is func.regions[0].entry.args[1]
        if op.name not in ("cke.weight", "mem.arena", "cke.return"):
            assert op.result.type.shape[0] is None, (op.name, op.result.type)
    ret = body(func)[-1]
    assert [v.type for v in ret.operands] == [rows, T.TensorType((None, config.vocab), T.f32)]


def test_batch_one_builds_todays_programs(config):
    assert print_ir(build_module(config, max_tokens=5, batch=1)) == print_ir(
        build_module(config, max_tokens=5)
    )
