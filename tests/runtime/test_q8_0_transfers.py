"""`quantize transfers q8_0`, observed on real runs: a 96-wide row crosses a pipeline hop as
three GGML Q8_0 blocks (102 bytes) instead of 384 bytes of f32 (the bytes the transport moved,
as each rank recorded them); the logits equal, bit for bit, those of the single-rank twin
that rounds the same values through Q8_0 (`cke.requant`); and a rank whose transfer does not
move the bytes its IR states stops with an error naming the op, the rank and both sizes."""

import json
import os
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
from cli_runner import ckec
from needs import needs_mpi

import ckeir
from ckeir.api import Program
from ckeir.errors import CkeError
from ckeir.ranks import run_local

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [3, 14, 15, 92, 65]
N = 6


PIPELINE = """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }"""


def spec(tmp_path, transfers: str = "q8_0", phases: str = PIPELINE):
    """A model whose 96-wide rows cross between stages (two stages, n0 then n1, unless
    `phases` says otherwise)."""
    path = tmp_path / f"{transfers}_{abs(hash(phases))}.cke"
    path.write_text(
        f"""
model m {{
  family llama; vocab 384; hidden 96; layers 4; heads 6; kv_heads 2
  ffn 256; context 64; weights random(seed = 11)
}}
cluster c {{
  node n0 {{ cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
  node n1 {{ like n0 }}
  node n2 {{ like n0 }}
  link n0 <-> n1 {{ bw 10Gbit/s; latency 20us }}
}}
schedule s {{
  run m on c
  quantize weights f32
  quantize transfers {transfers}
  {phases}
}}
"""
    )
    return path


def run(path):
    prog = ckeir.compile(path, backend="reference")
    return run_local(prog, PROMPT, N, collect_logits=True)


def hop_events(result, rank: int, kind: str) -> list[int]:
    """The bytes of each send or recv `rank` recorded (what its transport moved)."""
    (figures,) = [r for r in result["ranks"] if r["rank"] == rank]
    return [nbytes for k, _peer, nbytes, _t0, _dt in figures["events"] if k == kind]


@pytest.mark.parametrize("transfers,row_bytes", [("q8_0", 102), ("f32", 384)])
def test_a_row_crosses_in_its_transfer_format(tmp_path, transfers, row_bytes):
    """One prefill message of the prompt's rows, then one row per decode step, each way."""
    out = run(spec(tmp_path, transfers))
    expected = [len(PROMPT) * row_bytes] + [row_bytes] * (N - 1)
    assert hop_events(out, 0, "send") == expected
    assert hop_events(out, 1, "recv") == expected
    (sender,) = [r for r in out["ranks"] if r["rank"] == 0]
    assert sender["sends"][1][2] == sum(expected)


@pytest.mark.parametrize("transfers,row_bytes", [("q8_0", 102), ("f32", 384)])
def test_the_run_report_shows_the_wire_bytes_and_exact_parity(tmp_path, transfers, row_bytes):
    """`ckec run --report --check-parity`: the hop's mean bytes are those that crossed, and
    the run agrees bitwise with its single-rank twin in either format."""
    report = tmp_path / "r.json"
    ids = ",".join(map(str, PROMPT))
    r = ckec("run", spec(tmp_path, transfers), "--ids", ids, "-n", N, "--check-parity",
             "--report", report, "--no-predict", timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    (hop,) = rep["hops"]
    assert (hop["from"], hop["to"], hop["messages"]) == (0, 1, N)
    assert hop["mean_bytes"] == (len(PROMPT) + N - 1) * row_bytes / N
    assert rep["parity"]["tokens_identical"] and rep["parity"]["logits_bitwise_identical"]


def test_q8_0_pipeline_equals_its_single_rank_twin_bitwise(tmp_path):
    path = spec(tmp_path)
    with Program(path, single_rank=True, threads=1) as twin:
        assert twin.mlir().count('"cke.requant"') == 2  # one cut per phase
        logits = []
        tokens = list(twin.stream(PROMPT, N, on_logits=lambda i, x: logits.append(x.copy())))
    out = run(path)
    assert out["tokens"] == tokens
    steps = {}
    for r in out["ranks"]:
        steps.update(r["logits"])
    assert len(steps) == N
    for i, want in enumerate(logits):
        assert np.array_equal(steps[i].view(np.uint32), want.view(np.uint32)), f"step {i}"


def test_hybrid_stages_move_blocks_to_every_rank_of_the_next(tmp_path):
    """Prefill n0 | [n1, n2]: the first stage sends its Q8_0 blocks to both ranks of the
    tensor-parallel one; decode [n0, n1] | n2: the tensor-parallel stage's lead sends.  The
    tokens are the twin's (tensor parallelism re-associates sums: not bitwise)."""
    phases = """
  phase prefill { stage n0 layers 0..1; stage [n1, n2] layers 2..3 }
  phase decode  { stage [n0, n1] layers 0..1; stage n2 layers 2..3 }"""
    path = spec(tmp_path, phases=phases)
    out = run(path)
    assert hop_events(out, 0, "send") == [len(PROMPT) * 102] * 2 + [102] * (N - 1)
    assert hop_events(out, 1, "send") == []
    assert hop_events(out, 1, "recv") == [len(PROMPT) * 102]
    assert hop_events(out, 2, "recv") == [len(PROMPT) * 102] + [102] * (N - 1)
    with Program(path, single_rank=True, threads=1) as twin:
        assert out["tokens"] == twin.generate(PROMPT, N)


def test_the_twin_rounds_like_gguf(tmp_path):
    """The reference backend's twin (gguf.quants numerics) chooses the native twin's tokens."""
    path = spec(tmp_path)
    with Program(path, single_rank=True, threads=1) as native:
        want = native.generate(PROMPT, N)
    with Program(path, single_rank=True, backend="reference") as ref:
        assert ref.generate(PROMPT, N) == want


def _tampered_rank(transport, path):
    """A rank whose program's messages claim one byte per row more than they carry."""
    prog = Program(path, transport=transport, threads=1)
    for name, abi in prog.lowered.programs.items():
        steps = tuple(
            attrs.evolve(st, ir_bytes=st.ir_bytes + st.ir_rows) if st.kind == "send" else st
            for st in abi.steps
        )
        prog.lowered.programs[name] = attrs.evolve(abi, steps=steps)
    try:
        prog.generate(PROMPT, 2)
    finally:
        prog.close()


def test_a_transfer_that_disagrees_with_the_ir_is_an_error(tmp_path):
    from ckeir.runtime.transport.local import launch_local

    path = spec(tmp_path)
    with pytest.raises(CkeError) as e:
        launch_local(2, _tampered_rank, args=(path,), watchdog=60)
    msg = str(e.value)
    assert "rank 0: dist.send (peer/group 1) moved 510 bytes for 5 rows" in msg
    assert "the IR states 6592 bytes for 64 rows" in msg


@needs_mpi
def test_mpi_ranks_move_q8_0_blocks(tmp_path):
    """Under mpiexec (each rank runs this file, see the bottom): the same blocks cross, and
    the logits are the twin's."""
    sys.path.insert(0, str(Path(__file__).parent / "transport"))
    from mpirun import mpiexec

    path = spec(tmp_path)
    argv = ["-n", "2", sys.executable, "-m", "mpi4py", __file__, str(path), str(tmp_path)]
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    job = mpiexec(argv, {"MPIEXEC_TIMEOUT": "120", **env}, timeout=180)
    assert job.returncode == 0, job.output
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = [len(PROMPT) * 102] + [102] * (N - 1)
    assert ranks[0]["send"] == expected and ranks[1]["recv"] == expected
    assert ranks[0]["kind"] == ranks[1]["kind"] == "mpi"
    with Program(path, single_rank=True, threads=1) as twin:
        logits = []
        tokens = list(twin.stream(PROMPT, N, on_logits=lambda i, x: logits.append(x.copy())))
    assert ranks[1]["tokens"] == tokens
    got = np.load(tmp_path / "logits.npy")
    assert np.array_equal(got.view(np.uint32), np.stack(logits).view(np.uint32))


def _mpi_rank(spec_path: str, out: str) -> None:
    """One MPI rank of `test_mpi_ranks_move_q8_0_blocks`: generate, then write the bytes of
    its sends and recvs (and, on the last stage, the logits)."""
    from ckeir.ranks import run_rank
    from ckeir.runtime.transport.mpi import MPITransport

    transport = MPITransport()
    with Program(spec_path, transport=transport, threads=1) as prog:
        figures = run_rank(prog, PROMPT, N, transport, collect_logits=True)
    events = figures["events"]
    record = {
        "tokens": figures["tokens"],
        "kind": figures["transport_kind"],
        **{k: [b for kind, _p, b, _t, _d in events if kind == k] for k in ("send", "recv")},
    }
    Path(out, f"rank{transport.rank}.json").write_text(json.dumps(record))
    if figures["logits"]:
        steps = figures["logits"]
        np.save(Path(out, "logits.npy"), np.stack([steps[i] for i in sorted(steps)]))
    transport.close()


if __name__ == "__main__":
    _mpi_rank(*sys.argv[1:3])
