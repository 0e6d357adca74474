"""`ckec run --threads-fixed` and `compile(..., adaptive_threads=)`: every token on all of a
rank's threads, on one rank and on every local rank (the report's `widths` say which policy
each pool ran); the same ids as a run whose width adapts (the default)."""

import json
from pathlib import Path

import pytest
from cli_runner import ckec
from widths import TWO_CORES_SPEC

import ckeir
from ckeir.backends.llvm.width import ENV_SWITCH
from ckeir.ranks import run_local

ROOT_SPECS = Path(__file__).resolve().parents[2] / "specs"


def _run(spec, tmp_path, *flags, env=None) -> tuple[str, dict]:
    report = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
    args = ("--ids", "1,2,3", "-n", "40", "--report", report, "--no-predict", *flags)
    r = ckec("run", spec, *args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads(report.read_text())


def test_threads_fixed_gives_the_ids_of_an_adaptive_run(tmp_path):
    spec = tmp_path / "m.cke"
    spec.write_text(TWO_CORES_SPEC)
    adaptive_out, adaptive = _run(spec, tmp_path)
    fixed_out, fixed = _run(spec, tmp_path, "--threads-fixed")
    env_out, env = _run(spec, tmp_path, env={ENV_SWITCH: "0"})
    assert adaptive_out == fixed_out == env_out and adaptive_out.strip()
    assert adaptive["decode"]["widths"]["0"]["adaptive"] is True
    for rep in (fixed, env):
        decode = rep["decode"]["widths"]["0"]
        assert decode["adaptive"] is False and decode["tokens"] == {"2": 39}


@pytest.mark.parametrize("adaptive", [False, True])
def test_the_api_choice_reaches_every_local_rank(adaptive, monkeypatch):
    """Two local ranks of 2 threads each: the Program's choice, not the environment's, is
    what each rank's pool runs with."""
    monkeypatch.setenv(ENV_SWITCH, "1" if not adaptive else "0")
    with ckeir.compile(ROOT_SPECS / "tiny.cke", threads=2, adaptive_threads=adaptive) as prog:
        assert prog.adaptive_threads is adaptive
        out = run_local(prog, [1, 2, 3], 6)
    for figures in out["ranks"]:
        policy = figures["widths"]["decode"]
        assert policy["adaptive"] is adaptive, figures["rank"]
        if not adaptive:
            assert set(policy["tokens"]) == {2}, figures["rank"]
