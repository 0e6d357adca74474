"""The cost model: every formula the planner and the reports use, in one place.

Decode on CPUs is bound by memory bandwidth (every weight byte is read once per token),
prefill by arithmetic; links cost latency + bytes / bandwidth.  An op's time on a node is the
larger of its memory time and its compute time (a roofline), with the node's cores working
together, plus the fixed cost of starting a kernel.

The figures come from one of two places, and nothing here measures: for the *declared*
cluster (`ckec plan`) memory and links come from the spec and compute from the assumed
clock below; for the *machine a run used* `ckeir.runtime.machine` measures them (read
bandwidth per thread count, the real matmul kernels' rates, dispatch and transport costs)
and hands them in as the same `NodeModel` and `Overheads`.

Collectives cost what the transport's algorithm sends (`ckeir.runtime.transport.base`):
`collective_steps` lists each step's messages, and a step over per-pair links takes as long
as its slowest message (every pair of ranks has a link of its own).
"""

from __future__ import annotations

import math

import attrs

from ckeir.ir.core import Operation
from ckeir.ir.types import ShapedType, element_format, nbytes, quant_type

CLOCK_HZ = 3.0e9  # the declared cluster's assumed core clock (a spec states no clock)
FLOPS_PER_CYCLE = 32  # one 16-lane FMA pipe: 16 multiplies + 16 adds per cycle
F32 = 4
TOKEN_BYTES = 4  # the next token, broadcast from the last stage to every rank each step


@attrs.frozen
class NodeModel:
    """What the model knows of one node: from the cluster spec (`of`), or measured on the
    machine a rank runs on (`ckeir.runtime.machine`)."""

    name: str
    cores: int
    dram: int  # bytes
    dram_bw: float  # bytes/s read by this node's threads
    l2: int
    l3: int
    flops: float = 0.0  # arithmetic rate; 0: cores x CLOCK_HZ x FLOPS_PER_CYCLE
    # matmul_shape_kind (or matmul_kind) -> weight bytes/s those kernels stream (decode)
    matmul_bw: dict = attrs.field(factory=dict, eq=False)
    op_overhead: float = 0.0  # s to start one kernel inside a native segment

    @property
    def peak_flops(self) -> float:
        return self.flops or self.cores * CLOCK_HZ * FLOPS_PER_CYCLE

    @classmethod
    def of(cls, node) -> NodeModel:
        return cls(node.name, node.cores, node.dram, node.dram_bw, node.l2, node.l3)


@attrs.frozen
class Overheads:
    """Fixed costs a step pays besides kernels and link time (zero for the declared
    cluster): per native segment (pool dispatch + the Python between segments), per
    point-to-point message and per collective step on the transport."""

    segment: float = 0.0
    message: float = 0.0
    collective: float = 0.0


@attrs.frozen
class LinkModel:
    bw: float  # bytes/s
    latency: float  # s

    def time(self, nbytes: int) -> float:
        """The one definition of a link's time: latency + bytes / bandwidth."""
        return self.latency + seconds(nbytes, self.bw)


NO_LINK = LinkModel(bw=math.inf, latency=0.0)  # ranks that share memory: no link delay


def message_time(link: LinkModel, nbytes: int, over: Overheads) -> float:
    """A point-to-point message from the start of its send to its arrival (the sender is
    held as long): over a link, the link's time (a link holds the message for its time and
    the transport's copy happens meanwhile); between ranks that share memory, the
    transport's own cost of a message."""
    return over.message if link == NO_LINK else link.time(nbytes)


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
        kvd = op.operands[3].type.shape[-1]
        total += 2 * _attended(op, tokens, context) * kvd * F32
    return total


def _attended(op: Operation, tokens: int, context: int) -> int:
    """Cache rows one attention reads and writes for `tokens` rows: a sequence's context and
    its new rows; a batched attention's rows are each one token of its own sequence.  With
    a sliding window W a row sees its last W keys only: the rows read span at most W - 1
    keys before the first new row."""
    window = op.attr("window")
    if len(op.operands) == 7:  # slots: each row reads its own context (ckeir.dialects.cke)
        return tokens * (context + 1 if window is None else min(context + 1, window))
    if window is None:
        return context + tokens
    return min(context, window - 1) + tokens


def op_flops(op: Operation, tokens: int, context: int) -> float:
    if op.name == "cke.matmul":
        n, k = op.operands[1].type.shape
        return 2.0 * tokens * n * k
    if op.name == "cke.attention":
        h, hd = op.attr("heads"), op.attr("head_dim")
        rows = _attended(op, tokens, context)  # each query row over its sequence's keys:
        per_query = rows / tokens if len(op.operands) == 7 else rows  # (causal: the bound)
        return 4.0 * tokens * per_query * h * hd
    t = op.results[0].type if op.results else None
    if isinstance(t, ShapedType) and len(t.shape) == 2 and t.shape[1] is not None:
        return 4.0 * rows_of(t, tokens) * t.shape[1]
    return 0.0


def matmul_kind(op: Operation) -> str:
    """Which kernel family runs a matmul: weight format and activation format ("q4_1/q8_0":
    int8 dot products on Q8_0-quantized activations; "q4_1/f32": float activations)."""
    weight = element_format(op.operands[1].type.element).name
    return f"{weight}/{op.attr('act') or 'f32'}"


def matmul_shape_kind(op: Operation) -> str:
    """The kernel a matmul runs: its family at its weight's shape ("q4_1/q8_0@576x1536":
    N x K), and how it sums K when it sums in chunks ("/c512": `k_chunk`, each chunk's lanes
    reduced and the sums folded; "/c512s": each chunk's sums stored apart, as a later member
    of a row-parallel matmul's group delivers them).  Small matrices stream their weights
    slower than large ones (the threads' start-up and imbalance weigh more), and a chunked
    kernel reduces its lanes once per chunk, so decode is costed at the kernels it runs."""
    n, k = op.operands[1].type.shape
    chunk, separate = k_chunking(op)
    how = f"/c{chunk}{'s' if separate else ''}" if chunk else ""
    return f"{matmul_kind(op)}@{n}x{k}{how}"


def k_chunking(op: Operation) -> tuple[int, bool]:
    """(k_chunk or 0, whether the chunk sums are stored apart) of a matmul, as lower-llvm
    lowers it: apart on every member of a row-parallel matmul's group but the first."""
    chunk = op.attr("k_chunk") or 0
    func = op.parent_op
    rank = func.attr("rank", 0) if func is not None else 0
    group = func.attr("group", (rank,)) if func is not None else (rank,)
    separate = bool(chunk) and op.attr("tp") == "partial" and rank != group[0]
    return chunk, separate


def op_time(op: Operation, node: NodeModel, tokens: int, context: int) -> float:
    """Roofline time of one op on one node, plus the cost of starting its kernel.  A matmul
    streams its weights at the rate measured for its kernel family when there is one."""
    bw = node.dram_bw
    if op.name == "cke.matmul":
        bw = node.matmul_bw.get(matmul_shape_kind(op), node.matmul_bw.get(matmul_kind(op), bw))
    return node.op_overhead + max(
        seconds(op_bytes(op, tokens, context), bw),
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


def allreduce_bytes(value_bytes: int, slots: int = 1) -> int:
    """Bytes each member of an all-reduce puts on the wire: its value, or for a matmul
    reduced in chunks (`k_chunk`), `slots` chunk sums of the value's size each."""
    return value_bytes * slots


def delivered_chunks(op: Operation, first: bool) -> int:
    """Chunk sums a partial matmul's rank puts in the all-reduce: one when it is the group's
    first member (its fold is the prefix of the whole fold) or unchunked, else one each."""
    chunk = op.attr("k_chunk")
    return 1 if first or chunk is None else op.operands[1].type.shape[1] // chunk


def partial_slots(programs: dict[int, Operation]) -> dict[int, list[int]]:
    """Per rank, the chunk-sum slots of each of its partial matmuls' all-reduces, in program
    order: the most any member of its group delivers (the members' programs hold the same
    partial matmuls, in the same order).  insert-collectives states them in the bytes of the
    `dist.allreduce` it adds; the planner counts them for programs not through it yet."""

    def partials(func: Operation) -> list[Operation]:
        ops = func.regions[0].entry.ops
        return [op for op in ops if op.name == "cke.matmul" and op.attr("tp") == "partial"]

    out = {}
    for rank, func in programs.items():
        group = func.attr("group", (rank,))
        per_member = [
            [delivered_chunks(op, g == group[0]) for op in partials(programs[g])]
            for g in group
            if g in programs
        ]
        out[rank] = [max(col) for col in zip(*per_member, strict=True)] if per_member else []
    return out


def allreduce_slots(wire_bytes: int, value_bytes: int) -> int:
    """The chunk-sum slots of an all-reduce from its bytes (the inverse of allreduce_bytes)."""
    return max(1, wire_bytes // value_bytes) if value_bytes else 1


def dist_message_bytes(op: Operation, tokens: int) -> int:
    """Bytes one message of a `dist.*` op puts on the wire at `tokens` rows: its value's
    (`message_bytes`), times an all-reduce's chunk-sum slots (stated by its `bytes`, which
    hold them at the func's bound)."""
    t = (op.operands or op.results)[0].type
    wire = message_bytes(t, op.attr("format", "f32"), tokens)
    if op.name != "dist.allreduce":
        return wire
    func = op.parent_op
    bound = func.attr("max_tokens", 1) if func is not None else tokens
    return allreduce_bytes(
        wire, allreduce_slots(op.attr("bytes", 0), message_bytes(t, "f32", bound))
    )


# Up to this many bytes (or between two ranks), the transports' allreduce sends whole buffers
# (one step) instead of reduce-scatter + allgather (two steps, fewer bytes per rank).
ALLREDUCE_DIRECT_BYTES = 64 * 1024


def allreduce_is_direct(group: int, nbytes: int) -> bool:
    """Whether an allreduce of `nbytes` over `group` ranks runs as one direct exchange (the
    transports and `collective_steps` both ask here)."""
    return group == 2 or nbytes <= ALLREDUCE_DIRECT_BYTES


def collective_steps(
    kind: str, nbytes: int, group: int, member: int = 0, root: int = 0, itemsize: int = F32
) -> tuple[tuple[int, ...], ...]:
    """The messages member `member` (an index into the group) sends in each step of the
    transport's `kind` collective over `group` ranks of an `nbytes` buffer: one tuple of
    message sizes per step, in the order the transport runs them.

    - allreduce, 2 ranks or at most ALLREDUCE_DIRECT_BYTES: one step, the whole buffer to
      every other member (each sums locally);
    - allreduce, larger over 3+ ranks: reduce-scatter (each peer's slice to that peer), then
      allgather (one's own summed slice to every peer): two steps;
    - allgather: one step, one's own part to every other member;
    - broadcast: the root sends the buffer to every other member, the others send nothing.
    """
    if group <= 1:
        return ()
    peers = group - 1
    if kind == "allreduce" and allreduce_is_direct(group, nbytes):
        return ((nbytes,) * peers,)
    if kind == "allreduce":
        sizes = [itemsize * (hi - lo) for lo, hi in slices(nbytes // itemsize, group)]
        others = [b for i, b in enumerate(sizes) if i != member]
        return (tuple(others), (sizes[member],) * peers)
    if kind == "allgather":
        return ((nbytes,) * peers,)
    if kind == "broadcast":
        return ((nbytes,) * peers,) if member == root else ((),)
    raise ValueError(f"no cost for collective {kind!r}")


def slices(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [lo, hi) ranges covering 0..n, as equal as possible (ceil steps):
    how the transports split a sliced allreduce."""
    step = math.ceil(n / parts)
    return [(min(i * step, n), min((i + 1) * step, n)) for i in range(parts)]


def collective_time(
    kind: str,
    nbytes: int,
    group: int,
    link: LinkModel,
    over: Overheads = Overheads(),
    fixed: float | None = None,
) -> float:
    """Seconds of a collective once every member has arrived.  Each step's messages cross
    separate per-pair links at once and every member waits for the others, so a step lasts
    as long as its largest message, plus the transport's fixed cost per step — or, `fixed`,
    the whole collective's own cost as measured (its copies and sums included), spread over
    its steps."""
    per_member = [collective_steps(kind, nbytes, group, m) for m in range(group)]
    steps = list(zip(*per_member, strict=True))
    own = over.collective if fixed is None else fixed / max(len(steps), 1)
    total = 0.0
    for step in steps:
        largest = max((b for msgs in step for b in msgs), default=0)
        total += link.time(largest) + own
    return total


def kv_cache_bytes(layers: int, context: int, kv_dim: int) -> int:
    return 2 * layers * context * kv_dim * F32


def func_kv_slots(func: Operation) -> int:
    """Sequence slots a program's KV cache holds: the outer dimension of a batched decode
    func's slot-major cache (`memref<B x L x C x KVD>`), else one."""
    cache = func.regions[0].entry.args[2].type
    return cache.shape[0] if cache.rank == 4 else 1


def kv_ring_rows(window: int, context: int, rows: int) -> int:
    """Cache rows of a layer that attends to its last `window` keys, when a call stores up to
    `rows` rows: W + rows - 1 (the first row of a call reads back to p - W + 1 while its last
    stores at p + rows - 1), or the whole context when that is no fewer."""
    return min(context, window + rows - 1) if window else context


def func_kv_slot_bytes(func: Operation) -> int:
    """One sequence's KV cache in a rank's program: the rows plan-memory packed it in
    (`kv_rows`: sliding-window layers in rings of `kv_ring_rows`), else its own layers
    (`layers`, else every layer of its cache argument) at the full context."""
    layers, context, kv_dim = func.regions[0].entry.args[2].type.shape[-3:]
    rows = func.attr("kv_rows")
    if rows is not None:
        return 2 * rows * kv_dim * F32
    first, last = func.attr("layers", (0, layers - 1))
    return kv_cache_bytes(last - first + 1, context, kv_dim)


def func_kv_cache_bytes(func: Operation) -> int:
    """The KV cache one rank's program holds: every slot's (`func_kv_slot_bytes`)."""
    return func_kv_slots(func) * func_kv_slot_bytes(func)


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
