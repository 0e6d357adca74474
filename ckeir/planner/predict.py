"""Predictions for placements: per-rank time, per-stage time, hops, bubbles and memory.  The
formulas are `ckeir.planner.cost`'s; this module applies them to the per-rank programs that
`place` cuts (the place pass compares its `auto` candidates with it).

A step is replayed on every rank's program at once, as the runtime runs it: each rank walks
its ops in order on a clock of its own — native segments (the kernels between two messages),
sends (the sender is held for the link's time, as a shaped link holds it), receives (they
wait for the message to arrive), collectives (they wait for the last member) — and every
step ends with the next token broadcast from the last stage to all ranks.  The latency is
the time between two tokens on the last stage once the ranks have settled into their
rhythm, so a pipeline's stages add up and a tensor-parallel stage pays, at every
collective, for its slowest member.
"""

from __future__ import annotations

import attrs

from ckeir.errors import PassError
from ckeir.ir.core import Operation
from ckeir.ir.types import nbytes
from ckeir.planner import cost

SETTLE_STEPS = 3  # steps replayed; the last one's duration is the prediction
# Where an op sits, not what it computes: a measured op time is shared by every op that
# differs from it only in these attributes.
PLACEMENT_ATTRS = frozenset({"offset", "layer"})


@attrs.frozen
class Prediction:
    latency: float  # seconds per step (one token for decode, the prompt for prefill)
    stage_time: tuple[float, ...]
    rank_time: dict  # rank -> compute seconds
    comm_time: dict  # rank -> seconds in collectives and sends (link time, no waiting)
    hops: tuple[tuple[int, int, int, float], ...]  # (from, to, bytes, seconds)
    memory: dict  # rank -> bytes (weights + KV cache)
    weight_bytes: dict  # rank -> bytes

    def bubble(self, stage: int) -> float:
        return self.latency - self.stage_time[stage]


@attrs.frozen
class OpTime:
    """A decode op's time on the machine a run uses, measured at the model's shapes
    (`ckeir.runtime.machine.op_times`): `fixed` seconds, plus `per_position` for each cached
    position the op reads (attention)."""

    fixed: float
    per_position: float = 0.0

    def at(self, context: int) -> float:
        return self.fixed + self.per_position * context


def op_signature(op: Operation) -> str:
    """What a measured op time is kept under: the op, its operand types and attributes,
    but not where it sits (`PLACEMENT_ATTRS`): every layer's rmsnorm of one width shares one
    figure."""
    attrs_ = ", ".join(
        f"{k} = {v}" for k, v in sorted(op.attributes.items()) if k not in PLACEMENT_ATTRS
    )
    types = ", ".join(str(v.type) for v in op.operands)
    return f"{op.name}({types}) {{{attrs_}}}"


def measured_kind(op: Operation) -> bool:
    """Whether an op's decode time comes from `OpTime` measurements, where there are some:
    the kernels that are not matmuls (those have their weight streaming rates)."""
    return op.name.startswith("cke.") and op.name not in ("cke.weight", "cke.return", "cke.matmul")


def link_between(cluster, a: str, b: str) -> cost.LinkModel:
    """The declared link between two nodes (none declared: they share memory)."""
    link = cluster.link(a, b)
    if link is None:
        return cost.NO_LINK
    return cost.LinkModel(link.bw, link.latency)


# ---- what each rank does in one step -------------------------------------------------------


@attrs.frozen
class _Step:
    kind: str  # compute | send | recv | allreduce | allgather | broadcast
    seconds: float = 0.0  # compute
    peer: int = -1  # send / recv; the root of a broadcast
    group: tuple[int, ...] = ()
    nbytes: int = 0
    # a collective's own cost once every member is in, measured on the machine (see
    # `rank_steps`; None: the transport's fixed cost per step, `Overheads.collective`)
    fixed: float | None = None


def rank_steps(
    func: Operation,
    node: cost.NodeModel,
    tokens: int,
    context: int,
    over,
    op_times: dict | None = None,
    slots: list[int] | None = None,
) -> list:
    """One rank's step as the runtime runs it: native segments between messages, each
    message with its wire bytes (`cost.message_bytes`).  Collectives are the program's
    `dist.*` ops; a program cut by place but not yet through insert-collectives gets them
    where that pass will put them: after each matmul whose result is a partial sum or a
    vocabulary slice.  `op_times`: `op_signature` -> `OpTime` measured on the machine,
    used for one-row steps (decode) in place of the roofline, which sees only bytes, and
    for a `dist.*` collective the cost it adds to its link time (`cost.collective_time`).
    `slots`: the chunk-sum slots of each partial matmul's all-reduce, in program order, for a
    program not through insert-collectives (`cost.partial_slots`; None: one each)."""
    steps: list[_Step] = []
    ops = func.regions[0].entry.ops
    group = tuple(func.attr("group", (func.attr("rank", 0),)))
    placed = not any(op.name in ("dist.allreduce", "dist.allgather") for op in ops)
    segment = 0.0
    open_segment = False
    partial_slots = iter(slots or [])

    def close() -> None:
        nonlocal segment, open_segment
        if open_segment:
            steps.append(_Step("compute", seconds=segment + over.segment))
        segment, open_segment = 0.0, False

    for op in ops:
        if op.name in ("cke.weight", "cke.return"):
            continue
        if op.name.startswith("cke."):
            segment += _op_seconds(op, node, tokens, context, op_times)
            open_segment = True
            kind = op.attr("tp") if op.name == "cke.matmul" and len(group) > 1 else None
            if placed and kind is not None:
                close()
                sizes = _widths(op.attr("vocab_bounds") or ())
                step = _collective(op.results[0].type, kind, group, tokens, sizes, "f32")
                if kind == "partial":
                    wire = cost.allreduce_bytes(step.nbytes, next(partial_slots, 1))
                    step = attrs.evolve(step, nbytes=wire)
                steps.append(step)
        elif op.name.startswith("dist."):
            close()
            t = (op.operands or op.results)[0].type
            fmt = op.attr("format", "f32")
            if op.name in ("dist.send", "dist.recv"):
                b = cost.message_bytes(t, fmt, tokens)
                steps.append(_Step(op.name[5:], peer=op.attr("peer"), nbytes=b))
            else:
                kind = "partial" if op.name == "dist.allreduce" else "vocab"
                group = tuple(op.attr("group"))
                step = _collective(t, kind, group, tokens, op.attr("sizes") or (), fmt)
                if kind == "partial":  # with its chunk-sum slots (see insert-collectives)
                    step = attrs.evolve(step, nbytes=cost.dist_message_bytes(op, tokens))
                measured = (op_times or {}).get(op_signature(op)) if tokens == 1 else None
                if measured is not None:
                    step = attrs.evolve(step, fixed=measured.fixed)
                steps.append(step)
    close()
    return steps


def _op_seconds(op: Operation, node, tokens: int, context: int, op_times: dict | None) -> float:
    """An op's time: measured (decode, `op_times`), else the cost model's roofline."""
    if op_times and tokens == 1 and measured_kind(op):
        measured = op_times.get(op_signature(op))
        if measured is not None:
            return measured.at(context)
    return cost.op_time(op, node, tokens, context)


def _widths(bounds) -> tuple[int, ...]:
    return tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))


def _collective(t, kind: str, group: tuple[int, ...], tokens: int, sizes, fmt: str) -> _Step:
    if kind == "partial":
        return _Step("allreduce", group=group, nbytes=cost.message_bytes(t, fmt, tokens))
    # vocabulary slices of unequal widths travel padded to the widest one
    widest = t.with_shape((t.shape[0], max(sizes)))
    return _Step("allgather", group=group, nbytes=cost.message_bytes(widest, fmt, tokens))


# ---- replaying a step on every rank --------------------------------------------------------


class _Replay:
    """Every rank's clock through SETTLE_STEPS steps of their programs."""

    def __init__(self, steps: dict, link, over: cost.Overheads):
        self.steps, self.link, self.over = steps, link, over
        self.clock = dict.fromkeys(steps, 0.0)
        self.pc = dict.fromkeys(steps, 0)
        self.arrivals: dict = {}  # (src, dst) -> arrival times of messages not yet received
        self.meetings: dict = {}  # (group, ordinal) -> {rank: time it arrived}
        self.ordinal: dict = {}  # (rank, group) -> collectives this rank entered so far

    def run(self, root: int) -> float:
        ends = []
        for _ in range(SETTLE_STEPS):
            self.pc = dict.fromkeys(self.steps, 0)
            while any(self.pc[r] < len(s) for r, s in self.steps.items()):
                if not any(self._advance(r) for r in self.steps):
                    raise ValueError("the rank programs wait for each other: no step can finish")
            ends.append(self.clock[root])
        return ends[-1] - (ends[-2] if len(ends) > 1 else 0.0)

    def _advance(self, r: int) -> bool:
        moved = False
        while self.pc[r] < len(self.steps[r]) and self._try(r, self.steps[r][self.pc[r]]):
            self.pc[r] += 1
            moved = True
        return moved

    def _try(self, r: int, st: _Step) -> bool:
        over = self.over
        if st.kind == "compute":
            self.clock[r] += st.seconds
        elif st.kind == "send":
            t = cost.message_time(self.link(r, st.peer), st.nbytes, over)
            self.arrivals.setdefault((r, st.peer), []).append(self.clock[r] + t)
            self.clock[r] += t
        elif st.kind == "recv":
            queue = self.arrivals.get((st.peer, r))
            if not queue:
                return False
            self.clock[r] = max(self.clock[r], queue.pop(0))
        else:
            return self._meet(r, st)
        return True

    def _meet(self, r: int, st: _Step) -> bool:
        """A collective: each member's arrival is noted once; all leave when the last came."""
        key = (r, st.group)
        n = self.ordinal.get(key, 0)
        met = self.meetings.setdefault((st.group, st.kind, n), {})
        met.setdefault(r, self.clock[r])
        if len(met) < len(st.group):
            return False
        self.ordinal[key] = n + 1
        if st.kind == "broadcast":
            root = st.peer
            took = [cost.message_time(self.link(root, p), st.nbytes, self.over) for p in st.group]
            arrived = met[root] + cost.message_time(self.link(root, r), st.nbytes, self.over)
            self.clock[r] = met[root] + max(took) if r == root else max(met[r], arrived)
        else:
            links = [self.link(a, b) for a in st.group for b in st.group if a < b]
            slowest = max(links, key=lambda link: link.time(st.nbytes))
            took = cost.collective_time(
                st.kind, st.nbytes, len(st.group), slowest, self.over, st.fixed
            )
            self.clock[r] = max(met.values()) + took
        return True


# ---- the prediction -------------------------------------------------------------------------


def predict(
    plan,
    programs: dict[int, Operation],
    nodes,
    ranks: dict[int, str],
    cluster,
    tokens: int,
    context: int,
    links: dict | None = None,
    overheads: cost.Overheads | None = None,
    op_times: dict | None = None,
) -> Prediction:
    """The step latency of `programs` (rank -> its func) placed as `plan`.  `nodes`: node
    name -> NodeModel; `links`: (rank, rank) with the lower rank first -> LinkModel (None:
    the cluster's declared links); `overheads`: the transport's and dispatch's fixed costs
    (None: none, as for the declared cluster); `op_times`: node name -> the measured times
    of its ops (`rank_steps`; None: the roofline for every op)."""
    over = overheads or cost.Overheads()

    def link(a: int, b: int) -> cost.LinkModel:
        if links is not None:
            return links.get((min(a, b), max(a, b))) or cost.NO_LINK
        return link_between(cluster, ranks[a], ranks[b])

    times = op_times or {}
    slots = cost.partial_slots(programs)
    steps = {
        r: rank_steps(f, nodes[ranks[r]], tokens, context, over, times.get(ranks[r]), slots[r])
        for r, f in programs.items()
    }
    world = tuple(sorted(programs))
    root = plan.stages[-1].ranks[0]
    if len(world) > 1:  # the next token goes from the last stage to every rank
        for s in steps.values():
            s.append(_Step("broadcast", peer=root, group=world, nbytes=cost.TOKEN_BYTES))
    latency = _Replay(steps, link, over).run(root)
    rank_time = {r: sum(s.seconds for s in st) for r, st in steps.items()}
    comm = {r: _comm_seconds(r, st, link, over) for r, st in steps.items()}
    hops = [
        (r, s.peer, s.nbytes, cost.message_time(link(r, s.peer), s.nbytes, over))
        for r, st in steps.items()
        for s in st
        if s.kind == "send"
    ]
    first = plan.stages[0].ranks[0]
    if first != root:
        back = cost.message_time(link(root, first), cost.TOKEN_BYTES, over)
        hops.append((root, first, cost.TOKEN_BYTES, back))
    stage_time = tuple(max(rank_time[r] + comm[r] for r in s.ranks) for s in plan.stages)
    weights, memory = _memory(programs)
    return Prediction(latency, stage_time, rank_time, comm, tuple(hops), memory, weights)


def _comm_seconds(r: int, steps: list, link, over: cost.Overheads) -> float:
    """Seconds rank `r` spends in its collectives and sends, waiting for nobody."""
    total = 0.0
    for s in steps:
        if s.kind == "send":
            total += cost.message_time(link(r, s.peer), s.nbytes, over)
        elif s.kind in ("allreduce", "allgather"):
            slowest = max((link(r, p) for p in s.group if p != r), key=lambda x: x.time(s.nbytes))
            total += cost.collective_time(s.kind, s.nbytes, len(s.group), slowest, over, s.fixed)
    return total


def _memory(programs: dict[int, Operation]) -> tuple[dict, dict]:
    """Weight bytes and weights + KV cache bytes per rank."""
    weights, memory = {}, {}
    for rank, func in programs.items():
        ops = func.regions[0].entry.ops
        weights[rank] = sum(nbytes(op.results[0].type) for op in ops if op.name == "cke.weight")
        memory[rank] = weights[rank] + cost.func_kv_cache_bytes(func)
    return weights, memory


def fits(pred: Prediction, nodes, ranks) -> bool:
    return all(pred.memory[r] <= nodes[ranks[r]].dram for r in pred.memory)


# ---- memory of a placed module --------------------------------------------------------------


def rank_memory(module: Operation) -> dict[int, dict[str, int]]:
    """What each rank holds: `weights` (every distinct weight or shard any phase needs),
    `kv_cache` (`kv_slots` sequence slots of `kv_cache_per_slot` bytes: a batched decode
    program's slots, which its prefill program fills one at a time) and `arena` (the
    intermediates of each phase's program, 0 before plan-memory)."""
    seen: dict[int, set] = {}
    out: dict[int, dict[str, int]] = {}
    for f in (op for op in module.regions[0].entry.ops if op.name == "cke.func"):
        r = f.attr("rank", 0)
        m = out.setdefault(
            r, {"weights": 0, "kv_cache": 0, "kv_slots": 1, "kv_cache_per_slot": 0, "arena": 0}
        )
        for op in f.regions[0].entry.ops:
            key = (op.attr("name"), tuple(op.attr("shard") or ()))
            if op.name == "cke.weight" and key not in seen.setdefault(r, set()):
                seen[r].add(key)
                m["weights"] += nbytes(op.results[0].type)
        m["kv_slots"] = max(m["kv_slots"], cost.func_kv_slots(f))
        m["kv_cache_per_slot"] = max(m["kv_cache_per_slot"], cost.func_kv_slot_bytes(f))
        m["kv_cache"] = m["kv_slots"] * m["kv_cache_per_slot"]
        m["arena"] += f.attr("arena_bytes", 0)
    return out


def check_memory(module: Operation, ranks: dict[int, str], nodes, schedule=None) -> None:
    """Refuse a placement whose weights, KV cache (every slot's) and arenas exceed a node's
    dram, naming the node and the bytes; where the schedule's `batch` asks for several slots,
    the error points at that statement (fewer slots are the remedy)."""
    from ckeir.units import format_bytes as fb

    batch = getattr(schedule, "batch", 1) or 1
    for r, m in sorted(rank_memory(module).items()):
        node = nodes[ranks[r]]
        need = m["weights"] + m["kv_cache"] + m["arena"]
        if need <= node.dram:
            continue
        slots = m["kv_slots"]
        kv = fb(m["kv_cache"]) + " of KV cache"
        if slots > 1:
            kv += f" ({slots} slots of {fb(m['kv_cache_per_slot'])})"
        arena = f" + {fb(m['arena'])} of arenas" if m["arena"] else ""
        detail = (
            f"node {node.name} (rank {r}) needs {fb(need)} ({fb(m['weights'])} of weights + "
            f"{kv}{arena}) but has {fb(node.dram)}"
        )
        if batch > 1:
            raise PassError(
                f"batch {batch} does not fit: {detail}",
                loc=schedule.key_locs.get("batch"),
                hint=_fewer_slots(m, node.dram),
            )
        raise PassError(
            f"placement does not fit: {detail}",
            hint="give the node more layers' worth of dram, or move layers to other nodes",
        )


def _fewer_slots(m: dict, dram: int) -> str:
    """A batch that fits where the asked one does not: as many slots as fit beside the
    weights and these arenas (a smaller batch's arenas are no larger), once they are known."""
    fit = (dram - m["weights"] - m["arena"]) // max(m["kv_cache_per_slot"], 1)
    if m["arena"] and fit > 1:
        return f"batch {fit} fits"
    return "write a smaller batch, or give the node more dram"
