"""plan-memory: lay out every intermediate of a program in one arena, by liveness.

Requires: shape-infer (sizes known; `?` rows are bounded by the func's `max_tokens`).  A value
is live from the op that defines it to its last use (the function's outputs to the end).  Two
values share bytes only if their live ranges are disjoint: an op's output never overlaps its
own inputs.  Placement is greedy by size (largest first, lowest offset that fits), each buffer
aligned to 64 bytes.  Sets `offset` on every op that defines an intermediate, `arena_bytes` on
the func, and puts a `mem.arena` op (bytes, alignment, buffer count) at the top of the body.
After place (ranks known), each rank's weights, KV cache of every slot and arenas must fit its
node's dram, as place checked without the arenas.

It also lays out the KV cache.  A sliding-window layer (`window` W) needs only the keys of its
last W positions, so where W + T - 1 rows are fewer than the context it keeps a ring of that
many (`kv_ring_rows`; T: the most rows of one sequence a call of any func of the module
stores, so that a prefill chunk never overwrites keys its own first rows still read); the
keys and values of position p sit in row p mod R.  Then each layer the func attends in gets
its extent of one packed cache, in layer order: `kv_row` (its first row) and, on a ring,
`kv_rows` (R) on the attention op, and the rows of one sequence's cache, `kv_rows`, on the
func; the runtime allocates that many rows (per slot) instead of layers x context.  Every
func of a module sees the same T, so the prefill and decode programs that share a cache lay
it out alike; where prefill and decode place layers or heads apart, the runtime's KV handoff
finds a layer's rows in each phase's cache by the same layout (`kv_extents`, `kv_cache_row`).
A module without a ring layer keeps its (L, C, KVD) cache, unannotated.
"""

from __future__ import annotations

from collections import defaultdict

import attrs

from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.types import ShapedType, nbytes
from ckeir.passes.manager import Pass, PassContext, funcs, register_pass
from ckeir.passes.shape_infer import require_ranked
from ckeir.planner import cost
from ckeir.planner.predict import check_memory

ALIGN = 64
NOT_IN_ARENA = ("cke.weight", "mem.arena")


@attrs.frozen
class Buffer:
    op: Operation
    size: int
    start: int
    end: int


def live_buffers(func: Operation) -> list[Buffer]:
    ops = func.regions[0].entry.ops
    bound = func.attr("max_tokens", 1)
    index = {op: i for i, op in enumerate(ops)}
    out = []
    for i, op in enumerate(ops):
        if op.name in NOT_IN_ARENA or len(op.results) != 1:
            continue
        t = op.results[0].type
        if not isinstance(t, ShapedType):
            continue
        last = max((index[user] for user, _ in op.results[0].uses), default=i)
        if any(user.name == "cke.return" for user, _ in op.results[0].uses):
            last = len(ops)
        size = -(-nbytes(t, dyn=bound) // ALIGN) * ALIGN
        out.append(Buffer(op, size, i, last))
    return out


def assign_offsets(buffers: list[Buffer]) -> tuple[dict[Operation, int], int]:
    """Greedy-by-size interval packing; returns offsets and the arena size.  Placed buffers
    are indexed by the op positions where they are live, so that a buffer meets only the
    buffers live beside it (comparing with every placed one was quadratic in the program)."""
    live_at: dict[int, list[tuple[int, Buffer]]] = defaultdict(list)
    offsets: dict[Operation, int] = {}
    top = 0
    for b in sorted(buffers, key=lambda b: (-b.size, b.start)):
        overlapping = {id(p): (o, o + p.size) for t in _span(b) for o, p in live_at[t]}
        offset = 0
        for lo, hi in sorted(overlapping.values()):
            if offset + b.size <= lo:
                break
            offset = max(offset, hi)
        for t in _span(b):
            live_at[t].append((offset, b))
        offsets[b.op] = offset
        top = max(top, offset + b.size)
    return offsets, top


def _span(b: Buffer) -> range:
    return range(b.start, b.end + 1)


def sequence_rows(module: Operation) -> int:
    """The most rows of one sequence a call of any func of the module stores: a func's
    `max_tokens`, or 1 for a batched decode func (one row per slot)."""
    return max(
        (1 if f.attr("slots") else f.attr("max_tokens", 1) for f in funcs(module)), default=1
    )


def kv_extents(windows: list[int], context: int, rows: int) -> list[tuple[int, int]] | None:
    """The packed cache's extent of each layer a func attends in, in order, for calls of up to
    `rows` rows (0: no rings), given each layer's window (0: global): (first row, ring rows R
    or 0 for the whole context); None when no layer keeps a ring (the cache stays layers x
    context).  The one layout plan-memory writes into the IR and the runtime's KV handoff
    reads back (`kv_cache_row`)."""
    extents = [cost.kv_ring_rows(w if rows else 0, context, rows) for w in windows]
    if all(r >= context for r in extents):
        return None
    firsts = [sum(extents[:i]) for i in range(len(extents))]
    return [(f, r if r < context else 0) for f, r in zip(firsts, extents, strict=True)]


def kv_cache_row(extent: tuple[int, int], pos):
    """The packed cache's row of position `pos` (an int or an array) in a layer's extent."""
    first, ring = extent
    return first + (pos % ring if ring else pos)


def plan_kv_cache(func: Operation, rows: int, rewriter: Rewriter) -> int | None:
    """Lay out the func's KV cache for calls of up to `rows` rows (0: no rings), see the
    module docstring; returns its rows per sequence, or None when no layer keeps a ring (the
    cache stays layers x context)."""
    attns = [op for op in func.regions[0].entry.ops if op.name == "cke.attention"]
    context = func.regions[0].entry.args[2].type.shape[-2]
    extents = kv_extents([op.attr("window", 0) for op in attns], context, rows)
    for op in attns:
        for name in ("kv_row", "kv_rows"):
            if op.attr(name) is not None:
                rewriter.remove_attr(op, name)
    if func.attr("kv_rows") is not None:
        rewriter.remove_attr(func, "kv_rows")
    if extents is None:
        return None
    for op, (first, ring) in zip(attns, extents, strict=True):
        rewriter.set_attr(op, "kv_row", first)
        if ring:
            rewriter.set_attr(op, "kv_rows", ring)
    top = sum(ring or context for _, ring in extents)
    rewriter.set_attr(func, "kv_rows", top)
    return top


@register_pass
class PlanMemory(Pass):
    name = "plan-memory"
    summary = "liveness-based arena layout: an offset for every intermediate"

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        require_ranked(module, self.name)  # an unranked value would get no buffer
        rows = sequence_rows(module)
        for func in funcs(module):
            kv = plan_kv_cache(func, rows, rewriter)
            if kv is not None:
                ctx.stats.setdefault("kv_rows", {})[func.attr("sym_name")] = kv
            block = func.regions[0].entry
            for old in [op for op in block.ops if op.name == "mem.arena"]:
                rewriter.erase(old)
            buffers = live_buffers(func)
            offsets, total = assign_offsets(buffers)
            for op, off in offsets.items():
                rewriter.set_attr(op, "offset", off)
            rewriter.set_attr(func, "arena_bytes", total)
            arena = Operation(
                "mem.arena",
                attributes={"bytes": total, "alignment": ALIGN, "buffers": len(buffers)},
            )
            rewriter.insert_before(block.ops[0], arena)
            ctx.stats.setdefault("arena_bytes", {})[func.attr("sym_name")] = total
        ranks, cluster = ctx.artifacts.get("ranks"), ctx.options.get("cluster")
        if ranks and cluster is not None:
            nodes = {n.name: cost.NodeModel.of(n) for n in cluster.nodes}
            check_memory(module, ranks, nodes, ctx.options.get("schedule"))
