"""What the planner puts on the wire is what the IR states: the bytes of every message in a
predicted step (sends, receives, all-reduces) equal the `bytes` attribute insert-collectives
and place gave the op, for f32 and Q8_0 transfers, in prefill (rows at the program's bound)
and decode; and `ckec plan`'s transfer table reports the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir
from ckeir import driver
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


@pytest.mark.parametrize("spec", ["tiny.cke", "hybrid.cke", "mha.cke", "hybrid-wide"])
def test_placed_programs_are_predicted_with_their_chunk_sum_slots(spec, tmp_path):
    """The planner predicts programs place made before insert-collectives states their
    all-reduces (auto placement's candidates): each all-reduce step carries the bytes, chunk
    sums included, that insert-collectives then gives the op.  hybrid-wide: hybrid.cke with
    64-wide heads, two per tensor-parallel rank (two chunk sums in the attention output's)."""
    path = ROOT / "specs" / spec
    if spec == "hybrid-wide":
        path = tmp_path / "wide.cke"
        text = (ROOT / "specs" / "hybrid.cke").read_text()
        path.write_text(text.replace("hidden   64", "hidden   256"))
    job = driver.resolve(path)
    placed, _, _ = driver.run_passes(driver.build_ir(job), job, "shape-infer,quantize,place")
    full, _, _ = driver.run_passes(driver.build_ir(job), job)
    chunked = 0
    for phase in ("prefill", "decode"):
        before = {f.attr("rank", 0): f for f in funcs(placed) if f.attr("phase") == phase}
        after = {f.attr("rank", 0): f for f in funcs(full) if f.attr("phase") == phase}
        slots = cost.partial_slots(before)
        for rank, func in before.items():
            tokens = func.attr("max_tokens", 1)
            steps = rank_steps(func, NODE, tokens, tokens, cost.Overheads(), slots=slots[rank])
            predicted = [s.nbytes for s in steps if s.kind == "allreduce"]
            stated = [b for kind, b in _ir_messages(after[rank]) if kind == "allreduce"]
            assert predicted == stated, (phase, rank)
            chunked += sum(s > 1 for s in slots[rank])
    if spec == "hybrid-wide":
        assert chunked, "the tensor-parallel stage reduces the attention output in chunks"
