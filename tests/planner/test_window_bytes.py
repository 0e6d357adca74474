"""A sliding-window attention reads only its window of the KV cache: the cost model counts
min(context, W - 1) cached rows before a token's own, where a global layer counts them all."""

from __future__ import annotations

from pathlib import Path

from ckeir.driver import build_ir, resolve, run_passes
from ckeir.passes.manager import funcs
from ckeir.planner import cost

SPEC = Path(__file__).resolve().parents[2] / "specs" / "gemma3-tiny.cke"


def attentions():
    job = resolve(SPEC)  # `window 32`
    module, _, _ = run_passes(build_ir(job), job)
    decode = next(f for f in funcs(module) if f.attr("phase") == "decode")
    return [op for op in decode.regions[0].entry.ops if op.name == "cke.attention"]


def test_a_window_bounds_the_cache_rows_a_token_reads():
    ops = attentions()
    windowed = [op for op in ops if op.attr("window") is not None]
    full = [op for op in ops if op.attr("window") is None]
    assert windowed and full
    w = windowed[0].attr("window")
    assert w == 32 and len(windowed) == 6  # layers 0-4 and 6; layer 5 is global
    kvd = windowed[0].operands[3].type.shape[-1]
    row = 2 * kvd * 4  # a cached position's K and V, f32
    for context in (0, w // 2, w - 1, w, 3 * w):
        grown = cost.op_bytes(windowed[0], 1, context) - cost.op_bytes(windowed[0], 1, 0)
        assert grown == min(context, w - 1) * row
        assert cost.op_bytes(full[0], 1, context) - cost.op_bytes(full[0], 1, 0) == context * row
    # a prefill chunk of 8 rows past the window: the keys before its first row, then its own
    assert cost.op_bytes(windowed[0], 8, 3 * w) - cost.op_bytes(windowed[0], 8, 0) == (w - 1) * row
