"""`NativeSlots`: a `batch B` spec's batched decode program as B sequence slots.  Through the
continuous-batching scheduler, each prompt's ids equal what `generate` gives it alone on the
same spec at `batch 1` (bit for bit: every row of a step computes what its sequence's
one-row decode computes), with more prompts than slots, prompts of different lengths and
one that fills its slot's context, on 1 and 2 threads; on a random-weight model and on
SmolLM2-135M as shipped."""

from __future__ import annotations

import numpy as np
import pytest
from smollm2 import SPEC as SMOLLM2
from smollm2 import needs_smollm2

from ckeir.api import Program
from ckeir.backends.llvm.engine import NativeEngine, NativeSlots
from ckeir.errors import CkeError
from ckeir.runtime.batching import Scheduler, generate_many
from ckeir.runtime.generate import generate_stream

SPEC = """
model m {{
  family llama; vocab 384; hidden 128; layers 2; heads 4; kv_heads 2; ffn 256
  context 160; weights random(seed = 5)
}}
cluster c {{ node n0 {{ cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run m on c; quantize weights {fmt} except [token_embd]; batch {batch} }}
"""


class Counted(NativeSlots):
    """Records the rows of every decode step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[int] = []

    def decode(self, rows):
        self.steps.append(len(rows))
        return super().decode(rows)


def compiled(tmp_path, fmt: str, batch: int) -> Program:
    spec = tmp_path / f"m-{fmt}-b{batch}.cke"
    spec.write_text(SPEC.format(fmt=fmt, batch=batch))
    return Program(spec, threads=2)


def alone(prog: Program, prompts, n: int, threads: int) -> list[list[int]]:
    """Each prompt through `generate` on a one-sequence engine of `threads` threads; a
    continuation stops at the context, as a batched sequence does."""
    c = prog.config
    engine = NativeEngine(
        prog.lowered, prog.compiled, prog.weights, (c.layers, c.context, c.kv_dim), threads,
        adaptive=False,
    )  # fmt: skip
    try:
        return [
            list(generate_stream(engine, p, min(n, c.context - len(p)), c.vocab)) for p in prompts
        ]
    finally:
        engine.close()


def slots_of(prog: Program, threads: int) -> Counted:
    return Counted(prog.lowered, prog.compiled, prog.weights, threads, adaptive=False)


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
def test_many_prompts_equal_each_alone_on_1_and_2_threads(tmp_path, fmt):
    """Six prompts (one of 150 ids, whose continuation fills the context of 160) through 4
    slots: the steps hold up to 4 rows, and every prompt's ids are generate's at batch 1."""
    one, four = compiled(tmp_path, fmt, 1), compiled(tmp_path, fmt, 4)
    assert four.lowered.programs["decode"].cache_shape == (4, 2, 160, 64)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 384, n).tolist() for n in (3, 40, 1, 17, 150, 9)]
    for threads in (1, 2):
        want = alone(one, prompts, 20, threads)
        assert [len(w) for w in want] == [20, 20, 20, 20, 10, 20]
        slots = slots_of(four, threads)
        try:
            got = generate_many(slots, prompts, 20)
        finally:
            slots.close()
        assert got == want
        assert max(slots.steps) == 4 and min(slots.steps) < 4


def test_a_row_gets_its_logits_whoever_shares_the_step(tmp_path):
    """The same sequence decoded alone and beside three others (at other positions, in other
    slots): the same logits, bit for bit, and those of the batch-1 program's decode."""
    one, four = compiled(tmp_path, "q4_1", 1), compiled(tmp_path, "q4_1", 4)
    c = one.config
    engine = NativeEngine(
        one.lowered, one.compiled, one.weights, (c.layers, c.context, c.kv_dim), 2
    )
    slots = slots_of(four, 2)
    try:
        prompt = list(range(10, 30))
        engine.prefill(np.array(prompt, np.int32), 0)
        want = engine.decode(7, 20)
        for slot in range(4):  # every slot's cache holds a sequence of its own length
            slots.prefill(slot, np.array(prompt[: 20 - slot], np.int32), 0)
        by_itself = slots.decode([(0, 7, 20)])[0]
        slots.prefill(0, np.array(prompt, np.int32), 0)  # the row's cache rows again
        beside = slots.decode([(3, 5, 17), (0, 7, 20), (1, 9, 19), (2, 11, 18)])[1]
    finally:
        slots.close()
        engine.close()
    assert by_itself[0] == beside[0] == want[0]
    assert by_itself[1].tobytes() == beside[1].tobytes() == want[1].tobytes()


def test_bad_rows_are_refused(tmp_path):
    slots = slots_of(compiled(tmp_path, "q8_0", 4), 1)
    try:
        with pytest.raises(CkeError, match="a decode step has slot 1 twice"):
            slots.decode([(1, 3, 0), (1, 4, 0)])
        with pytest.raises(CkeError, match="outside its context"):
            slots.decode([(0, 3, 160)])
        with pytest.raises(CkeError, match=r"slot 4 is not one of the engine's 4 slots \(0..3\)"):
            slots.prefill(4, np.array([1, 2], np.int32), 0)
        with pytest.raises(CkeError, match="1 to 4 rows"):
            slots.decode([(s, 1, 0) for s in range(4)] * 2)
        assert slots.steps == [2, 1, 8]  # refused before anything ran
    finally:
        slots.close()


def test_a_batch_1_program_is_not_a_slot_engine(tmp_path):
    prog = compiled(tmp_path, "q8_0", 1)
    with pytest.raises(CkeError, match="batched decode program"):
        NativeSlots(prog.lowered, prog.compiled, prog.weights, 1)


def test_memory_regions_hold_the_whole_kv_cache_once(tmp_path):
    slots = slots_of(compiled(tmp_path, "q8_0", 4), 1)
    try:
        caches = [r for r in slots.memory_regions() if r.name == "kv_cache"]
        assert [r.length for r in caches] == [4 * 2 * 160 * 64 * 4] * 2
    finally:
        slots.close()


@needs_smollm2
@pytest.mark.slow
def test_smollm2_batch_4_each_prompt_equals_generate(tmp_path):
    spec = tmp_path / "smollm2-b4.cke"
    spec.write_text(
        SMOLLM2.read_text().replace("quantize weights keep", "quantize weights keep; batch 4")
    )
    with Program(SMOLLM2, threads=2) as prog:
        text = "Once upon a time, in a land far away, there lived a curious little fox. " * 4
        story = prog.tokenizer.encode(text)
        prompts = [[6403, 1980, 253, 655], story, story[:37], [1, 2, 3, 4, 5], story[10:30]]
        want = [prog.generate(p, 12) for p in prompts]
    with Program(spec, threads=2) as batched:
        slots = slots_of(batched, 2)
        try:
            with Scheduler(slots) as scheduler:
                got = scheduler.generate_many(prompts, 12)
        finally:
            slots.close()
    assert got == want
    assert max(slots.steps) == 4


def test_generate_on_a_batched_program_runs_its_sequence_in_slot_0(tmp_path):
    """A `batch 4` Program's own engine (generate, and OneSequenceSlots' engines) runs the
    batched decode program one row at a time in slot 0 of slot-major caches: generate's
    ids are the `batch 1` program's."""
    one, four = compiled(tmp_path, "q4_1", 1), compiled(tmp_path, "q4_1", 4)
    prompt = list(range(40, 77))
    try:
        assert four.engine.kcache.shape == (4, 2, 160, 64)
        assert four.generate(prompt, 16) == one.generate(prompt, 16)
    finally:
        one.close()
        four.close()
