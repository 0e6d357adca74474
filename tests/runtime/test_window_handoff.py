"""Prefill and decode placed apart keep ring KV caches: the KV handoff finds a layer's rows
in each phase's packed cache (`plan_memory.kv_extents`) and copies those.

gemma3-tiny with 2 KV heads of 32 at context 512 (window 32, prefill calls of 256 rows:
rings of 287 rows) on two local ranks: prefill tensor parallel (one KV head a rank, layers
0..6), decode a pipeline (layers 0..3 on rank 0, 4..6 on rank 1, both heads).  A 300-id
prompt wraps the rings during prefill, before the handoff."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir

SPECS = Path(__file__).parents[2] / "specs"
RING, CONTEXT, HEAD = 287, 512, 32  # rows of a sliding layer's ring, of a global layer
F32 = 4

PAIR = """import "gemma3-tiny.cke"
cluster pair {
  node n0 { cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }
  node n1 { like n0 }
  link n0 <-> n1 { bw 10Gbit/s; latency 50us }
}
schedule mixed {
  run gemma3tiny on pair
  quantize weights q8_0 except [token_embd]
  phase prefill { stage [n0, n1] layers 0..6 }
  phase decode  { stage n0 layers 0..3; stage n1 layers 4..6 }
}
"""


def spec(tmp_path) -> Path:
    text = (SPECS / "gemma3-tiny.cke").read_text()
    text = text.replace("context    128", f"context    {CONTEXT}")
    text = text.replace("hidden     96", "hidden     128").replace("kv_heads   1", "kv_heads   2")
    (tmp_path / "gemma3-tiny.cke").write_text(text)
    (tmp_path / "pair.cke").write_text(PAIR)
    return tmp_path / "gemma3-tiny.cke"


def cache_bytes(rows: int, kv_dim: int) -> int:
    return 2 * rows * kv_dim * F32  # keys and values


@pytest.mark.slow
def test_tp_prefill_pipeline_decode_hand_over_ring_caches(tmp_path):
    from ckeir.ranks import run_local

    one_rank = spec(tmp_path)
    prompt = [int(i * 53 % 500) for i in range(300)]
    with ckeir.compile(one_rank, threads=1) as one:
        want = one.generate(prompt, max_new_tokens=12)
    with ckeir.compile(tmp_path / "pair.cke", schedule="mixed") as two:
        run = run_local(two, prompt, 12)
    assert run["tokens"] == want
    prefill = cache_bytes(6 * RING + CONTEXT, HEAD)  # one KV head of every layer a rank
    decode = {
        0: cache_bytes(4 * RING, 2 * HEAD),  # layers 0..3: all sliding
        1: cache_bytes(2 * RING + CONTEXT, 2 * HEAD),  # layers 4, 6 sliding, 5 global
    }
    held = {r["rank"]: r["linux"]["huge_pages"]["kv_cache"]["bytes"] for r in run["ranks"]}
    assert held == {rank: prefill + decode[rank] for rank in (0, 1)}
