"""Decode ops that are not matmuls (norms, RoPE, residual adds, SiLU, embedding, argmax,
attention) are costed by their kernels as this machine runs them, measured at the model's
shapes (`ckeir.runtime.machine.op_times`), instead of by their DRAM bytes alone."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir
from ckeir.backends.llvm.host import detect_host
from ckeir.passes.manager import funcs
from ckeir.planner import cost
from ckeir.planner.predict import OpTime, measured_kind, op_signature, predict
from ckeir.runtime import machine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def odd():
    return ckeir.compile(ROOT / "specs" / "odd.cke", backend="reference")


def decode_funcs(prog) -> dict:
    return {f.attr("rank", 0): f for f in funcs(prog.module) if f.attr("phase") == "decode"}


def non_matmul_ops(prog) -> list:
    return [
        op
        for f in decode_funcs(prog).values()
        for op in f.regions[0].entry.ops
        if measured_kind(op)
    ]


def measured_kind_name(name: str) -> bool:
    return name.startswith("cke.") and name not in ("cke.weight", "cke.return", "cke.matmul")


def test_one_signature_per_kernel_shape_not_per_layer(odd):
    ops = non_matmul_ops(odd)
    sigs = {op_signature(op) for op in ops}
    names = {op.name for op in ops}
    assert names >= {"cke.rmsnorm", "cke.rope", "cke.attention", "cke.add", "cke.silu_mul"}
    assert len(sigs) < len(ops)  # every layer's rmsnorm of one width shares its figure
    assert all("offset" not in s and "layer" not in s for s in sigs)


def test_every_op_is_timed_by_running_its_kernel(odd, tmp_path, monkeypatch):
    """Each signature is timed on this machine (a fresh cache: measured now), through the
    lowering the runtime uses: copies of the op in one native entry, less the entry
    without them; attention at two positions, its time growing with the keys it reads."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    calls = []
    real = machine._time_program

    def counted(module, weights, threads, host, pos):
        ops = [op.name for op in funcs(module)[0].regions[0].entry.ops]
        calls.append((ops, pos))
        return real(module, weights, threads, host, pos)

    monkeypatch.setattr(machine, "_time_program", counted)
    times = machine.op_times(decode_funcs(odd), 1, detect_host())
    assert set(times) == {op_signature(op) for op in non_matmul_ops(odd)}
    assert all(t.fixed >= 0 and t.per_position >= 0 for t in times.values())
    attention = [t for s, t in times.items() if s.startswith("cke.attention")]
    assert attention and all(t.per_position > 0 for t in attention)
    # per signature (two positions for attention): the entry with and without the copies
    assert len(calls) == 2 * (len(times) + len(attention))
    for (base, _), (copies, _) in zip(calls[::2], calls[1::2], strict=True):
        extra = copies[len(base) - 1 : -1]  # before the return: the copies of one op
        assert len(copies) - len(base) == machine.OP_COPIES == len(extra)
        assert len(set(extra)) == 1 and measured_kind_name(extra[0])
    assert {pos for _, pos in calls} == {0, *machine.ATTENTION_AT}
    # remembered: a second prediction measures nothing
    calls.clear()
    machine.op_times(decode_funcs(odd), 1, detect_host())
    assert calls == []


def test_measured_times_replace_the_roofline_in_the_replay(odd):
    (func,) = decode_funcs(odd).values()
    plan = odd.placement["decode"]
    node = cost.NodeModel("n0", 1, 8 << 30, 10e9, 1 << 20, 8 << 20)
    nodes = {"n0": node}
    base = predict(plan, {0: func}, nodes, {0: "n0"}, odd.job.cluster, 1, 20)
    sig = next(op_signature(op) for op in non_matmul_ops(odd) if op.name == "cke.attention")
    count = sum(op_signature(op) == sig for op in non_matmul_ops(odd))
    roofline = next(
        cost.op_time(op, node, 1, 20) for op in non_matmul_ops(odd) if op_signature(op) == sig
    )
    times = {sig: OpTime(1e-3, 1e-5)}  # 1 ms + 10 us per cached position
    measured = predict(
        plan, {0: func}, nodes, {0: "n0"}, odd.job.cluster, 1, 20, op_times={"n0": times}
    )
    added = measured.latency - base.latency
    assert added == pytest.approx(count * (1e-3 + 20 * 1e-5 - roofline), rel=1e-9)
    # prefill (several rows) keeps the roofline
    rows = predict(
        plan, {0: func}, nodes, {0: "n0"}, odd.job.cluster, 8, 20, op_times={"n0": times}
    )
    assert rows.latency == pytest.approx(
        predict(plan, {0: func}, nodes, {0: "n0"}, odd.job.cluster, 8, 20).latency
    )
