"""Tensor-parallel shares as the ranks hold them: every collective waits for the stage's
slowest rank, so place shares each segment between two collectives (attention, FFN, LM head)
by the nodes' speeds alone.  On two equal nodes a model of 3 key/value heads holds them
2 + 1 (whole heads), but the FFN's and the LM head's weights half each, in chunks that keep
the int8-activation sums canonical: the greedy ids are the single rank's."""

import types

import pytest

import ckeir
from ckeir.ranks import run_local, run_rank

SPEC = """
model m {{
  family llama; vocab 384; hidden 192; layers 2; heads 3; kv_heads 3; ffn 768
  context 64; weights random(seed = 7)
}}
cluster c {{
  node n0 {{ cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
  node n1 {{ like n0 }}
  link n0 <-> n1 {{ bw 10Gbit/s; latency 20us }}
}}
schedule s {{
  run m on c
  quantize weights q8_0
  quantize activations q8_0
  phase prefill {{ stage {stage} layers 0..1 }}
  phase decode  {{ stage {stage} layers 0..1 }}
}}
"""
PROMPT = [3, 14, 15, 92, 65]
N = 16
SEGMENTS = {
    "attention": ("attn_q", "attn_k", "attn_v", "attn_output"),
    "ffn": ("ffn_gate", "ffn_up", "ffn_down"),
    "lm_head": ("output",),
}


def write(tmp_path, stage: str):
    path = tmp_path / f"{'tp' if '[' in stage else 'one'}.cke"
    path.write_text(SPEC.format(stage=stage))
    return path


def segment_bytes(path, rank: int) -> dict[str, int]:
    """Weight bytes the rank's decode program binds, per segment between collectives."""
    here = types.SimpleNamespace(rank=rank, ranks_here=2)  # the engine only, no run
    prog = ckeir.compile(path, transport=here, threads=1)
    decode = prog.engine.programs["decode"][0]
    out = dict.fromkeys(SEGMENTS, 0)
    for slot, w in zip(decode.abi.weights, decode._keep, strict=True):
        tensor = slot.split("@")[0].removesuffix(".weight").split(".")[-1]
        for segment, names in SEGMENTS.items():
            if tensor in names:
                out[segment] += w.nbytes
    return out


@pytest.mark.slow
def test_equal_nodes_hold_each_segment_by_speed_and_keep_the_single_rank_ids(tmp_path):
    tp = write(tmp_path, "[n0, n1]")
    held = [segment_bytes(tp, r) for r in (0, 1)]
    # whole key/value heads: 2 + 1 (q8_0 rows of 192 values: 204 bytes)
    assert [h["attention"] for h in held] == [2 * 4 * 64 * 204 * 2, 4 * 64 * 204 * 2]
    # the FFN, a segment of its own, halves: 384 columns each of gate, up and down, 2 layers
    assert held[0]["ffn"] == held[1]["ffn"] == 2 * 3 * 384 * 204
    # the LM head's 384 rows: 192 each
    assert held[0]["lm_head"] == held[1]["lm_head"] == 192 * 204
    tokens = run_local(ckeir.compile(tp, threads=1), PROMPT, N)["tokens"]
    with ckeir.compile(write(tmp_path, "n0"), threads=1) as one:
        assert tokens == run_rank(one, PROMPT, N)["tokens"]
