"""The code base stays `ruff check` clean (pyproject.toml holds the rules)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("ruff", path=str(Path(sys.executable).parent)) is None
    and shutil.which("ruff") is None,
    reason="ruff not installed",
)
def test_ruff_check_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    r = subprocess.run(
        [ruff, "check", "ckeir", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# ---- one way to run the CLI -----------------------------------------------------------------

TESTS = ROOT / "tests"
# A test that starts ckec itself: `-m ckeir.cli`, or "ckeir.cli" / "ckec" as an argv element.
SPAWNS_CKEC = re.compile(r"""(['"])ckeir\.cli\1|-m\s+ckeir\.cli\b|(['"])ckec\2\s*[,\]]""")
NOT_SCANNED = ("cli_runner.py", "test_lint.py")  # the one way, and the pattern's examples


def test_the_pattern_sees_a_spawned_ckec():
    assert SPAWNS_CKEC.search('[sys.executable, "-m", "ckeir.cli", "run", spec]')
    assert SPAWNS_CKEC.search("    'ckeir.cli',\n")
    assert SPAWNS_CKEC.search('f"{sys.executable} -m ckeir.cli"')
    assert SPAWNS_CKEC.search('subprocess.run(["ckec", "plan", spec])')
    assert not SPAWNS_CKEC.search("from ckeir import cli\nrc = cli.main(argv)  # ckeir.cli.main")


def test_every_cli_call_goes_through_cli_runner():
    """tests/cli_runner.py is the one way tests start ckec (interpreter, module, environment
    decided once); in-process `cli.main(argv)` calls (the fuzz workers) start nothing."""
    spawning = {
        p.relative_to(TESTS).as_posix()
        for p in TESTS.rglob("*.py")
        if p.name not in NOT_SCANNED and SPAWNS_CKEC.search(p.read_text())
    }
    assert spawning == set(), "run ckec through cli_runner (ckec, start_ckec)"
