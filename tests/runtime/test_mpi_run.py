"""The same spec under mpiexec gives the same tokens and the same evidence (report, trace,
parity) as local ranks; a failing rank ends the whole job quickly with a message naming it."""

import json
import sys
import time
from pathlib import Path

import pytest
from cli_runner import ckec, command
from needs import needs_mpi
from run_evidence import (
    check_pipeline_report,
    check_trace_tracks,
    pipeline_spec,
    report_keys,
)
from smollm2 import needs_smollm2

ROOT = Path(__file__).resolve().parents[2]

pytestmark = needs_mpi


def mpirun(n, *args, env=None, timeout=180):
    """`ckec ARGS` on N ranks under mpiexec, each rank through mpi4py's runner (see
    transport/mpirun.py: what the job leaves behind is adopted and reported)."""
    sys.path.insert(0, str(Path(__file__).parent / "transport"))
    from mpirun import mpiexec

    argv = ["-n", str(n), *command(*args, mpi=True)]
    return mpiexec(argv, {"MPIEXEC_TIMEOUT": "120", **(env or {})}, timeout=timeout)


def local(*args):
    return ckec(*args, timeout=180)


@pytest.mark.parametrize("spec,n", [("tiny.cke", 2), ("hybrid.cke", 3)])
def test_mpi_matches_local_ranks(spec, n):
    args = ("run", ROOT / "specs" / spec, "--ids", "1,2,3,4", "-n", "12")
    a = mpirun(n, *args, "--transport", "mpi")
    b = local(*args)
    assert a.returncode == 0, a.output
    assert b.returncode == 0, b.stderr
    assert a.stdout.strip() == b.stdout.strip()
    assert len(a.stdout.strip().split(",")) == 12
    assert a.leftovers == [] and a.leaked == []


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """One two-stage pipeline run under mpiexec (report, trace, parity) and the same run on
    local ranks (report)."""
    tmp = tmp_path_factory.mktemp("evidence")
    spec = pipeline_spec(tmp)
    args = ("run", spec, "--ids", "1,2,3", "-n", "8")
    mpi = mpirun(
        2,
        *args,
        "--transport",
        "mpi",
        "--report",
        tmp / "mpi.json",
        "--trace",
        tmp / "trace.json",
        "--check-parity",
    )
    assert mpi.returncode == 0, mpi.output
    loc = local(*args, "--report", tmp / "local.json")
    assert loc.returncode == 0, loc.stderr
    return {
        "spec": spec,
        "mpi": mpi,
        "report": json.loads((tmp / "mpi.json").read_text()),
        "trace": json.loads((tmp / "trace.json").read_text()),
        "local": json.loads((tmp / "local.json").read_text()),
    }


def test_mpi_report_has_every_rank_and_hop(pipeline_runs):
    rep = pipeline_runs["report"]
    check_pipeline_report(rep, pipeline_runs["spec"], prompt=3, generated=8)
    assert rep["launch"] == "2 ranks over mpi"
    assert [r["tokens"] for r in rep["ranks"].values()] == [rep["ranks"]["0"]["tokens"]] * 2


def test_mpi_prediction_takes_the_runs_own_message_time(pipeline_runs):
    """MPI ranks are predicted with the message time their own transport measured (half the
    clock exchange's shortest round trip), not local ranks' shared memory."""
    rep = pipeline_runs["report"]
    trip = min(r["clock_round_trip_seconds"] for rank, r in rep["ranks"].items() if rank != "0")
    overheads = rep["prediction_basis"]["overheads"]
    assert overheads["message"] == pytest.approx(trip / 2)
    assert rep["decode"]["predicted_seconds_per_token"] > 0


def test_mpi_trace_has_a_track_per_rank(pipeline_runs):
    check_trace_tracks(pipeline_runs["trace"], ranks=2)


def test_mpi_check_parity(pipeline_runs):
    assert "parity vs single rank: tokens identical (8)" in pipeline_runs["mpi"].output
    parity = pipeline_runs["report"]["parity"]
    assert parity["tokens_identical"] and parity["logit_steps_compared"] == 8


def test_local_and_mpi_reports_give_the_same_figures(pipeline_runs):
    assert report_keys(pipeline_runs["local"]) == report_keys(pipeline_runs["report"])
    tokens = [r["tokens"] for r in pipeline_runs["local"]["ranks"].values()]
    assert tokens == [r["tokens"] for r in pipeline_runs["report"]["ranks"].values()]


def test_mpi_ranks_simulate_the_spec_links(tmp_path):
    """--simulate-links under mpiexec: every message waits out the spec's link (10 Gbit/s,
    50 us), a floor under each hop's measured time, and the prediction knows it."""
    report = tmp_path / "r.json"
    spec = pipeline_spec(tmp_path)
    args = ("run", spec, "--ids", "1,2,3", "-n", "4", "--simulate-links", "--report", report)
    r = mpirun(2, *args, "--transport", "mpi")
    assert r.returncode == 0, r.output
    rep = json.loads(report.read_text())
    (hop,) = rep["hops"]
    assert hop["links_simulated"] and rep["links_simulated"]
    assert hop["measured_seconds"] >= 50e-6 + hop["mean_bytes"] / 1.25e9


def test_rank_failure_ends_the_job(tmp_path):
    """A rank that raises mid-run: every rank exits non-zero within seconds, and the output
    names the failing rank and its error the way a CkeError reads (not as an internal
    error); no process of the job and no MPICH segment is left behind."""
    t0 = time.perf_counter()
    r = mpirun(
        2,
        "run",
        ROOT / "specs/tiny.cke",
        "--ids",
        "1,2,3",
        "-n",
        "50",
        "--transport",
        "mpi",
        env={"CKEIR_FAULT": "rank=1,step=3"},
    )
    assert r.returncode == 1, r.output
    assert time.perf_counter() - t0 < 60
    assert (
        "error: rank 1 failed: RuntimeError: fault injected on rank 1 at decode step 3"
        " (CKEIR_FAULT)" in r.output
    ), r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert r.leftovers == [] and r.leaked == []


@pytest.mark.slow
@needs_smollm2
def test_smollm2_pipeline_under_mpiexec():
    """The real model, two MPI ranks, a two-stage pipeline: the expected greedy ids."""
    r = mpirun(
        2,
        "run",
        ROOT / "specs/smollm2-pipeline.cke",
        "--ids",
        "6403,1980,253,655",
        "-n",
        "10",
        "--transport",
        "mpi",
        timeout=600,
    )
    assert r.returncode == 0, r.output
    assert r.stdout.strip() == "28,260,2240,282,23324,27108,436,253,15114,39228"


def test_mpi_ranks_on_one_machine_share_its_cpus(tmp_path):
    """Two MPI ranks on this machine, each on a node of 2 cores: each runs this machine's
    usable CPUs ÷ 2 threads (at least 1), as local ranks do, not 2 threads apiece."""
    from ckeir.backends.llvm.host import usable_cpus

    report = tmp_path / "r.json"
    r = mpirun(
        2, "run", ROOT / "specs" / "tiny.cke", "--ids", "1,2,3", "-n", "4", "--report", report
    )
    assert r.returncode == 0, r.stderr
    ranks = json.loads(report.read_text())["ranks"]
    assert {k: v["threads"] for k, v in ranks.items()} == {
        "0": max(1, usable_cpus() // 2),
        "1": max(1, usable_cpus() // 2),
    }


def test_mpi_ranks_draw_the_local_ranks_ids(tmp_path):
    """Sampled on a two-stage pipeline under mpiexec: rank 1 (the last stage) draws each id
    before the token broadcast, and the seed draws what local ranks draw."""
    spec = pipeline_spec(tmp_path)
    args = ("run", spec, "--ids", "1,2,3", "-n", "12")
    flags = ("--temperature", "1.3", "--top-p", "0.9", "--repeat-penalty", "1.2", "--seed", "8")
    a = mpirun(2, *args, *flags, "--transport", "mpi")
    b = local(*args, *flags)
    greedy = local(*args)
    assert a.returncode == 0, a.output
    assert b.returncode == 0 and greedy.returncode == 0, b.stderr + greedy.stderr
    assert a.stdout.strip() == b.stdout.strip() != greedy.stdout.strip()
    assert len(a.stdout.strip().split(",")) == 12
    assert a.leftovers == [] and a.leaked == []


@pytest.mark.slow
@needs_smollm2
def test_stop_ends_the_run_on_every_mpi_rank():
    """--stop under mpiexec: every rank ends at the id whose text reaches the stop string
    (rank 0 alone stopping would leave rank 1 waiting for its next row)."""
    prompt = "List three colors: red, green,"
    r = local("run", ROOT / "specs/smollm2-135m.cke", "--prompt", prompt, "-n", "30")
    assert r.returncode == 0, r.stderr
    full = r.stdout[len(prompt) :].rstrip("\n")
    stop = full[len(full) // 3 : len(full) // 3 + 3]
    assert stop and full.index(stop) > 0
    spec = ROOT / "specs/smollm2-pipeline.cke"
    args = ("run", spec, "--prompt", prompt, "-n", "30", "--stop", stop, "--transport", "mpi")
    r = mpirun(2, *args, timeout=600)
    assert r.returncode == 0, r.output
    assert r.stdout == prompt + full[: full.index(stop)] + "\n"
    assert int(r.output.split("generated ")[1].split()[0]) < 30
    assert r.leftovers == [] and r.leaked == []
