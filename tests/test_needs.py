"""`needs`: a missing requirement skips a test on a developer's machine and fails it under
CI=true (CI must not pass by skipping what it was set up to run)."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SUITE = """
import pytest
from needs import needs

pytestmark = needs(True, "the sun", "wait for morning")


@needs(False, "the moon", "pip install moon")
def test_needs_the_moon():
    pass


def test_needs_only_the_sun():
    pass
"""


def run_suite(tmp_path, ci):
    (tmp_path / "test_sky.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "needs", "-p", "no:cacheprovider", "-q", "-rs"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_requirement_skips_outside_ci(tmp_path):
    r = run_suite(tmp_path, ci=None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout
    assert "the moon not available (pip install moon)" in r.stdout


def test_a_missing_requirement_fails_under_ci(tmp_path):
    r = run_suite(tmp_path, ci="true")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 passed, 1 error" in r.stdout  # failed in setup, before its fixtures ran
    assert "the moon is missing, and CI=true says this test must run here: pip install moon" in (
        r.stdout
    )


def test_ci_false_is_not_ci(tmp_path):
    assert "1 passed, 1 skipped" in run_suite(tmp_path, ci="false").stdout
