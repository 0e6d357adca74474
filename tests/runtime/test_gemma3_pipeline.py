"""Gemma 3 270M (the file users download) on a two-stage pipeline of local ranks gives one
rank's greedy ids.  A module of its own: the ranks are forked from a process whose own
programs are closed."""

from __future__ import annotations

from pathlib import Path

import pytest
from needs import needs_gemma3

import ckeir
from ckeir.ranks import run_local

pytestmark = [pytest.mark.slow, needs_gemma3]

SPECS = Path(__file__).parents[2] / "specs"
PROMPT = [2, 14946, 3324, 496, 990, 236764, 528, 496, 1944, 9744, 236764]  # "Once upon a time,..."


def test_a_two_stage_pipeline_on_the_file_gives_one_ranks_ids():
    """specs/gemma3-270m-pipeline.cke on 2 local ranks: the ids of one rank, the hidden rows
    (640 floats) crossing from stage 0 to stage 1."""
    with ckeir.compile(SPECS / "gemma3-270m.cke", threads=1) as one:
        want = one.generate(PROMPT, max_new_tokens=8)
    with ckeir.compile(SPECS / "gemma3-270m-pipeline.cke", schedule="pipeline") as two:
        run = run_local(two, PROMPT, 8)
    assert run["tokens"] == want and len(want) == 8
    assert run["ranks"][0]["bytes_sent"] >= (len(PROMPT) + 7) * 640 * 4
