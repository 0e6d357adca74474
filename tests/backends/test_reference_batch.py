"""The numpy oracle runs a batched decode program (`batch 4`): continuous batching over its
`ReferenceSlots` gives every prompt exactly what the one-sequence program (`batch 1`) gives
it alone — the same float64 arithmetic row by row — with more prompts than slots, prompts of
different lengths and sequences that reach the context; and a row's result never depends on
which other rows share its step."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckeir
from ckeir.backends.reference import ReferenceEngine, ReferenceSlots
from ckeir.errors import CkeError
from ckeir.runtime import batching
from ckeir.runtime.weights import dequantize_rows

CONTEXT = 16
SPEC = """
model m {{
  family llama; vocab 64; hidden 64; layers 2; heads 2; kv_heads 1; ffn 96
  context 16; weights random(seed = 5)
}}
cluster c {{ node n0 {{ cores 2; dram 1GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run m on c; quantize weights q8_0; batch {batch} }}
"""


@functools.cache
def program(batch: int, tmp: str):
    path = f"{tmp}/b{batch}.cke"
    with open(path, "w") as f:
        f.write(SPEC.format(batch=batch))
    return ckeir.compile(path, backend="reference")


@pytest.fixture(scope="module")
def progs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("specs"))
    return program(1, tmp), program(4, tmp)


def plain_weights(prog) -> dict[str, np.ndarray]:
    """The weights as the reference engine computes on them (quantized ones dequantized)."""
    fmts = prog.weight_formats
    return {k: dequantize_rows(v, fmts.get(k, "f32")) for k, v in prog.weights.items()}


def slots_of(prog) -> ReferenceSlots:
    return ReferenceSlots(prog.module, plain_weights(prog))


def alone(prog1, prompt: list[int], n: int) -> list[int]:
    """What generate gives the prompt alone, stopped where its sequence fills the context."""
    return prog1.generate(prompt, min(n, CONTEXT - len(prompt)))


def test_generate_many_over_slots_equals_each_prompt_alone(progs):
    prog1, prog4 = progs
    engine = slots_of(prog4)
    assert (engine.slots, engine.context, engine.vocab) == (4, CONTEXT, 64)
    assert engine.kcache.shape == (4, 2, CONTEXT, 32)
    prompts = [[3], [7, 1, 9], [60, 2, 2, 5, 8], [1] * 12, [4, 4], [9] * 15, [30, 31], [5] * 7]
    n = 6
    got = batching.generate_many(engine, prompts, n)
    want = [alone(prog1, p, n) for p in prompts]
    assert got == want
    # more prompts than slots; the 12- and 15-token prompts stopped at the context
    assert len(prompts) > engine.slots
    assert [len(g) for g in got] == [6, 6, 6, 4, 6, 1, 6, 6]


def test_the_engine_of_a_batched_module_decodes_one_sequence_as_its_slot_0(progs):
    prog1, prog4 = progs
    c = prog4.config
    engine = ReferenceEngine(prog4.module, plain_weights(prog4), (c.layers, c.context, c.kv_dim))
    one = ReferenceEngine(prog1.module, plain_weights(prog1), (c.layers, c.context, c.kv_dim))
    for e in (engine, one):
        e.prefill(np.array([5, 6, 7], np.int32), 0)
    a, la = engine.decode(11, 3)
    b, lb = one.decode(11, 3)
    assert a == b and np.array_equal(la, lb)


def test_bad_rows_are_refused_before_anything_runs(progs):
    engine = slots_of(progs[1])
    engine.prefill(0, [1, 2], 0)
    before = engine.kcache.copy()
    for rows, message in [
        ([(0, 1, 2), (0, 3, 2)], "a decode step has slot 0 twice"),
        ([(4, 1, 2)], "slot 4 is not one of the engine's 4 slots (0..3)"),
        (
            [(0, 1, CONTEXT)],
            f"slot 0: positions {CONTEXT}..{CONTEXT} are outside its context of 16",
        ),
        ([(s, 1, 2) for s in range(4)] + [(0, 1, 3)], "a decode step takes 1 to 4 rows, not 5"),
        ([], "a decode step takes 1 to 4 rows, not 0"),
        ([(1, 64, 2)], "slot 1: token id 64 is not in the model's vocabulary of 64 tokens"),
    ]:
        with pytest.raises(CkeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            engine.decode(rows)
    with pytest.raises(CkeError, match="are outside its context"):
        engine.prefill(1, [1] * 4, CONTEXT - 3)
    assert np.array_equal(engine.kcache, before)  # nothing written past a region


@pytest.fixture(scope="module")
def prefilled(progs):
    """Four sequences of different lengths, one a slot, prefilled once."""
    engine = slots_of(progs[1])
    lengths = [3, 1, 9, 5]
    rng = np.random.default_rng(0)
    for slot, n in enumerate(lengths):
        engine.prefill(slot, rng.integers(0, 64, n).astype(np.int32), 0)
    return engine, lengths


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order=st.permutations(range(4)),
    size=st.integers(1, 4),
    tokens=st.lists(st.integers(0, 63), min_size=4, max_size=4),
)
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(prefilled, order, size, tokens):
    engine, lengths = prefilled
    k0, v0 = engine.kcache.copy(), engine.vcache.copy()
    rows = [(s, tokens[s], lengths[s]) for s in order[:size]]
    together = engine.decode(rows)
    k1, v1 = engine.kcache.copy(), engine.vcache.copy()
    for row, (token, logits) in zip(rows, together, strict=True):
        engine.kcache[...], engine.vcache[...] = k0, v0
        ((tok, row_logits),) = engine.decode([row])
        assert tok == token and np.array_equal(row_logits, logits)
        slot = row[0]  # and it wrote the same cache rows into its own slot only
        assert np.array_equal(engine.kcache[slot], k1[slot])
        assert np.array_equal(engine.vcache[slot], v1[slot])
    engine.kcache[...], engine.vcache[...] = k0, v0


def test_native_slots_agree_with_the_oracle_step_by_step(progs, tmp_path):
    """The native batched decode (lower-llvm, NativeSlots) against this oracle on the same
    program and weights: every row's logits within 1e-4 of the logit scale, the same ids."""
    from ckeir.backends.llvm.engine import NativeSlots

    path = tmp_path / "b4.cke"
    path.write_text(SPEC.format(batch=4))
    prog = ckeir.compile(path)
    native = NativeSlots(prog.lowered, prog.compiled, prog.weights, threads=1)
    oracle = ReferenceSlots(prog.module, plain_weights(prog))
    try:
        prompts = {0: [3, 9, 27], 1: [5], 2: [60, 1, 2, 3, 4, 5, 6], 3: [8, 8]}
        nxt = {}
        for slot, ids in prompts.items():
            (a, la), (b, lb) = native.prefill(slot, ids, 0), oracle.prefill(slot, ids, 0)
            assert a == b and np.allclose(la.ravel(), lb.ravel(), atol=1e-4 * np.abs(lb).max())
            nxt[slot] = (b, len(ids))
        for step in range(5):
            order = [(step + i) % 4 for i in range(4 - step % 3)]  # 4, 3, 2, 4, 3 rows
            rows = [(s, *nxt[s]) for s in order]
            for (slot, _, pos), (a, la), (b, lb) in zip(
                rows, native.decode(rows), oracle.decode(rows), strict=True
            ):
                assert a == b, (step, slot)
                assert np.allclose(la, lb, atol=1e-4 * np.abs(lb).max()), (step, slot)
                nxt[slot] = (b, pos + 1)
    finally:
        native.close()
