"""The passes on a batched decode program (`batch 4`): quantize, place, tile and plan-memory
keep its signature (per-row positions, slot-major caches, each row's slot) and size its
buffers for its `slots` rows; place keeps it whole on one rank and refuses to cut it into
stages, which would need micro-batches in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckeir.driver import build_ir, resolve
from ckeir.errors import PassError
from ckeir.ir import parse_ir, print_ir, verify
from ckeir.ir.types import nbytes
from ckeir.models.llama import build_module
from ckeir.passes import PassContext, PassManager, parse_pipeline
from ckeir.passes.manager import DEFAULT_PIPELINE, funcs

INPUTS = Path(__file__).resolve().parents[1] / "filecheck" / "Inputs"


def run(module, job, pipeline: str):
    ctx = PassContext(target=job.target, options={"schedule": job.schedule, "cluster": job.cluster})
    PassManager(parse_pipeline(pipeline)).run(module, ctx)
    return module


def decode(module):
    return next(f for f in funcs(module) if f.attr("phase") == "decode")


def test_the_default_pipeline_keeps_the_batched_signature():
    job = resolve(INPUTS / "batch4.cke")
    built = build_ir(job)
    before = [str(a.type) for a in decode(built).regions[0].entry.args]
    module = run(built, job, ",".join(DEFAULT_PIPELINE))
    func = decode(module)
    assert (
        [str(a.type) for a in func.regions[0].entry.args]
        == before
        == [
            "tensor<?xi32>",
            "tensor<?xi64>",
            "memref<4x1x16x32xf32>",
            "memref<4x1x16x32xf32>",
            "tensor<?xi32>",
        ]
    )
    assert (func.attr("rank"), func.attr("slots"), func.attr("max_tokens")) == (0, 4, 4)
    ops = func.regions[0].entry.ops
    assert not any(op.name == "cke.last_token" for op in ops)
    # every intermediate has room for 4 rows in the arena
    for op in ops:
        if op.attr("offset") is not None:
            end = op.attr("offset") + nbytes(op.results[0].type, dyn=4)
            assert end <= func.attr("arena_bytes")
    embed = next(op for op in ops if op.name == "cke.embed")
    assert nbytes(embed.results[0].type, dyn=func.attr("max_tokens")) == 4 * 64 * 4
    assert all(op.attr("act") == "q8_0" for op in ops if op.name == "cke.matmul")
    verify(parse_ir(print_ir(module)))


def test_place_refuses_to_cut_a_batched_program_into_stages():
    """`ckec opt --spec` can give place a batched program and a pipeline schedule."""
    job = resolve(INPUTS / "pair.cke")  # decode: a pipeline n0 -> n1
    module = build_module(job.config, phases=("decode",), batch=4)
    with pytest.raises(PassError) as info:
        run(module, job, "shape-infer,place")
    assert info.value.message.startswith(
        "place: func decode decodes 4 sequence slots a step, but its phase is placed on 2 "
        "ranks (n0 layers 0..0 | n1 layers 1..1); batched programs run on one rank for now"
    )
