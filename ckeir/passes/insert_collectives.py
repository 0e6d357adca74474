"""insert-collectives: add the communication that sharding implies, and prove it matches.

Requires: place, and runs once: on a module that already has `dist.allreduce` or
`dist.allgather` ops it refuses (a second run would add every collective again).  After a matmul whose output is a partial sum over its stage's ranks
(`tp = "partial"`: row-parallel attention output and FFN down projections) it inserts
`dist.allreduce {group, bytes}`; after an LM head split by vocabulary (`tp = "vocab"`) a
`dist.allgather {axis = 1}` that rebuilds the full logits.  Every dist op carries its byte
count (for `?` rows: at the func's `max_tokens`): what each member puts on the wire (an
allgather's uneven slices travel padded to the widest).  Then it checks, per phase, that every
send has a receive on its peer with the same bytes, in the same order, and that the ranks'
sequences of communication complete (a rendezvous simulation: no deadlock).

A partial matmul with `k_chunk` (see place) is reduced in chunk order: the group's first
member delivers its chunks folded, every later member each of its chunks apart, and the
all-reduce folds them in K order.  Its message then holds `slots` chunk sums per member
(the most any member delivers; fewer travel zero-padded), and its `bytes` are `slots` times
the value's (`cost.partial_slots`, `cost.allreduce_bytes`): the lowering reads the slots back from them.
"""

from __future__ import annotations

from collections import defaultdict

from ckeir.dialects.dist import check_matching
from ckeir.errors import PassError
from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.types import TensorType, nbytes
from ckeir.passes.manager import Pass, PassContext, funcs, register_pass
from ckeir.passes.shape_infer import require_ranked
from ckeir.planner import cost

COLLECTIVES = ("dist.allreduce", "dist.allgather")


def _bytes(t, func) -> int:
    return nbytes(t, dyn=func.attr("max_tokens", 1))


def insert(func: Operation, rw: Rewriter, chunk_slots: list[int] | None = None) -> None:
    group = func.attr("group", (func.attr("rank", 0),))
    added: dict[Operation, Operation] = {}
    partial = iter(chunk_slots or [])
    for op in func.regions[0].entry.ops:
        kind = op.attr("tp") if op.name == "cke.matmul" else None
        if kind is None or len(group) < 2:
            continue
        r = op.results[0]
        users = list(r.uses)
        if kind == "partial":
            wire = cost.allreduce_bytes(_bytes(r.type, func), next(partial, 1))
            new = Operation("dist.allreduce", [r], [r.type], {"group": tuple(group), "bytes": wire})
        else:
            v0, v1, full = op.attr("vocab_slice")
            bounds = op.attr("vocab_bounds")
            sizes = tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))
            out = TensorType((r.type.shape[0], full), r.type.element)
            # uneven slices travel padded to the widest: what each member puts on the wire
            wire = _bytes(r.type.with_shape((r.type.shape[0], max(sizes))), func)
            new = Operation(
                "dist.allgather",
                [r],
                [out],
                {"group": tuple(group), "bytes": wire, "axis": 1, "sizes": sizes},
            )
        added[op] = new
        for user, i in users:
            rw.set_operand(user, i, new.results[0])
    rw.insert_after_each(added)


@register_pass
class InsertCollectives(Pass):
    name = "insert-collectives"
    summary = "add allreduce/allgather after sharded matmuls; check sends meet receives"

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        require_ranked(module, self.name)
        if any(op.name in COLLECTIVES for op in module.walk()):
            raise PassError(
                "insert-collectives: the module already has dist.* collectives; run it once"
            )
        by_phase: dict[str, dict[int, Operation]] = defaultdict(dict)
        for func in funcs(module):
            by_phase[func.attr("phase")][func.attr("rank", 0)] = func
        for programs in by_phase.values():
            chunk_slots = cost.partial_slots(programs)
            for rank, func in programs.items():
                insert(func, rewriter, chunk_slots[rank])
        for phase, programs in by_phase.items():
            check_matching(programs, phase)  # also part of the verifier: see ckeir.dialects.dist
