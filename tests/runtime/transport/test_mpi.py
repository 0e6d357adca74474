"""MPITransport under the mpich wheel's mpiexec: the same programs as the local tests, the
same bits from allreduce, and failures that end the whole job by its abort (never by the
backstop, MPIEXEC_TIMEOUT)."""

from __future__ import annotations

import pytest
import transport_programs as tp
from mpirun import needs_mpi, run_mpi

from ckeir.runtime.transport import launch_local, transport_from_env

pytestmark = needs_mpi

RANKS = [2, 3]


def ok(n: int, program: str, *args, **kw) -> list:
    run = run_mpi(n, program, *args, **kw)
    assert run.returncode == 0, run.output
    assert sorted(run.results) == list(range(n)), run.output
    return [run.results[r] for r in range(n)]


@pytest.mark.parametrize("n", RANKS)
def test_p2p(n):
    results = ok(n, "p2p")
    assert all(r["ok"] for r in results)
    assert sum(r["sent"] for r in results) == sum(r["received"] for r in results)


@pytest.mark.parametrize("n", RANKS)
def test_allreduce_bits_match_every_rank_and_the_local_transport(n):
    results = ok(n, "allreduce")
    local = launch_local(n, tp.prog_allreduce, timeout=30)
    for key in results[0]:
        members = [r[key] for r in results if key in r]
        assert all(m["exact"] for m in members), key
        assert {m["digest"] for m in members} == {local[0][key]["digest"]}, key


def test_allgather_broadcast_barrier():
    assert all(r == {"axis0": True, "axis_last": True} for r in ok(3, "allgather"))
    assert all(r["bcast"] for r in ok(3, "broadcast_barrier"))


def test_events_and_stats():
    results = ok(2, "events")
    assert results[0]["kinds"] == ["allreduce", "send"]
    assert results[1]["kinds"] == ["allreduce", "recv"]
    assert results[0]["stats"]["peers"]["1"]["bytes_sent"] == 128


def nothing_left(run) -> None:
    """No process of the job alive after mpiexec returned, no MPICH segment in /dev/shm."""
    assert run.leftovers == [], run.output
    assert run.leaked == [], run.output


@pytest.mark.parametrize("n", RANKS)
def test_raising_rank_aborts_the_job(n):
    run = run_mpi(n, "raise")
    assert run.returncode != 0
    assert not run.timed_out, run.output  # ended by the abort, not by the backstop
    assert "error: rank 1 failed: ValueError: boom from rank 1" in run.output
    nothing_left(run)


def test_rank_closing_while_it_raises_aborts_naming_it():
    """close() in a `finally` (as `ckec run` does) while an error propagates: the rank and
    its error are printed the way the CLI prints a CkeError, then the job is aborted."""
    run = run_mpi(2, "raise_closing")
    assert run.returncode != 0
    assert not run.timed_out, run.output  # ended by the abort, not by the backstop
    assert "error: rank 1 failed: ValueError: boom from rank 1" in run.output
    assert "ckeir: rank 1: aborting the job because rank 1 failed" in run.output
    assert "Traceback" not in run.output
    nothing_left(run)


def test_exit_without_close_aborts_the_job():
    run = run_mpi(2, "exit_without_close")
    assert run.returncode != 0
    assert not run.timed_out, run.output  # ended by the abort, not by the backstop
    assert "ckeir: rank 1: exited without closing its transport" in run.output
    nothing_left(run)


def test_killed_rank_ends_the_job():
    run = run_mpi(3, "kill")
    assert run.returncode != 0
    assert not run.timed_out, run.output  # ended by the abort, not by the backstop
    nothing_left(run)


def test_a_finished_job_leaves_nothing():
    nothing_left(run_mpi(2, "p2p"))


def test_size_mismatch():
    run = run_mpi(2, "mismatch")
    assert run.returncode != 0
    assert "size mismatch: rank 0 sent 400 bytes, rank 1 expects 200 bytes" in run.output


def test_shaped_link_hop_time():
    """A hop takes at least latency + bytes/bandwidth (MPI adds its own one-way latency,
    and a busy machine more: how close it comes is for `benchmarks/links.py`)."""
    want = 100e-6 + 2304 / 1.25e9
    hops = tp.hop_times(ok(2, "link", 2304, 60, env={"CKEIR_TEST_LINK": "1.25e9,100e-6"}))
    assert len(hops) == 60
    assert hops.min() >= want, f"a hop took {hops.min() * 1e6:.1f} µs < {want * 1e6:.1f} µs"


def test_not_under_mpiexec(monkeypatch):
    for key in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert transport_from_env() is None


def test_failure_text_reads_like_the_cli():
    """What an aborting MPI rank prints: its error as the CLI prints a CkeError, naming the
    rank once."""
    from ckeir.errors import SourceLoc, SpecError, TransportError
    from ckeir.runtime.transport.mpi import failure_text

    named = TransportError("rank 1: recv from rank 0 (tag 3) abandoned: rank 0 failed")
    assert failure_text(1, named) == named.format()
    loc = SourceLoc("s.cke", 2, 3, "  layers 0..9")
    assert failure_text(0, SpecError("layers 0..9 past the model's 4", loc)) == (
        "rank 0: s.cke:2:3: error: layers 0..9 past the model's 4\n      layers 0..9\n      ^"
    )
    assert failure_text(1, ValueError("boom")) == (
        "error: rank 1 failed: ValueError: boom\nnote: set CKEIR_DEBUG=1 for its traceback"
    )
