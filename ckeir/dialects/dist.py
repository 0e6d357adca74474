"""The `dist` dialect: communication between ranks.  Every op states its byte count so that
the plan and the report can add up what crosses each link."""

from __future__ import annotations

from ckeir.ir.core import Operation
from ckeir.ir.opdef import OpDef, fail, register


def _check_group(op: Operation) -> None:
    group = op.attr("group")
    if len(group) < 2 or len(set(group)) != len(group):
        fail(op, f"group must list two or more distinct ranks, got {group}")
    if op.attr("bytes") < 0:
        fail(op, "bytes must be non-negative")


def _check_peer(op: Operation) -> None:
    if op.attr("peer") < 0 or op.attr("bytes") < 0:
        fail(op, "peer and bytes must be non-negative")


register(
    OpDef(
        "dist.send",
        "Send a value to rank `peer`.",
        operands=("value",),
        attributes={"peer": "int", "bytes": "int"},
        optional={"format": "str"},
        check=_check_peer,
    ),
    OpDef(
        "dist.recv",
        "Receive a value from rank `peer`.",
        results=("value",),
        attributes={"peer": "int", "bytes": "int"},
        optional={"format": "str"},
        check=_check_peer,
    ),
    OpDef(
        "dist.allreduce",
        "Sum a value over the ranks of `group`.",
        operands=("value",),
        results=("out",),
        attributes={"group": "ints", "bytes": "int"},
        check=_check_group,
        infer=lambda op: [op.operands[0].type],
    ),
    OpDef(
        "dist.allgather",
        "Concatenate a value over the ranks of `group` along `axis` (`sizes`: each rank's "
        "width, when the slices are uneven).",
        operands=("value",),
        results=("out",),
        attributes={"group": "ints", "bytes": "int", "axis": "int"},
        optional={"sizes": "ints"},
        check=_check_group,
    ),
)
