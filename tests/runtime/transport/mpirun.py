"""`run_mpi`: one of `transport_programs` under the venv's mpiexec (the mpich wheel's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import pytest

HERE = Path(__file__).parent
MPIEXEC = Path(sys.executable).with_name("mpiexec")


def have_mpi() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return MPIEXEC.exists()


needs_mpi = pytest.mark.skipif(not have_mpi(), reason="needs mpi4py and the mpich wheel's mpiexec")


@attrs.frozen
class MPIRun:
    returncode: int
    output: str  # stdout + stderr
    seconds: float
    results: dict[int, object]  # rank -> what its program returned


def run_mpi(n: int, program: str, *args: object, env: dict | None = None) -> MPIRun:
    """`mpiexec -n N python -m mpi4py transport_programs.py PROGRAM ARGS...` with
    MPIEXEC_TIMEOUT as a backstop (a hang fails the test, never the suite).  Each rank
    writes what its program returned to a file of a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="ckeir-mpi-"))
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "mpi4py"]
    cmd += [str(HERE / "transport_programs.py"), program, *(json.dumps(a) for a in args)]
    root = str(HERE.parents[2])
    full_env = {**os.environ, "MPIEXEC_TIMEOUT": "60", "CKEIR_TEST_OUT": str(out), **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    before = _mpich_segments()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=full_env)
        seconds = time.monotonic() - t0
        results = {int(f.stem): json.loads(f.read_text()) for f in out.glob("*.json")}
    finally:
        shutil.rmtree(out, ignore_errors=True)
        _remove_leaked(_mpich_segments() - before)
    return MPIRun(proc.returncode, proc.stdout + proc.stderr, seconds, results)


# MPICH leaves its shared-memory segment (~2.4 MB of RAM in /dev/shm) behind when a job is
# aborted or a rank is killed: remove the ones this run created that no process maps.

SHM = Path("/dev/shm")


def _mpich_segments() -> set[Path]:
    return set(SHM.glob("mpich_shm_*")) if SHM.is_dir() else set()


def _remove_leaked(new: set[Path]) -> None:
    for _ in range(20):  # killed ranks may take a moment to go away after mpiexec returns
        if not new:
            return
        mapped = set()
        for maps in Path("/proc").glob("[0-9]*/maps"):
            try:
                text = maps.read_text()
            except OSError:  # the process is gone, or not ours to read
                continue
            mapped.update(p for p in new if str(p) in text)
        for p in new - mapped:
            p.unlink(missing_ok=True)
        new = mapped
        time.sleep(0.1)
