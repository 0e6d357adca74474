"""insert-collectives: add the communication that sharding implies, and prove it matches.

Requires: place.  After a matmul whose output is a partial sum over its stage's ranks
(`tp = "partial"`: row-parallel attention output and FFN down projections) it inserts
`dist.allreduce {group, bytes}`; after an LM head split by vocabulary (`tp = "vocab"`) a
`dist.allgather {axis = 1}` that rebuilds the full logits.  Every dist op carries its byte
count (for `?` rows: at the func's `max_tokens`).  Then it checks, per phase, that every
send has a receive on its peer with the same bytes, in the same order, and that the ranks'
sequences of communication complete (a rendezvous simulation: no deadlock).
"""

from __future__ import annotations

from collections import defaultdict

from ckeir.errors import PassError
from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.types import TensorType, nbytes
from ckeir.passes.manager import Pass, PassContext, funcs, register_pass

COMM = ("dist.send", "dist.recv", "dist.allreduce", "dist.allgather")


def _bytes(t, func) -> int:
    return nbytes(t, dyn=func.attr("max_tokens", 1))


def insert(func: Operation, rw: Rewriter) -> None:
    group = func.attr("group", (func.attr("rank", 0),))
    for op in list(func.regions[0].entry.ops):
        kind = op.attr("tp") if op.name == "cke.matmul" else None
        if kind is None or len(group) < 2:
            continue
        r = op.results[0]
        users = list(r.uses)
        if kind == "partial":
            new = Operation(
                "dist.allreduce",
                [r],
                [r.type],
                {"group": tuple(group), "bytes": _bytes(r.type, func)},
            )
        else:
            v0, v1, full = op.attr("vocab_slice")
            bounds = op.attr("vocab_bounds")
            sizes = tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))
            out = TensorType((r.type.shape[0], full), r.type.element)
            new = Operation(
                "dist.allgather",
                [r],
                [out],
                {"group": tuple(group), "bytes": _bytes(r.type, func), "axis": 1, "sizes": sizes},
            )
        rw.insert_after(op, new)
        for user, i in users:
            user.set_operand(i, new.results[0])


def check_matching(programs: dict[int, Operation], phase: str) -> None:
    """Sends meet receives with equal bytes; the communication sequences cannot deadlock."""
    seqs = {
        r: [op for op in f.regions[0].entry.ops if op.name in COMM] for r, f in programs.items()
    }
    pos = dict.fromkeys(seqs, 0)

    def at(r):
        return seqs[r][pos[r]] if pos[r] < len(seqs[r]) else None

    while True:
        moved = False
        for r in seqs:
            op = at(r)
            if op is None:
                continue
            if op.name == "dist.send":
                peer = op.attr("peer")
                other = at(peer) if peer in seqs else None
                if other is not None and other.name == "dist.recv" and other.attr("peer") == r:
                    if other.attr("bytes") != op.attr("bytes"):
                        raise PassError(
                            f"{phase}: rank {r} sends {op.attr('bytes')} bytes to rank {peer}, "
                            f"which receives {other.attr('bytes')}"
                        )
                    pos[r] += 1
                    pos[peer] += 1
                    moved = True
            elif op.name in ("dist.allreduce", "dist.allgather"):
                group = op.attr("group")
                ops = [at(g) for g in group if g in seqs]
                if len(ops) == len(group) and all(
                    o is not None and o.name == op.name and o.attr("group") == group for o in ops
                ):
                    if len({o.attr("bytes") for o in ops if op.name == "dist.allreduce"}) > 1:
                        raise PassError(f"{phase}: allreduce over {group} with unequal sizes")
                    for g in group:
                        pos[g] += 1
                    moved = True
        if all(at(r) is None for r in seqs):
            return
        if not moved:
            stuck = ", ".join(
                f"rank {r} at {at(r).name} (peer/group {at(r).attr('peer', at(r).attr('group'))})"
                for r in seqs
                if at(r) is not None
            )
            raise PassError(f"{phase}: the ranks' communication would deadlock: {stuck}")


@register_pass
class InsertCollectives(Pass):
    name = "insert-collectives"
    summary = "add allreduce/allgather after sharded matmuls; check sends meet receives"

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        by_phase: dict[str, dict[int, Operation]] = defaultdict(dict)
        for func in funcs(module):
            insert(func, rewriter)
            by_phase[func.attr("phase")][func.attr("rank", 0)] = func
        for phase, programs in by_phase.items():
            check_matching(programs, phase)
