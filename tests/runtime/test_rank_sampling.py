"""Sampling over several ranks: the root rank (the last stage's first) draws each token from
its logits with the request's sampler before the token broadcast, and every rank follows the
drawn id.  A pipeline computes one rank's logits bit for bit, so the same seed draws one
rank's ids; tensor parallel re-associates sums, so there the same seed draws the same ids
twice and temperature 0 is the greedy run."""

import pytest

import ckeir
from ckeir.ranks import run_local

MODEL = """
model m {
  family llama; vocab 384; hidden 128; layers 4; heads 4; kv_heads 2; ffn 256
  context 320; weights random(seed = 5)
}
cluster c {
  node n0 { cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }
  node n1 { cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }
  link n0 <-> n1 { bw 10Gbit/s; latency 20us }
}
"""
PHASES = {
    "one": "",
    "pipeline": """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }""",
    "tensor": """
  phase prefill { stage [n0, n1] layers 0..3 }
  phase decode  { stage [n0, n1] layers 0..3 }""",
}
PROMPT = [3, 14, 15, 92, 65, 35]
# longer than a prefill call's 256 rows: two chunks, one draw after the last
LONG = [(7 * i + 3) % 384 for i in range(270)]
N = 24
# a draw that truncates and penalizes: every stage of the chain has its say
SAMPLED = dict(temperature=1.3, top_k=60, top_p=0.95, min_p=0.01, repeat_penalty=1.1, seed=99)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rank-sampling")
    out = {}
    for name, phases in PHASES.items():
        path = d / f"{name}.cke"
        path.write_text(
            MODEL + f"schedule s {{\n  run m on c\n  quantize weights f32\n{phases}\n}}\n"
        )
        out[name] = path
    return out


def ranks_run(spec, prompt=PROMPT, **sampling):
    """Every rank's ids of one run on local ranks, after checking they agree."""
    with ckeir.compile(spec, backend="reference") as prog:
        assert prog.world_size == 2
        out = run_local(prog, prompt, N, sampling=sampling)
    ids = [r["tokens"] for r in out["ranks"]]
    assert ids[0] == ids[1] == out["tokens"]
    assert len(out["tokens"]) == N
    return out["tokens"]


@pytest.fixture(scope="module")
def one_rank(specs):
    with ckeir.compile(specs["one"], threads=1) as prog:
        return {
            "greedy": prog.generate(PROMPT, N),
            "sampled": prog.generate(PROMPT, N, **SAMPLED),
            "long": prog.generate(LONG, N, **SAMPLED),
        }


def test_pipeline_draws_the_one_rank_ids(specs, one_rank):
    assert one_rank["sampled"] != one_rank["greedy"]  # the draw is not the argmax
    assert ranks_run(specs["pipeline"], **SAMPLED) == one_rank["sampled"]
    other = ranks_run(specs["pipeline"], **(SAMPLED | {"seed": 100}))
    assert other != one_rank["sampled"]
    assert ranks_run(specs["pipeline"], LONG, **SAMPLED) == one_rank["long"]


def test_tensor_parallel_draws_are_seeded_and_temperature_0_is_greedy(specs, one_rank):
    with ckeir.compile(specs["tensor"], backend="reference") as prog:
        drawn = prog.generate(PROMPT, N, **SAMPLED)  # the API launches the local ranks
        assert drawn != one_rank["greedy"]
        assert prog.generate(PROMPT, N, **SAMPLED) == drawn
        greedy = prog.generate(PROMPT, N)
        assert prog.generate(PROMPT, N, temperature=0, seed=5) == greedy
    assert greedy == one_rank["greedy"]
    assert ranks_run(specs["tensor"], **SAMPLED) == drawn
