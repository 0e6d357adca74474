"""`Program.generate_many` on a batched pipeline of local ranks (specs/tiny-pipeline-batch4.cke):
each prompt's ids what `generate` gives it alone (greedy or sampled with a seed), and with
`report=True` the run's report of the batch as it ran."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[1, 2, 3], [7], [200, 100, 50, 25], [5, 5, 5, 5, 5], [42, 43]]


@pytest.fixture(scope="module")
def prog():
    with ckeir.compile(ROOT / "specs" / "tiny-pipeline-batch4.cke") as p:
        yield p


def test_each_prompt_as_alone(prog):
    assert prog.world_size == 2
    alone = [prog.generate(ids, 6) for ids in PROMPTS]
    assert prog.generate_many(PROMPTS, 6) == alone
    ids, report = prog.generate_many(PROMPTS, 6, report=True)
    assert ids == alone
    assert report["batch"]["sequences"] == len(PROMPTS)


def test_seeded_draws_over_the_ranks_are_each_prompts_alone(prog):
    """Rank 0 schedules and draws each sequence's ids with a sampler of its own, seeded as
    `generate` seeds one prompt alone (on the same ranks, the last stage drawing)."""
    options = dict(temperature=1.1, top_k=40, repeat_penalty=1.15, seed=21)
    alone = [prog.generate(ids, 6, **options) for ids in PROMPTS]
    assert alone != [prog.generate(ids, 6) for ids in PROMPTS]
    assert prog.generate_many(PROMPTS, 6, **options) == alone
    ids, report = prog.generate_many(PROMPTS, 6, report=True, **options)
    assert ids == alone and report["batch"]["sequences"] == len(PROMPTS)
