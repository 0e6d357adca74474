"""`Program.generate_many` on a batched pipeline of local ranks (specs/tiny-pipeline-batch4.cke):
each prompt's ids what `generate` gives it alone, and with `report=True` the run's report
of the batch as it ran."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir
from ckeir.errors import CkeError

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


def test_sampling_on_ranks_is_refused_by_name(prog):
    with pytest.raises(CkeError, match="decodes greedily for now"):
        prog.generate_many(PROMPTS, 6, temperature=1.0)
