"""The collectives behind a run's evidence, on both transports: `gather_object` brings every
rank's figures to rank 0 (in rank order, whatever their size), and `clock_offset` measures
how far each rank's clock is from rank 0's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import evidence_programs as ep
import pytest

from ckeir.runtime.transport import launch_local

sys.path.insert(0, str(Path(__file__).parent / "transport"))
from mpirun import mpiexec, needs_mpi  # noqa: E402

HERE = Path(__file__).parent


def check(results: list[dict]) -> None:
    n = len(results)
    assert results[0]["gathered"] == [True] * n  # every rank's object, intact, in rank order
    assert all(r["gathered"] is None for r in results[1:])  # only the root receives
    assert results[0]["offset"] == 0.0
    for r in results[1:]:
        # the ranks of one machine share one clock: the true offset is zero, and the
        # estimate is within half the round trip it came from
        assert r["round_trip"] > 0 and abs(r["offset"]) <= r["round_trip"] / 2 + 1e-9


@pytest.mark.parametrize("n", [2, 3])
def test_gather_and_clock_on_local_ranks(n):
    check(launch_local(n, ep.prog_gather_and_clock, timeout=120))


@needs_mpi
def test_gather_and_clock_on_mpi_ranks(tmp_path):
    root = str(HERE.parents[1])
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    argv = ["-n", "3", sys.executable, "-m", "mpi4py", str(HERE / "evidence_programs.py")]
    run = mpiexec([*argv, str(tmp_path)], env, timeout=120)
    assert run.returncode == 0, run.output
    check([json.loads((tmp_path / f"{r}.json").read_text()) for r in range(3)])
    assert run.leftovers == [] and run.leaked == []
