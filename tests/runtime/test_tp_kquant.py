"""Tensor parallelism over weights kept as the file stores them (issue 15): a stage cuts a
matrix along K only in whole blocks of its stored type — 32 wide for Q8_0/Q4_x/Q5_x, the
256-wide super-blocks of the K-quants — so the FFN's split unit and reduction chunk follow
ffn_down's type, a split the attention output's blocks cannot take is refused at the stage's
line, and a model with fewer key/value heads than nodes shares each head's query heads (every
node holding the key/value head).  The ranks hold the shards the planner counted and give the
single rank's ids, bit for bit."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from cli_runner import ckec
from ggufgen import write_gguf

import ckeir
from ckeir.errors import CkeError
from ckeir.models.files import GGUFFile
from ckeir.models.llama import LlamaConfig
from ckeir.ranks import run_local, run_rank

PROMPT = [3, 14, 15, 92, 65]
N = 6
NODES = """
cluster c {
  node n0 { cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }
  node n1 { like n0 }
  link n0 <-> n1 { bw 10Gbit/s; latency 20us }
}"""


def kquant_file(tmp_path, fmt: str, hidden: int, heads: int, kv_heads: int, ffn: int):
    cfg = LlamaConfig(
        vocab=256,
        hidden=hidden,
        layers=2,
        heads=heads,
        kv_heads=kv_heads,
        ffn=ffn,
        context=64,
        norm_eps=1e-5,
        rope_theta=10000.0,
        tie_embeddings=True,
        rope_style="interleaved",
    )
    return write_gguf(tmp_path / f"m-{fmt}-{hidden}.gguf", cfg, fmt=fmt, seed=5)


def spec(tmp_path, model: str, stage: str, quantize: str = "keep"):
    path = tmp_path / f"{'tp' if '[' in stage else 'one'}.cke"
    path.write_text(f"""
model m {{ {model} }}
{NODES}
schedule s {{
  run m on c
  quantize weights {quantize}
  phase prefill {{ stage {stage} layers 0..1 }}
  phase decode  {{ stage {stage} layers 0..1 }}
}}
""")
    return path


def held(path, rank: int) -> dict[str, int]:
    """Weight name -> bytes the rank's decode program binds (its shard; a tied table both
    whole, for the embedding, and as the LM head's vocabulary rows, `name@rows,cols`)."""
    here = types.SimpleNamespace(rank=rank, ranks_here=2)  # the engine only, no run
    with ckeir.compile(path, transport=here, threads=1) as prog:
        decode = prog.engine.programs["decode"][0]
        return {
            slot if slot.startswith("token_embd") else slot.split("@")[0]: w.nbytes
            for slot, w in zip(decode.abi.weights, decode._keep, strict=True)
        }


def planned_weights(path, tmp_path) -> dict[int, int]:
    out = tmp_path / "plan.json"
    r = ckec("plan", str(path), "--json", str(out))
    assert r.returncode == 0, r.stderr
    return {int(k): v["weights"] for k, v in json.loads(out.read_text())["memory"].items()}


def logits(run) -> list[np.ndarray]:
    steps = {}
    for r in run.get("ranks", [run]):
        steps.update(r.get("logits") or {})
    return [steps[i] for i in sorted(steps)]


def same_run_as_one_rank(tp, one) -> list[int]:
    """The tensor-parallel ids, checked against one rank's: ids and logits bit for bit."""
    run = run_local(ckeir.compile(tp, threads=1), PROMPT, N, collect_logits=True)
    with ckeir.compile(one, threads=1) as prog:
        want = run_rank(prog, PROMPT, N, collect_logits=True)
    assert run["tokens"] == want["tokens"] and len(want["tokens"]) == N
    got, ref = logits(run), logits(want)
    assert len(got) == len(ref) == N
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    return run["tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["q4_k", "q6_k"])
def test_a_kquant_ffn_splits_in_whole_super_blocks(tmp_path, fmt):
    """FFN 768 = three 256-wide super-blocks of ffn_down (4 key/value heads: 32-column units
    would have cut it 384 + 384, through a block): the ranks hold 512 + 256 columns of it, the
    planner's bytes, together the file's, and run one rank's ids and logits."""
    path = kquant_file(tmp_path, fmt, hidden=1024, heads=4, kv_heads=4, ffn=768)
    model = f'family llama; weights gguf("{path}")'
    tp = spec(tmp_path, model, "[n0, n1]")
    ranks = [held(tp, r) for r in (0, 1)]
    assert planned_weights(tp, tmp_path) == {r: sum(h.values()) for r, h in enumerate(ranks)}
    stored = GGUFFile(path)
    for layer in (0, 1):
        name = f"blk.{layer}.ffn_down.weight"
        whole = stored.data(name).nbytes
        assert [h[name] for h in ranks] == [whole * 2 // 3, whole // 3]
        name = f"blk.{layer}.attn_output.weight"  # two heads of 256 columns each
        assert [h[name] for h in ranks] == [stored.data(name).nbytes // 2] * 2
    same_run_as_one_rank(tp, spec(tmp_path, model, "n0"))


def test_a_split_through_attention_blocks_is_refused_at_the_stage(tmp_path):
    """Heads 64 wide over two nodes put columns 0..128 and 128..256 of a Q4_K attn_output on
    them, halves of one super-block: refused at the stage's line, naming the tensor, its type
    and its block width; `quantize weights q8_0` (32-wide blocks) runs."""
    path = kquant_file(tmp_path, "q4_k", hidden=256, heads=4, kv_heads=2, ffn=512)
    model = f'family llama; weights gguf("{path}")'
    tp = spec(tmp_path, model, "[n0, n1]")
    with pytest.raises(CkeError) as err:
        ckeir.compile(tp, threads=1)
    message = str(err.value)
    assert "blk.0.attn_output.weight (q4_k: blocks of 256 along K)" in message
    assert err.value.loc is not None and err.value.loc.line == 12  # phase prefill's stage
    r = ckec("run", str(tp), "--ids", "1,2,3", "-n", "2")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "tp.cke:12:" in r.stderr and "q4_k: blocks of 256" in r.stderr
    with ckeir.compile(spec(tmp_path, model, "[n0, n1]", "q8_0"), threads=1) as prog:
        assert len(prog.placement["decode"].stages[0].ranks) == 2


GEMMA = """family gemma3; vocab 384; hidden 128; layers 2; heads 4; kv_heads 1; ffn 256
  context 64; window 8; weights random(seed = 3)"""


@pytest.mark.slow
def test_one_key_value_head_is_held_by_both_nodes_with_half_its_query_heads(tmp_path):
    """A gemma3 model with one key/value head over two nodes (Gemma 3 270M's shape): each
    node holds the key/value head's K and V rows and two of the four query heads (Q rows,
    attn_output columns), and the run is one rank's, logits bit for bit."""
    tp = spec(tmp_path, GEMMA, "[n0, n1]", "q8_0")
    ranks = [held(tp, r) for r in (0, 1)]
    for name in ("blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        assert ranks[0][name] == ranks[1][name] == 32 * 136  # 32 rows of 128 in q8_0
    assert ranks[0]["blk.0.attn_q.weight"] == ranks[1]["blk.0.attn_q.weight"] == 64 * 136
    assert ranks[0]["blk.0.attn_output.weight"] == 128 * 68  # 64 of 128 columns
    with ckeir.compile(tp, threads=1) as prog:
        stage = prog.placement["decode"].stages[0]
        assert stage.kv_heads == ((0, 1), (0, 1)) and stage.heads == ((0, 2), (2, 4))
    same_run_as_one_rank(tp, spec(tmp_path, GEMMA, "n0", "q8_0"))


def test_a_shared_key_value_head_is_not_handed_over_between_placements(tmp_path):
    """A prefill on one node and a decode whose two nodes both hold the key/value head: the
    cache handoff moves each head to one holder, so the schedule is refused by name."""
    path = tmp_path / "handoff.cke"
    path.write_text(f"""
model m {{ {GEMMA} }}
{NODES}
schedule s {{
  run m on c
  quantize weights q8_0
  phase prefill {{ stage n0 layers 0..1 }}
  phase decode  {{ stage [n0, n1] layers 0..1 }}
}}
""")
    with pytest.raises(CkeError, match="holds a key/value head on several nodes"):
        ckeir.compile(path, threads=1)
