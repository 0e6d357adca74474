"""What the planner puts on the wire is what the IR states: the bytes of every message in a
predicted step (sends, receives, all-reduces) equal the `bytes` attribute insert-collectives
and place gave the op, for f32 and Q8_0 transfers, in prefill (rows at the program's bound)
and decode; and `ckec plan`'s transfer table reports the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir
from ckeir.passes.manager import funcs
from ckeir.planner import cost
from ckeir.planner.predict import rank_steps
from ckeir.reports.plan import plan_report

ROOT = Path(__file__).resolve().parents[2]
NODE = cost.NodeModel("n", 1, 1 << 30, 1e10, 1 << 20, 1 << 25)


def _ir_messages(func) -> list[tuple[str, int]]:
    return [
        (op.name[5:], op.attr("bytes"))
        for op in func.regions[0].entry.ops
        if op.name in ("dist.send", "dist.recv", "dist.allreduce")
    ]


def _predicted_messages(func) -> list[tuple[str, int]]:
    tokens = func.attr("max_tokens", 1)
    steps = rank_steps(func, NODE, tokens, tokens, cost.Overheads())
    return [(s.kind, s.nbytes) for s in steps if s.kind in ("send", "recv", "allreduce")]


@pytest.mark.parametrize("spec", ["tiny.cke", "hybrid.cke", "mha.cke"])
def test_predicted_message_bytes_are_the_irs(spec):
    prog = ckeir.compile(ROOT / "specs" / spec, backend="reference")
    formats = set()
    for func in funcs(prog.module):
        ir = _ir_messages(func)
        assert _predicted_messages(func) == ir, func.attr("sym_name")
        formats |= {
            op.attr("format", "f32") for op in func.regions[0].entry.ops if op.name == "dist.send"
        }
    report = plan_report(prog)
    for phase, p in report["phases"].items():
        ir_bytes = {
            (f.attr("rank", 0), op.name, op.attr("bytes"))
            for f in funcs(prog.module)
            if f.attr("phase") == phase
            for op in f.regions[0].entry.ops
            if op.name.startswith("dist.") and op.name != "dist.allgather"
        }
        table = {(t["rank"], t["op"], t["bytes"]) for t in p["transfers"]}
        assert ir_bytes <= table, phase
    if spec == "hybrid.cke":  # `quantize transfers q8_0` over a pipeline hop
        assert "q8_0" in formats


def test_q8_0_rows_are_smaller_than_f32_rows():
    from ckeir.ir.types import TensorType, f32

    t = TensorType((None, 96), f32)
    assert cost.message_bytes(t, "f32", 3) == 3 * 384
    assert cost.message_bytes(t, "q8_0", 3) == 3 * 102
