"""Predictions for placements: per-rank time, per-stage time, hops, bubbles and memory.  The
formulas are `ckeir.planner.cost`'s; this module applies them to the per-rank programs that
`place` cuts (the place pass compares its `auto` candidates with it)."""

from __future__ import annotations

import attrs

from ckeir.ir.core import Operation
from ckeir.ir.types import ShapedType, nbytes
from ckeir.planner import cost


@attrs.frozen
class Prediction:
    latency: float  # seconds per step (one token for decode, the prompt for prefill)
    stage_time: tuple[float, ...]
    rank_time: dict  # rank -> compute seconds
    comm_time: dict  # rank -> seconds in collectives and sends
    hops: tuple[tuple[int, int, int, float], ...]  # (from, to, bytes, seconds)
    memory: dict  # rank -> bytes (weights + KV cache)
    weight_bytes: dict  # rank -> bytes

    def bubble(self, stage: int) -> float:
        return self.latency - self.stage_time[stage]


def link_between(cluster, a: str, b: str) -> cost.LinkModel:
    link = cluster.link(a, b)
    if link is None:
        return cost.LinkModel(bw=float("inf"), latency=0.0)
    return cost.LinkModel(link.bw, link.latency)


def predict(
    plan,
    programs: dict[int, Operation],
    nodes,
    ranks: dict[int, str],
    cluster,
    tokens: int,
    context: int,
) -> Prediction:
    rank_time, comm, weights, memory = {}, {}, {}, {}
    hops = []
    for rank, func in programs.items():
        node = nodes[ranks[rank]]
        ops = func.regions[0].entry.ops
        rank_time[rank] = sum(
            cost.op_time(op, node, tokens, context)
            for op in ops
            if op.name.startswith("cke.") and op.name != "cke.weight"
        )
        weights[rank] = sum(nbytes(op.results[0].type) for op in ops if op.name == "cke.weight")
        cache = func.regions[0].entry.args[2].type
        layers = func.attr("layers", (0, cache.shape[0] - 1))
        kv = cost.kv_cache_bytes(layers[1] - layers[0] + 1, cache.shape[1], cache.shape[2])
        memory[rank] = weights[rank] + kv
        group = func.attr("group", (rank,))
        c = 0.0
        for op in ops:
            if op.name == "cke.matmul" and op.attr("tp") in ("partial", "vocab"):
                b = _row_bytes(op.results[0].type, tokens)
                peer = ranks[group[1] if group[0] == rank else group[0]]
                c += cost.allreduce_time(b, len(group), link_between(cluster, ranks[rank], peer))
            if op.name == "dist.send":
                b = _row_bytes(op.operands[0].type, tokens)
                t = link_between(cluster, ranks[rank], ranks[op.attr("peer")]).time(b)
                hops.append((rank, op.attr("peer"), b, t))
        comm[rank] = c
    stage_time = tuple(max(rank_time[r] + comm[r] for r in s.ranks) for s in plan.stages)
    seen, hop_time = set(), 0.0
    for src, dst, _b, t in hops:  # one hop per stage boundary on the critical path
        key = (plan.stage_of(src).index, plan.stage_of(dst).index)
        if key not in seen:
            seen.add(key)
            hop_time += t
    # the next token goes back from the last stage to the first (a 4-byte broadcast)
    first, last = plan.stages[0].ranks[0], plan.stages[-1].ranks[0]
    if first != last:
        t = link_between(cluster, ranks[last], ranks[first]).time(4)
        hops.append((last, first, 4, t))
        hop_time += t
    return Prediction(
        sum(stage_time) + hop_time, stage_time, rank_time, comm, tuple(hops), memory, weights
    )


def _row_bytes(t: ShapedType, tokens: int) -> int:
    rows = tokens if t.shape[0] is None else t.shape[0]
    return rows * t.shape[1] * 4 if len(t.shape) == 2 else nbytes(t)


def fits(pred: Prediction, nodes, ranks) -> bool:
    return all(pred.memory[r] <= nodes[ranks[r]].dram for r in pred.memory)
