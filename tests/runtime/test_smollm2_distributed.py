"""SmolLM2-135M on several local ranks — pipeline, tensor parallel, hybrid and planner-chosen
placements — gives the greedy continuation of the single-rank run.

The tensor-parallel specs compute on int8 activations, as the single-rank spec does: the
matmuls split along K (attention output, FFN down) sum in whole chunks (`k_chunk`) in every
program, and the all-reduce folds the ranks' chunk sums in K order, so every placement has
the single-rank run's logits bit for bit (`--check-parity`), on native collectives, on
collectives run from Python, and under MPI."""

import json
import sys
from pathlib import Path

import pytest
from cli_runner import ckec, command
from needs import needs_mpi
from smollm2 import ROOT, needs_smollm2

pytestmark = [needs_smollm2, pytest.mark.slow]
EXPECTED = "28,260,2240,282,23324,27108,436,253,15114,39228"
IDS = ("--ids", "6403,1980,253,655", "-n", "10")
BITWISE = "parity vs single rank: tokens identical (10), logits bitwise identical"


@pytest.mark.parametrize("kind", ["pipeline", "tp", "hybrid", "auto"])
def test_placements_agree(kind, tmp_path):
    spec = ROOT / "specs" / f"smollm2-{kind}.cke"
    r = ckec("run", spec, *IDS, timeout=900)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == EXPECTED


def test_tensor_parallel_specs_compute_on_int8_activations():
    """No SmolLM2 spec falls back to float activations for tensor parallelism."""
    for kind in ("tp", "hybrid", "auto"):
        assert "quantize activations f32" not in (ROOT / f"specs/smollm2-{kind}.cke").read_text()


@pytest.mark.parametrize("python_collectives", [False, True], ids=["native", "python"])
@pytest.mark.parametrize("kind", ["tp", "hybrid"])
def test_tensor_parallel_int8_logits_are_bitwise_the_single_ranks(kind, python_collectives):
    """The ranks' logits are the single-rank twin's, bit for bit, with int8 activations:
    collectives in the fused native entry, or run from Python between segments (hybrid:
    rank 0 on steps, rank 1 native, each all-reduce's messages the same on both)."""
    env = {"CKEIR_PYTHON_COLLECTIVES": "1"} if python_collectives else None
    spec = ROOT / "specs" / f"smollm2-{kind}.cke"
    r = ckec("run", spec, *IDS, "--check-parity", timeout=900, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == EXPECTED
    assert BITWISE in r.stderr, r.stderr


@needs_mpi
def test_tensor_parallel_int8_under_mpiexec():
    """Two MPI ranks, tensor parallel on int8 activations: the single-rank ids and logits."""
    sys.path.insert(0, str(Path(__file__).parent / "transport"))
    from mpirun import mpiexec

    argv = ["-n", "2", *command("run", ROOT / "specs/smollm2-tp.cke", *IDS, mpi=True)]
    argv += ["--transport", "mpi", "--check-parity"]
    r = mpiexec(argv, {"MPIEXEC_TIMEOUT": "600"}, timeout=900)
    assert r.returncode == 0, r.output
    assert r.stdout.strip() == EXPECTED
    assert BITWISE in r.output, r.output


SAMPLED = ("--temperature", "0.9", "--top-p", "0.95", "--repeat-penalty", "1.1", "--seed", "17")


@pytest.mark.parametrize("kind", ["pipeline", "tp"])
def test_seeded_draws_on_ranks_are_the_single_ranks(kind):
    """Sampled with a seed: the root rank draws from logits that are the single-rank twin's
    bit for bit, so the ranks' ids are the twin's (--check-parity runs it with the same
    flags), and not the greedy ones."""
    spec = ROOT / "specs" / f"smollm2-{kind}.cke"
    r = ckec("run", spec, *IDS, *SAMPLED, "--check-parity", timeout=900)
    assert r.returncode == 0, r.stderr
    assert BITWISE in r.stderr, r.stderr
    assert len(r.stdout.strip().split(",")) == 10 and r.stdout.strip() != EXPECTED


@needs_mpi
def test_seeded_draws_under_mpiexec_are_the_local_ranks():
    """Two MPI ranks, tensor parallel, sampled: the local ranks' ids for the same seed."""
    sys.path.insert(0, str(Path(__file__).parent / "transport"))
    from mpirun import mpiexec

    spec = ROOT / "specs/smollm2-tp.cke"
    argv = ["-n", "2", *command("run", spec, *IDS, *SAMPLED, mpi=True), "--transport", "mpi"]
    r = mpiexec(argv, {"MPIEXEC_TIMEOUT": "600"}, timeout=900)
    assert r.returncode == 0, r.output
    local = ckec("run", spec, *IDS, *SAMPLED, timeout=900)
    assert local.returncode == 0, local.stderr
    assert r.stdout.strip() == local.stdout.strip() != EXPECTED


def test_uneven_nodes_get_uneven_shards(tmp_path):
    """n0 has twice n1's bandwidth: it gets two of the three key/value heads in decode and
    two thirds of the FFN (in 512-wide units, whole reduction chunks)."""
    out = tmp_path / "plan.json"
    r = ckec("plan", ROOT / "specs/smollm2-tp.cke", "--json", out, timeout=300)
    assert r.returncode == 0, r.stderr
    stage = json.loads(out.read_text())["phases"]["decode"]["stages"][0]
    assert stage["kv_heads"] == [[0, 2], [2, 3]]
    assert stage["ffn"] == [[0, 1024], [1024, 1536]]
