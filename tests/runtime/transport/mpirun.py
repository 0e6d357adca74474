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
from reaping import adopting

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
    leftovers: list[str]  # processes of the job still alive after mpiexec returned
    leaked: list[str]  # MPICH segments the job left in /dev/shm
    stdout: str = ""

    @property
    def timed_out(self) -> bool:
        """mpiexec ended the job at MPIEXEC_TIMEOUT (the backstop), not the job itself."""
        return "APPLICATION TIMED OUT" in self.output


def mpiexec(argv: list[str], env: dict, timeout: float = 90) -> MPIRun:
    """`mpiexec ARGV` as this process's child, with MPIEXEC_TIMEOUT as a backstop (a hang
    fails the test, never the suite).  This process adopts what the job leaves behind (a
    Hydra proxy that mpiexec did not wait for, ranks), so nothing stays "defunct", and
    reports what was still alive and which MPICH segments the job left."""
    before = _mpich_segments()
    full_env = {**os.environ, "MPIEXEC_TIMEOUT": "60", **env}
    with adopting() as adoption:
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [str(MPIEXEC), *argv], capture_output=True, text=True, timeout=timeout, env=full_env
            )
        finally:
            left = adoption.leftovers()
    leaked = _unmapped(_mpich_segments() - before)
    for p in leaked:  # the machine stays clean; the test sees them in `leaked`
        p.unlink(missing_ok=True)
    output = proc.stdout + proc.stderr
    leaked_names = sorted(map(str, leaked))
    return MPIRun(
        proc.returncode, output, time.monotonic() - t0, {}, left, leaked_names, proc.stdout
    )


def run_mpi(n: int, program: str, *args: object, env: dict | None = None) -> MPIRun:
    """`mpiexec -n N python -m mpi4py transport_programs.py PROGRAM ARGS...`.  Each rank
    writes what its program returned to a file of a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="ckeir-mpi-"))
    argv = ["-n", str(n), sys.executable, "-m", "mpi4py"]
    argv += [str(HERE / "transport_programs.py"), program, *(json.dumps(a) for a in args)]
    root = str(HERE.parents[2])
    full_env = {"CKEIR_TEST_OUT": str(out), **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    try:
        run = mpiexec(argv, full_env)
        results = {int(f.stem): json.loads(f.read_text()) for f in out.glob("*.json")}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return attrs.evolve(run, results=results)


# MPICH leaves its shared-memory segment (~2 MB of RAM in /dev/shm) behind when a job is
# aborted or a rank is killed, unless the ranks unlink it once mapped (MPITransport does).

SHM = Path("/dev/shm")


def _mpich_segments() -> set[Path]:
    return set(SHM.glob("mpich_shm_*")) if SHM.is_dir() else set()


def _unmapped(new: set[Path]) -> set[Path]:
    """The segments of `new` that no process maps (killed ranks may take a moment to go)."""
    for _ in range(20):
        mapped = set()
        for maps in Path("/proc").glob("[0-9]*/maps"):
            try:
                text = maps.read_text()
            except OSError:  # the process is gone, or not ours to read
                continue
            mapped.update(p for p in new if str(p) in text)
        if not mapped:
            break
        time.sleep(0.1)
    return {p for p in new - mapped if p.exists()}
