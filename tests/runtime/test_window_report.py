"""The machine model times each op of a program in a small timing program of its own
(`runtime.machine._op_program`), where plan-memory lays the KV cache out anew.  An attention op
of a sliding-window layer that keeps a ring carries `kv_row`/`kv_rows`: copied as they were
into a func without a packed cache, the timing program failed the verifier, and `ckec run
--report` on such a program (Gemma 3 270M) ended in that error."""

from pathlib import Path

import ckeir
from ckeir.passes import PassContext, PassManager, Target, parse_pipeline
from ckeir.runtime import machine

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_timing_program_of_a_ring_attention(tmp_path):
    # a context far beyond window + prefill chunk, so the sliding layers keep rings
    spec = tmp_path / "ring.cke"
    text = (SPECS / "gemma3-tiny.cke").read_text()
    assert "context    128" in text
    spec.write_text(text.replace("context    128", "context    1024"))
    program = ckeir.compile(spec)
    ringed = [
        op
        for op in program.module.walk()
        if op.name == "cke.attention" and op.attr("kv_rows") is not None
    ]
    assert ringed, "the spec's sliding layers keep no ring"
    module, _ = machine._op_program(ringed[0], 2)
    PassManager(parse_pipeline("plan-memory")).run(module, PassContext(target=Target()))
    copies = [op for op in module.walk() if op.name == "cke.attention"]
    assert len(copies) == 2
    # the copies' cache laid out by plan-memory for the timing program: ring after ring
    ring = ringed[0].attr("kv_rows")
    assert [(op.attr("kv_row"), op.attr("kv_rows")) for op in copies] == [(0, ring), (ring, ring)]
