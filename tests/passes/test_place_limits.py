"""place and the cost model on inputs at their edges: any skew of node speeds, more nodes
than layers, programs that do not match the spec's stages or are not llama-shaped.  Every
shard is non-empty, and every refusal is a PassError that names what to change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cli_runner import ckec
from hypothesis import given
from hypothesis import strategies as st

from ckeir.driver import build_ir, resolve
from ckeir.errors import PassError
from ckeir.ir import print_ir
from ckeir.passes import PassContext, PassManager, parse_pipeline
from ckeir.passes.place import Shape, make_stage, split_layers
from ckeir.planner import cost

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "specs" / "tiny.cke"
HYBRID = REPO / "specs" / "hybrid.cke"

speeds = st.one_of(
    st.floats(min_value=0, max_value=1e300),
    st.sampled_from([0.0, 1e-300, 1e30, math.inf, math.nan, -1.0]),
)


@given(
    parts=st.lists(speeds, min_size=1, max_size=8),
    unit=st.sampled_from([1, 32]),
    extra=st.integers(0, 300),
)
def test_shares_cover_the_total_and_none_is_empty(parts, unit, extra):
    total = (len(parts) + extra) * unit
    got = cost.share(total, parts, unit)
    assert sum(got) == total
    assert all(p >= unit and p % unit == 0 for p in got)


def test_shares_follow_the_speeds():
    assert cost.share(30, [2.0, 1.0]) == [20, 10]
    assert cost.share(512, [math.inf, 1.0]) == [511, 1]


def test_a_skew_of_1e30_leaves_every_shard_non_empty():
    shape = Shape(layers=4, heads=4, kv_heads=2, head_dim=32, ffn=256, vocab=512)
    stage = make_stage(0, ["fast", "slow"], [0, 1], 0, 3, shape, [1e30, 1.0])
    for ranges in (stage.kv_heads, stage.ffn, stage.vocab):
        assert all(b > a for a, b in ranges), ranges
    assert stage.kv_heads == ((0, 1), (1, 2))
    # one FFN unit on the slow node: 128 wide, a reduction chunk (Shape.ffn_unit: the widest
    # of 512, 256, 128, 64 that cuts the FFN into at least kv_heads chunks)
    assert shape.ffn_unit == 128
    assert stage.ffn[1] == (128, 256)


def test_each_segment_between_collectives_follows_the_speeds():
    """SmolLM2 on two equal nodes (Q4_1 layers, a Q8_0 LM head): every collective waits for
    the slowest rank, so each segment is shared by the speeds alone.  3 key/value heads round
    to 2 + 1 (inherent), but the FFN, a segment of its own, goes 768 + 768 (six chunks of 256:
    512-wide chunks could only give 512 + 1024), and the LM head's rows 24,576 + 24,576; on
    nodes of speeds 2 : 1 every share follows the speeds."""
    shape = Shape(30, 9, 3, 64, 1536, 49152, layer_bytes=0.625, head_bytes=1.0625)
    assert shape.ffn_unit == 256 and shape.k_chunk("ffn_down") == 256
    even = make_stage(0, ["a", "b"], [0, 1], 0, 29, shape, [1.0, 1.0])
    assert even.kv_heads == ((0, 2), (2, 3))
    assert even.ffn == ((0, 768), (768, 1536))
    assert even.vocab == ((0, 24576), (24576, 49152))
    skewed = make_stage(0, ["a", "b"], [0, 1], 0, 29, shape, [2.0, 1.0])
    assert skewed.kv_heads == ((0, 2), (2, 3)) and skewed.ffn == ((0, 1024), (1024, 1536))
    assert skewed.vocab == ((0, 32768), (32768, 49152))
    # three equal nodes: a head each, two chunks each
    three = make_stage(0, ["a", "b", "c"], [0, 1, 2], 0, 29, shape, [1.0, 1.0, 1.0])
    assert three.ffn == ((0, 512), (512, 1024), (1024, 1536))


def test_the_ffn_chunk_is_the_widest_that_equal_nodes_can_share_evenly():
    # a multiple of every stage size 2..kv_heads when one of FFN_CHUNKS gives it ...
    assert Shape(30, 9, 3, 64, 1536, 512).ffn_unit == 256  # 6 chunks, not 3 of 512
    assert Shape(4, 4, 2, 32, 256, 512).ffn_unit == 128
    assert Shape(18, 4, 1, 256, 2048, 512).ffn_unit == 512
    # ... else the widest that gives every node of a kv_heads-wide stage one chunk
    assert Shape(16, 32, 8, 64, 8192, 512).ffn_unit == 512


def test_a_pipeline_needs_a_layer_per_node():
    nodes = {
        f"n{i}": cost.NodeModel(f"n{i}", 1, 1 << 30, 1e10, 1 << 20, 1 << 25) for i in range(16)
    }
    with pytest.raises(PassError, match="8 layers cannot make a pipeline over 16 nodes"):
        split_layers(8, list(nodes), nodes, "decode")


def test_auto_with_more_nodes_than_layers_plans(tmp_path):
    nodes = "\n".join(f"  node n{i} {{ like n0 }}" for i in range(1, 16))
    spec = tmp_path / "wide.cke"
    spec.write_text(
        f"""
model m {{
  family llama; vocab 64; hidden 64; layers 8; heads 2; kv_heads 2; ffn 128
  context 16; weights random(seed = 1)
}}
cluster c {{
  node n0 {{ cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
{nodes}
  link n0 <-> n1 {{ bw 10Gbit/s; latency 50us }}
}}
schedule s {{ run m on c; phase prefill {{ auto }}; phase decode {{ auto }} }}
"""
    )
    r = ckec("plan", spec)
    assert r.returncode == 0, r.stderr
    assert "auto" in r.stdout


def test_stages_that_miss_the_programs_layers_are_refused(tmp_path):
    # hybrid.cke's program has 6 layers; tiny.cke's stages take 0..3.
    ir = tmp_path / "six.mlir"
    ir.write_text(print_ir(build_ir(resolve(HYBRID))))
    r = ckec("opt", ir, "--spec", TINY, "--pass-pipeline=shape-infer,place")
    assert r.returncode == 1, r.stderr
    assert "place: phase prefill's stages take layers 0..3, but its program has layers 0..5" in (
        r.stderr
    )


NOT_LLAMA = """\
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %k: memref<1x8x4xf32>, %v: memref<1x8x4xf32>):
    %w = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 16, 4>} : () -> tensor<16x4xf32>
    %x = "cke.embed"(%ids, %w) : (tensor<1xi32>, tensor<16x4xf32>) -> tensor<1x4xf32>
    "cke.return"(%x) : (tensor<1x4xf32>) -> ()
  }) {phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
"""


def test_a_program_that_is_not_llama_shaped_is_refused():
    from ckeir.ir import parse_ir

    job = resolve(TINY)
    ctx = PassContext(options={"schedule": job.schedule, "cluster": job.cluster})
    with pytest.raises(PassError, match="place: func decode has no cke.attention"):
        PassManager(parse_pipeline("place")).run(parse_ir(NOT_LLAMA), ctx)
