"""Decode is costed at the shapes it runs: a run report's prediction states one measured
matmul rate per kernel family and weight shape of the programs that ran (small matrices
stream their weights slower than the large one a family was once measured at)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_runner import ckec

import ckeir
from ckeir.passes.manager import funcs
from ckeir.planner import cost

ROOT = Path(__file__).resolve().parents[2]


def test_report_measures_every_matmul_shape_of_the_run(tmp_path):
    spec = ROOT / "specs" / "mha.cke"
    report = tmp_path / "r.json"
    r = ckec("run", spec, "--ids", "1,2,3", "-n", "4", "--report", report)
    assert r.returncode == 0, r.stderr
    rates = json.loads(report.read_text())["prediction_basis"]["matmul_bytes_per_second"]
    prog = ckeir.compile(spec, backend="reference")
    shapes = {
        cost.matmul_shape_kind(op)
        for f in funcs(prog.module)
        if f.attr("phase") == "decode"
        for op in f.regions[0].entry.ops
        if op.name == "cke.matmul"
    }
    assert len(shapes) > 1  # the model has matmuls of several shapes
    assert set(rates) == shapes
    assert all(rate > 0 for rate in rates.values())
