"""`Program.generate_many`: several prompts through the continuous-batching scheduler, each
continuation what `generate` gives that prompt alone; more prompts than slots wait for one;
bad prompts named before anything runs; one rank only for now."""

from __future__ import annotations

from pathlib import Path

import pytest
from widths import TWO_CORES_SPEC

import ckeir
from ckeir.errors import CkeError

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[1, 2, 3], [7], [200, 100, 50, 25, 12, 6, 3], [5, 5, 5, 5], [42, 43]]


@pytest.fixture(scope="module", params=["llvm", "reference"])
def prog(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("many") / "m.cke"
    path.write_text(TWO_CORES_SPEC)
    with ckeir.compile(path, backend=request.param, threads=2) as p:
        yield p


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_each_continuation_is_what_generate_gives_it_alone(prog, slots):
    alone = [prog.generate(ids, 9) for ids in PROMPTS]
    assert prog.generate_many(PROMPTS, 9, slots=slots) == alone
    assert prog.slot_engine(slots).slots == slots
    # generate still runs on the Program's engine afterwards, as before
    assert prog.generate(PROMPTS[0], 9) == alone[0]


def test_slots_share_the_program_engine_and_its_pool(prog):
    engines = prog.slot_engine(3).engines
    assert engines[0] is prog.engine
    assert len({id(e) for e in engines}) == 3
    if prog.backend == "llvm":
        assert all(e.pool is prog.engine.pool for e in engines)


def test_a_bad_prompt_is_named_before_anything_runs(prog):
    with pytest.raises(CkeError, match=r"prompt 1: .*empty"):
        prog.generate_many([[1, 2], []], 4, slots=2)
    with pytest.raises(CkeError, match=r"prompt 0: token id 999 "):
        prog.generate_many([[999]], 4)
    with pytest.raises(CkeError, match="slots must be a positive number"):
        prog.generate_many([[1]], 4, slots=0)


def test_a_sequence_that_fills_its_slot_ends_there(prog):
    """A prompt whose continuation would pass the context gets the positions left."""
    context = prog.config.context
    prompt = [3] * (context - 4)
    (out,) = prog.generate_many([prompt], 10)
    assert out == prog.generate(prompt, 4)


def test_a_schedule_over_several_ranks_is_refused():
    with ckeir.compile(ROOT / "specs" / "tiny.cke", backend="reference") as p:
        with pytest.raises(CkeError, match="runs on 2 ranks: generate_many"):
            p.generate_many([[1, 2]], 4)


@pytest.fixture(scope="module", params=["llvm", "reference"])
def batched(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("batched") / "m.cke"
    path.write_text(
        TWO_CORES_SPEC.replace("quantize weights q8_0", "quantize weights q8_0; batch 3")
    )
    with ckeir.compile(path, backend=request.param, threads=2) as p:
        yield p


def test_a_batched_schedule_steps_its_sequences_together(batched):
    """`batch 3`: generate_many runs the batched decode program, a step's rows in one call
    (the native engine records one decode call a step, fewer than the tokens it made), and
    each prompt still gets what generate gives it alone."""
    alone = [batched.generate(ids, 9) for ids in PROMPTS]
    assert batched.generate_many(PROMPTS, 9) == alone
    engine = batched.slot_engine()
    assert engine.slots == 3 and not hasattr(engine, "engines")
    if batched.backend == "llvm":
        decode_calls = sum(1 for e in engine.events if e[0] == "decode")
        new_tokens = sum(len(ids) for ids in alone) - len(PROMPTS)  # each first from prefill
        assert decode_calls < new_tokens
        assert engine.pool is batched.engine.pool
