"""The passes on a batched decode program (`batch 4`): quantize, place, tile and plan-memory
keep its signature (per-row positions, slot-major caches, each row's slot) and size its
buffers for its `slots` rows; place cuts it into pipeline stages of one rank each (every
rank's program batched, each hop carrying the step's rows) and refuses a tensor-parallel
stage of it."""

from __future__ import annotations

from pathlib import Path

import attrs
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


def test_place_cuts_a_batched_program_into_pipeline_stages():
    """Each stage's program decodes the step's rows (`slots`, `?` rows, per-row positions,
    slot-major caches) and the hop between them carries rows x hidden f32: its `bytes` are
    the func's bound of 4 rows, 4 x 64 x 4."""
    job = resolve(INPUTS / "pair.cke")  # decode: a pipeline n0 -> n1
    module = build_module(job.config, phases=("decode",), batch=4)
    run(module, job, "shape-infer,place,insert-collectives,plan-memory")
    verify(parse_ir(print_ir(module)))
    programs = {f.attr("rank"): f for f in funcs(module)}
    assert sorted(programs) == [0, 1]
    for rank, func in programs.items():
        assert (func.attr("slots"), func.attr("max_tokens")) == (4, 4)
        args = [a.type for a in func.regions[0].entry.args]
        assert str(args[1]) == "tensor<?xi64>" and args[2].shape[0] == 4, (rank, args)
    (send,) = [op for op in programs[0].regions[0].entry.ops if op.name == "dist.send"]
    (recv,) = [op for op in programs[1].regions[0].entry.ops if op.name == "dist.recv"]
    assert str(send.operands[0].type) == "tensor<?x64xf32>"
    assert send.attr("bytes") == recv.attr("bytes") == 4 * 64 * 4
    ret = programs[1].regions[0].entry.terminator
    assert [str(v.type) for v in ret.operands] == ["tensor<?xi32>", "tensor<?x64xf32>"]
    assert not programs[0].regions[0].entry.terminator.operands  # stage 0 returns nothing


def test_place_refuses_a_tensor_parallel_stage_of_a_batched_program():
    """`ckec opt --spec` can give place a batched program under a tensor-parallel phase
    (here pair.cke's schedule with its decode phase as its prefill: one stage on both)."""
    job = resolve(INPUTS / "pair.cke")
    phases = dict(job.schedule.phases)
    phases["decode"] = attrs.evolve(phases["prefill"], name="decode")
    job = attrs.evolve(job, schedule=attrs.evolve(job.schedule, phases=phases))
    module = build_module(job.config, phases=("decode",), batch=4)
    with pytest.raises(PassError) as info:
        run(module, job, "shape-infer,place")
    assert info.value.message.startswith(
        "place: func decode decodes 4 sequence slots a step, but its phase puts stage "
        "[n0, n1] on 2 ranks ([n0, n1] layers 0..1); batched programs run on stages of one "
        "rank each"
    )
