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


def test_the_plan_counts_the_kv_cache_the_engine_holds(tmp_path):
    """`ckec plan`'s KV cache per rank is what the rank's engine allocates: on a ring cache,
    the packed rows (six rings of window + chunk - 1 rows and one global layer), not every
    layer at the whole context."""
    import json

    from tests.cli_runner import ckec

    spec = tmp_path / "ring.cke"
    spec.write_text(
        (SPECS / "gemma3-tiny.cke").read_text().replace("context    128", "context    4096")
    )
    plan = tmp_path / "plan.json"
    done = ckec("plan", spec, "--json", plan)
    assert done.returncode == 0, done.stderr
    planned = json.loads(plan.read_text())["memory"]["0"]["kv_cache"]
    with ckeir.compile(spec, threads=1) as prog:
        prog.generate([1, 2, 3], max_new_tokens=1)
        held = sum(r.length for r in prog.engine.memory_regions() if r.name == "kv_cache")
    assert planned == held
    config = prog.config
    assert held < 2 * config.layers * config.context * config.kv_dim * 4 / 2
