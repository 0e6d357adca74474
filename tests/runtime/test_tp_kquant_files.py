"""Tensor parallelism over the model file users download, its blocks kept (issue 15): Gemma 3
270M (Q5_0, Q4_K, Q6_K, Q8_0; one key/value head, held by both nodes) on two local ranks gives
the single rank's ids, logits bit for bit (the reductions split along K are summed in the same
whole chunks on one rank and on two), and the ranks hold the shards the planner counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from needs import GEMMA3_GGUF, needs_gemma3
from test_tp_kquant import held, logits, planned_weights

import ckeir
from ckeir.models.files import GGUFFile
from ckeir.ranks import run_local, run_rank

pytestmark = pytest.mark.slow

SPECS = Path(__file__).parents[2] / "specs"
GEMMA_PROMPT = [2, 14946, 3324, 496, 990, 236764]  # "Once upon a time,"
N = 8


def same_as_one_rank(tp, one, prompt, schedule=None) -> dict:
    run = run_local(ckeir.compile(tp, schedule=schedule, threads=1), prompt, N, collect_logits=True)
    with ckeir.compile(one, threads=1) as prog:
        want = run_rank(prog, prompt, N, collect_logits=True)
    assert run["tokens"] == want["tokens"] and len(want["tokens"]) == N
    assert all((a == b).all() for a, b in zip(logits(run), logits(want), strict=True))
    return run


@needs_gemma3
def test_gemma3_270m_on_two_nodes_holds_its_blocks_and_gives_one_ranks_ids(tmp_path):
    """specs/gemma3-270m-tp.cke: both ranks hold the key/value head (attn_k, attn_v whole) and
    half of each split matrix in whole blocks, as the planner counts them."""
    tp = SPECS / "gemma3-270m-tp.cke"
    ranks = [held(tp, r) for r in (0, 1)]
    assert planned_weights(tp, tmp_path) == {r: sum(h.values()) for r, h in enumerate(ranks)}
    stored = GGUFFile(GEMMA3_GGUF)
    for kind, parts in (("attn_k", 1), ("attn_v", 1), ("attn_q", 2), ("ffn_down", 2)):
        name = f"blk.0.{kind}.weight"
        assert [h[name] for h in ranks] == [stored.data(name).nbytes // parts] * 2
    same_as_one_rank(tp, SPECS / "gemma3-270m.cke", GEMMA_PROMPT, schedule="tensor")
