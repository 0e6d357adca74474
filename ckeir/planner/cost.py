"""The cost model: every formula the planner and the reports use, in one place.

Decode on CPUs is bound by memory bandwidth (every weight byte is read once per token),
prefill by arithmetic; links cost latency + bytes / bandwidth.  An op's time on a node is the
larger of its memory time and its compute time (a roofline), with the node's cores working
together.  The constants below are the assumptions behind the compute side; memory and
links come from the cluster spec.
"""

from __future__ import annotations

import math

import attrs

from ckeir.ir.core import Operation
from ckeir.ir.types import ShapedType, nbytes, quant_type

CLOCK_HZ = 3.0e9  # assumed core clock
FLOPS_PER_CYCLE = 32  # one 16-lane FMA pipe: 16 multiplies + 16 adds per cycle
F32 = 4


@attrs.frozen
class NodeModel:
    """What the model knows of one node (from the cluster spec)."""

    name: str
    cores: int
    dram: int  # bytes
    dram_bw: float  # bytes/s
    l2: int
    l3: int

    @property
    def peak_flops(self) -> float:
        return self.cores * CLOCK_HZ * FLOPS_PER_CYCLE

    @classmethod
    def of(cls, node) -> NodeModel:
        return cls(node.name, node.cores, node.dram, node.dram_bw, node.l2, node.l3)


@attrs.frozen
class LinkModel:
    bw: float  # bytes/s
    latency: float  # s

    def time(self, nbytes: int) -> float:
        return self.latency + seconds(nbytes, self.bw)


def seconds(amount: float, rate: float) -> float:
    """Time to move or compute `amount` at `rate` per second; a rate of zero never finishes
    (the planner then prefers anything else) instead of dividing by zero."""
    return amount / rate if rate > 0 else math.inf


def rows_of(t, tokens: int) -> int:
    return tokens if t.shape[0] is None else t.shape[0]


def op_bytes(op: Operation, tokens: int, context: int) -> int:
    """Bytes an op moves through DRAM for `tokens` rows: its weights once, activations in and
    out, and for attention the KV cache rows it reads (context = rows already cached)."""
    if op.name == "cke.embed":  # reads one table row per token, not the table
        table = op.operands[1].type
        row = nbytes(table.with_shape((1, table.shape[1])))
        return tokens * (row + table.shape[1] * F32)
    total = 0
    for v in op.operands:
        t = v.type
        if not isinstance(t, ShapedType) or not t.static and t.shape[0] is not None:
            continue
        if v.__class__.__name__ == "OpResult" and v.op.name == "cke.weight":
            total += nbytes(t)
        elif len(t.shape) == 2 and t.shape[1] is not None:
            total += rows_of(t, tokens) * t.shape[1] * F32
    for r in op.results:
        t = r.type
        if isinstance(t, ShapedType) and len(t.shape) == 2 and t.shape[1] is not None:
            total += rows_of(t, tokens) * t.shape[1] * F32
    if op.name == "cke.attention":
        kvd = op.operands[3].type.shape[2]
        total += 2 * (context + tokens) * kvd * F32
    return total


def op_flops(op: Operation, tokens: int, context: int) -> float:
    if op.name == "cke.matmul":
        n, k = op.operands[1].type.shape
        return 2.0 * tokens * n * k
    if op.name == "cke.attention":
        h, hd = op.attr("heads"), op.attr("head_dim")
        return 4.0 * tokens * (context + tokens) * h * hd
    t = op.results[0].type if op.results else None
    if isinstance(t, ShapedType) and len(t.shape) == 2 and t.shape[1] is not None:
        return 4.0 * rows_of(t, tokens) * t.shape[1]
    return 0.0


def op_time(op: Operation, node: NodeModel, tokens: int, context: int) -> float:
    """Roofline time of one op on one node."""
    return max(
        seconds(op_bytes(op, tokens, context), node.dram_bw),
        seconds(op_flops(op, tokens, context), node.peak_flops),
    )


def message_bytes(t: ShapedType, fmt: str = "f32", tokens: int = 1) -> int:
    """Bytes one message carrying value type `t` puts on the wire: `tokens` rows when the row
    count is dynamic, each row in transfer format `fmt` (f32, or Q8_0 blocks)."""
    rows = rows_of(t, tokens) if t.rank >= 1 else 1
    one = t.with_shape((1, *t.shape[1:])) if t.rank >= 1 else t
    if fmt != "f32":
        one = one.with_element(quant_type(fmt))
    return rows * nbytes(one)


def allreduce_time(nbytes: int, ranks: int, link: LinkModel) -> float:
    """A gather-to-root + broadcast all-reduce: two hops carrying (ranks - 1) messages."""
    if ranks <= 1:
        return 0.0
    return 2 * link.latency + seconds(2 * (ranks - 1) * nbytes, link.bw)


def kv_cache_bytes(layers: int, context: int, kv_dim: int) -> int:
    return 2 * layers * context * kv_dim * F32


def share(total: int, weights: list[float], unit: int = 1) -> list[int]:
    """Split `total` (a multiple of `unit`) into len(weights) parts proportional to `weights`,
    in whole units, every part at least one unit (largest remainder).  Any skew is safe:
    the weights are scaled to the largest, and a weight that is not a positive finite
    number counts as the smallest part.  The caller checks `fits_shares` first."""
    units = total // unit
    k = len(weights)
    if not fits_shares(total, k, unit):
        raise ValueError(f"cannot split {total} into {k} parts of at least {unit}")
    w = _relative(weights)
    wsum = sum(w)
    exact = [units * x / wsum for x in w]
    parts = [max(1, int(e)) for e in exact]
    while sum(parts) > units:  # only the parts above one unit give one back
        i = max((i for i in range(k) if parts[i] > 1), key=lambda i: parts[i] - exact[i])
        parts[i] -= 1
    while sum(parts) < units:
        i = max(range(k), key=lambda i: exact[i] - parts[i])
        parts[i] += 1
    return [p * unit for p in parts]


def fits_shares(total: int, parts: int, unit: int = 1) -> bool:
    """Whether `total` makes `parts` non-empty shares of whole `unit`s."""
    return parts >= 1 and total // unit >= parts


def _relative(weights: list[float]) -> list[float]:
    """Weights as fractions of the largest (1e30 : 1 cannot overflow a sum); an infinite
    weight counts as the largest, zero, negative and NaN ones as nothing (they still get
    their one unit)."""
    clean = [min(w, 1e300) if w > 0 else 0.0 for w in weights]  # NaN > 0 is False
    top = max(clean, default=0.0)
    return [w / top for w in clean] if top > 0 else [1.0] * len(weights)


def cku(active_bytes: float, seconds_per_token: float) -> float:
    """CKU: active bytes touched per token ÷ seconds per token (bytes/s)."""
    return active_bytes / seconds_per_token if seconds_per_token > 0 else 0.0
