"""`generate_many` over real engines (one per slot, as `OneSequenceSlots` takes them) gives
each prompt exactly the ids `generate` gives it alone, whichever prompts share its steps:
on the tiny spec's random weights and on SmolLM2-135M as shipped."""

from __future__ import annotations

import numpy as np
import pytest
from smollm2 import SPEC as SMOLLM2
from smollm2 import needs_smollm2

from ckeir.api import Program
from ckeir.runtime.batching import OneSequenceSlots, Scheduler, generate_many

ROOT = SMOLLM2.parents[1]


def slots_of(prog: Program, n: int) -> OneSequenceSlots:
    """n engines built as `Program` builds its own: weights and machine code shared."""
    return OneSequenceSlots([prog._make_engine(prog.weights) for _ in range(n)], prog.config.vocab)


def prompts_for(vocab: int, lengths, seed=0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """specs/tiny.cke with a context of 640: prompts longer than a prefill chunk (256) fit."""
    text = (ROOT / "specs" / "tiny.cke").read_text()
    spec = tmp_path_factory.mktemp("tiny") / "tiny640.cke"
    spec.write_text(text.replace("context    256", "context    640"))
    with Program(spec, single_rank=True, threads=1) as prog:
        assert prog.config.context == 640
        yield prog


def test_tiny_many_prompts_equal_each_alone(tiny):
    lengths = [3, 300, 1, 257, 40, 530, 9]  # 7 prompts, 3 slots; 300, 257, 530 take chunks
    prompts = prompts_for(tiny.config.vocab, lengths)
    alone = [tiny.generate(p, 12) for p in prompts]
    slots = slots_of(tiny, 3)
    try:
        assert slots.max_prefill == 256
        got = generate_many(slots, prompts, 12, token_budget=256)
        # a tighter budget puts other prompts beside each chunk: the ids stay
        again = generate_many(slots, prompts[::-1], 12, token_budget=16)
    finally:
        slots.close()
    assert got == alone
    assert again == alone[::-1]


def test_tiny_a_sequence_at_the_context_ends_there_beside_others(tiny):
    slots = slots_of(tiny, 2)
    try:
        s = Scheduler(slots)
        near, other = prompts_for(tiny.config.vocab, [634, 5], seed=1)
        full = s.submit(near, 50)
        beside = s.submit(other, 20)
        s.run()
    finally:
        slots.close()
    assert full.finish_reason == "length" and len(full.tokens) == 640 - 634
    assert full.tokens == tiny.generate(near, 6)
    assert beside.tokens == tiny.generate(other, 20)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_many_prompts_equal_each_alone():
    with Program(SMOLLM2, threads=1) as prog:
        text = "Once upon a time, in a land far away, there lived a curious little fox. " * 16
        story = prog.tokenizer.encode(text)
        assert len(story) > 256  # read in two chunks
        prompts = [[6403, 1980, 253, 655], story, story[:37], [1, 2, 3, 4, 5], story[100:140]]
        alone = [prog.generate(p, 8) for p in prompts]
        slots = slots_of(prog, 3)
        try:
            got = generate_many(slots, prompts, 8)
        finally:
            slots.close()
    assert got == alone
