"""Run the pass golden tests (tests/filecheck/*.mlir) through lit + filecheck, one pytest
test per file so a failure names the pass."""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "filecheck"
FILES = sorted(p.name for p in HERE.glob("*.mlir"))


@pytest.mark.parametrize("name", FILES)
def test_golden(name):
    r = subprocess.run(
        [sys.executable, "-c", "import lit.main; lit.main.main()", "-v", str(HERE / name)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Passed: 1" in r.stdout, r.stdout


def test_every_pass_has_a_golden_test():
    from ckeir.backends.llvm import lower  # noqa: F401  (registers lower-llvm)
    from ckeir.passes import PASSES

    missing = [p for p in PASSES if f"{p}.mlir" not in FILES]
    assert not missing, f"passes without a golden test in tests/filecheck: {missing}"
