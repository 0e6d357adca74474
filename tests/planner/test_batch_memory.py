"""`batch N` holds N sequences' KV caches: the planner counts the cache per slot and for the
batch, `ckec plan` shows both and the batch, and a batch whose weights, slots and arenas do not
fit the node's dram is refused at the `batch` statement, naming the node and the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir
from ckeir.driver import build_ir, resolve, run_passes
from ckeir.errors import CkeError
from ckeir.passes.manager import funcs
from ckeir.planner import cost
from ckeir.planner.predict import rank_memory
from ckeir.reports.plan import plan_report

ROOT = Path(__file__).resolve().parents[2]
BATCH4 = ROOT / "tests" / "filecheck" / "Inputs" / "batch4.cke"
# Inputs/batch4.cke: 1 layer, context 16, one KV head of 32: one slot holds K and V of
# 16 positions x 32 floats
SLOT_BYTES = 2 * 1 * 16 * 32 * 4


def spec(tmp_path, batch: int, dram: str = "1GiB") -> Path:
    text = BATCH4.read_text().replace("batch 4", f"batch {batch}")
    path = tmp_path / f"b{batch}.cke"
    path.write_text(text.replace("dram 1GiB", f"dram {dram}"))
    return path


def compiled(path: Path):
    job = resolve(path)
    module, _, ctx = run_passes(build_ir(job), job)
    return module, ctx


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_the_kv_cache_is_counted_per_slot(tmp_path, batch):
    module, _ = compiled(spec(tmp_path, batch))
    (m,) = rank_memory(module).values()
    assert m["kv_slots"] == batch
    assert m["kv_cache_per_slot"] == SLOT_BYTES
    assert m["kv_cache"] == batch * SLOT_BYTES
    assert m["arena"] == sum(f.attr("arena_bytes") for f in funcs(module))
    decode = next(f for f in funcs(module) if f.attr("phase") == "decode")
    assert cost.func_kv_cache_bytes(decode) == batch * SLOT_BYTES
    assert decode.attr("max_tokens", 1) == batch  # the arena holds `batch` rows


def test_plan_report_states_the_batch_and_the_cache_per_slot():
    prog = ckeir.compile(BATCH4, backend="reference")
    report = plan_report(prog)
    assert report["batch"] == 4
    m = report["memory"][0]
    assert (m["kv_slots"], m["kv_cache_per_slot"], m["kv_cache"]) == (4, SLOT_BYTES, 4 * SLOT_BYTES)
    assert m["total"] == m["weights"] + 4 * SLOT_BYTES + m["arena"] and m["fits"]
    assert report["phases"]["decode"]["tokens"] == 4  # a step is one token of each slot


def test_a_batch_that_does_not_fit_is_refused_at_the_batch_statement(tmp_path):
    # weights 34.8 KiB, 16 slots of 4 KiB, arenas 32 KiB: 130.8 KiB on a node of 100 KiB
    path = spec(tmp_path, 16, dram="100KiB")
    with pytest.raises(CkeError) as info:
        compiled(path)
    err = info.value
    assert err.message.startswith("batch 16 does not fit: node n0 (rank 0) needs 130.8 KiB (")
    assert "64.0 KiB of KV cache (16 slots of 4.0 KiB)" in err.message
    assert "32.0 KiB of arenas) but has 100.0 KiB" in err.message
    assert (err.loc.file, err.loc.line, err.loc.col) == (str(path), 12, 3)
    assert err.hint == "batch 8 fits"
    compiled(spec(tmp_path, 8, dram="100KiB"))  # as the hint says


def test_weights_and_slots_alone_too_large_are_refused_by_place(tmp_path):
    path = spec(tmp_path, 16, dram="40KiB")
    with pytest.raises(CkeError) as info:
        compiled(path)
    assert "needs 98.8 KiB (34.8 KiB of weights + 64.0 KiB of KV cache (16 slots" in (
        info.value.message
    )
    assert info.value.loc.line == 12


def test_batched_attention_reads_each_rows_own_context():
    module, _ = compiled(BATCH4)
    decode = next(f for f in funcs(module) if f.attr("phase") == "decode")
    att = next(op for op in decode.regions[0].entry.ops if op.name == "cke.attention")
    # 4 rows, each at context 10: 11 cached rows of K and V (32 floats) per row
    assert cost.op_bytes(att, 4, 10) - cost.op_bytes(att, 4, 0) == 4 * 2 * 10 * 32 * 4
    assert cost.op_flops(att, 4, 10) == 4.0 * 4 * 11 * 2 * 32
