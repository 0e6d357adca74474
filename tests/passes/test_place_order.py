"""place cuts a program where values flow forward only: IR whose ops leave a layer's value to
a later stage and back (an op among layer 0's without its `layer`, from text) is refused with a
located PassError, not an internal error while cutting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckeir.driver import build_ir, resolve
from ckeir.errors import PassError
from ckeir.ir import parse_ir, print_ir
from ckeir.passes import PassContext, PassManager, parse_pipeline

TINY = Path(__file__).resolve().parents[2] / "specs" / "tiny.cke"  # decode: n0 | n1


def test_an_op_without_its_layer_inside_a_pipelined_layer_is_refused():
    job = resolve(TINY)
    lines = print_ir(build_ir(job, phases=("decode",))).splitlines()
    i = next(n for n, line in enumerate(lines) if "blk.0.ffn_up.weight" in line) + 1
    assert '"cke.matmul"' in lines[i] and "{layer = 0 : i64}" in lines[i]
    lines[i] = lines[i].replace("{layer = 0 : i64}", "{}")
    module = parse_ir("\n".join(lines), "cut.mlir")
    ctx = PassContext(target=job.target, options={"schedule": job.schedule, "cluster": job.cluster})
    with pytest.raises(PassError) as info:
        PassManager(parse_pipeline("shape-infer,place")).run(module, ctx)
    err = info.value
    assert err.message.startswith(
        "place: cke.matmul (no `layer`, stage 1) feeds cke.silu_mul of the earlier stage 0"
    )
    assert (err.loc.file, err.loc.line) == ("cut.mlir", i + 1)
