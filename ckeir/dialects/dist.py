"""The `dist` dialect: communication between ranks.  Every op states its byte count so that
the plan and the report can add up what crosses each link."""

from __future__ import annotations

from collections import defaultdict

from ckeir import limits as L
from ckeir.errors import VerifyError
from ckeir.formats import FORMATS
from ckeir.ir.core import Operation
from ckeir.ir.opdef import Int, Ints, OpDef, Str, fail, register, register_module_check
from ckeir.ir.types import ShapedType

RANK = Int(0, L.MAX_NODES - 1)
BYTES = Int(0, L.MAX_BYTES)
GROUP = Ints((2, L.MAX_NODES), 0, L.MAX_NODES - 1)
OFFSET = {"offset": BYTES}  # where plan-memory put the result (checked by cke.func)
TRANSFER = {"format": Str("f32", "q8_0")}  # how activations travel (default f32)


def _own_rank(op: Operation) -> int | None:
    func = op.parent_op
    return None if func is None or func.name != "cke.func" else func.attr("rank")


def _check_group(op: Operation) -> None:
    group = op.attr("group")
    if len(set(group)) != len(group):
        fail(op, f"group must list distinct ranks, got {group}")
    rank = _own_rank(op)
    if rank is not None and rank not in group:
        fail(op, f"group {group} does not include the func's own rank {rank}")


def _check_allgather(op: Operation) -> None:
    _check_group(op)
    if op.attr("axis") != 1:
        fail(op, f"axis must be 1 (the columns of the rows), got {op.attr('axis')}")
    sizes = op.attr("sizes")
    x, out = op.operands[0].type, op.results[0].type
    if sizes is None or not isinstance(x, ShapedType) or not isinstance(out, ShapedType):
        return
    if len(sizes) != len(op.attr("group")) or min(sizes) < 1:
        fail(op, f"sizes {sizes} must give one positive width per rank of the group")
    if x.rank != 2 or out.rank != 2 or out.shape[1] != sum(sizes) or max(sizes) < x.shape[1]:
        fail(op, f"sizes {sizes} do not fit gathering {x} into {out}")


def _check_message(op: Operation) -> None:
    rank = _own_rank(op)
    if rank is not None and op.attr("peer") == rank:
        fail(op, f"peer {rank} is the func's own rank")
    t = (op.operands or op.results)[0].type
    fmt = FORMATS[op.attr("format", "f32")]
    if isinstance(t, ShapedType) and t.rank and t.shape[-1] is not None:
        if t.shape[-1] % fmt.block:
            fail(op, f"rows of {t.shape[-1]} cannot travel as {fmt.name} blocks of {fmt.block}")


register(
    OpDef(
        "dist.send",
        "Send a value to rank `peer`.",
        operands=("value",),
        attributes={"peer": RANK, "bytes": BYTES},
        optional=TRANSFER,
        check=_check_message,
    ),
    OpDef(
        "dist.recv",
        "Receive a value from rank `peer`.",
        results=("value",),
        attributes={"peer": RANK, "bytes": BYTES},
        optional={**TRANSFER, **OFFSET},
        check=_check_message,
    ),
    OpDef(
        "dist.allreduce",
        "Sum a value over the ranks of `group`.",
        operands=("value",),
        results=("out",),
        attributes={"group": GROUP, "bytes": BYTES},
        optional=OFFSET,
        check=_check_group,
        infer=lambda op: [op.operands[0].type],
    ),
    OpDef(
        "dist.allgather",
        "Concatenate a value over the ranks of `group` along `axis` (`sizes`: each rank's "
        "width, when the slices are uneven).",
        operands=("value",),
        results=("out",),
        attributes={"group": GROUP, "bytes": BYTES, "axis": Int(0, 1)},
        optional={"sizes": Ints((2, L.MAX_NODES), 1, L.MAX_VOCAB), **OFFSET},
        check=_check_allgather,
    ),
)


COMM = ("dist.send", "dist.recv", "dist.allreduce", "dist.allgather")


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
                        raise VerifyError(
                            f"{phase}: rank {r} sends {op.attr('bytes')} bytes to rank {peer}, "
                            f"which receives {other.attr('bytes')}",
                            loc=op.loc,
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
                        raise VerifyError(
                            f"{phase}: allreduce over {group} with unequal sizes", loc=op.loc
                        )
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
            first = next(at(r) for r in seqs if at(r) is not None)
            raise VerifyError(
                f"{phase}: the ranks' communication would deadlock: {stuck}", loc=first.loc
            )


def check_module(module: Operation) -> None:
    """Per phase, the rank programs' communication matches (see `check_matching`)."""
    by_phase: dict[str, dict[int, Operation]] = defaultdict(dict)
    for op in module.regions[0].entry.ops if module.regions and module.regions[0].blocks else ():
        if op.name == "cke.func" and any(o.name.startswith("dist.") for o in op.walk()):
            by_phase[op.attr("phase")][op.attr("rank", 0)] = op
    for phase, programs in by_phase.items():
        check_matching(programs, phase)


register_module_check(check_module)
