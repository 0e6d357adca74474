"""A pass run twice: either the second run changes nothing (shape-infer, quantize, tile,
plan-memory), or the pass refuses with a PassError naming itself and why (place,
insert-collectives) — never a KeyError or doubled collectives that fail at run time."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import ckec

from ckeir.driver import build_ir, resolve
from ckeir.ir import print_ir
from ckeir.passes import PassContext, PassManager, parse_pipeline
from ckeir.passes.manager import DEFAULT_PIPELINE

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "specs" / "tiny.cke"


def run(module, job, pipeline: str):
    ctx = PassContext(target=job.target, options={"schedule": job.schedule, "cluster": job.cluster})
    PassManager(parse_pipeline(pipeline)).run(module, ctx)
    return module


@pytest.mark.parametrize("name", ["shape-infer", "quantize", "tile", "plan-memory"])
def test_a_second_run_changes_nothing(name):
    job = resolve(TINY)
    upto = ",".join(DEFAULT_PIPELINE[: DEFAULT_PIPELINE.index(name) + 1])
    module = run(build_ir(job), job, upto)
    once = print_ir(module)
    assert print_ir(run(module, job, name)) == once


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (
            "shape-infer,place,place",
            "place: the module is already placed (its cke.func ops carry `rank`); run it once",
        ),
        (
            "shape-infer,quantize,place,insert-collectives,insert-collectives",
            "insert-collectives: the module already has dist.* collectives; run it once",
        ),
    ],
    ids=["place", "insert-collectives"],
)
def test_a_pass_that_must_run_once_says_so(tmp_path, pipeline, message):
    ir = tmp_path / "tiny.mlir"
    ir.write_text(print_ir(build_ir(resolve(TINY))))
    r = ckec("opt", ir, "--spec", TINY, f"--pass-pipeline={pipeline}")
    assert r.returncode == 1, r.stderr
    assert message in r.stderr
    assert "internal error" not in r.stderr
