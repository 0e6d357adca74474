"""`ckec plan`: the planner's view of a compiled spec — who owns which layers and shards,
memory per rank (the KV cache per sequence slot and for the schedule's `batch` of them),
transfers per step, predicted time per phase, bubbles and CKU — as tables and as a JSON-ready
dict.  A batched decode step is `batch` rows: one token of each sequence; on pipeline stages
the decode's bubbles are shown for the batch as one step and as micro-batches in flight
(`planner.bubbles`)."""

from __future__ import annotations

from collections import defaultdict

from ckeir.driver import PREFILL_CHUNK
from ckeir.ir.types import nbytes
from ckeir.passes.manager import funcs
from ckeir.planner import bubbles, cost
from ckeir.planner.predict import predict, rank_memory
from ckeir.units import format_bytes, format_seconds


def plan_report(prog, machine=None) -> dict:
    """The plan of `prog`, predicted for the declared cluster, or with `machine` (a
    `ckeir.runtime.machine.MachineView`: this machine's measured figures, e.g. from
    `machine.this_machine(prog)`) for the machine the ranks would run on here."""
    module, job = prog.module, prog.job
    ranks = prog.rank_nodes
    nodes = {n.name: cost.NodeModel.of(n) for n in job.cluster.nodes}
    programs = defaultdict(dict)
    for f in funcs(module):
        programs[f.attr("phase")][f.attr("rank", 0)] = f
    out = {
        "spec": str(job.spec_path),
        "model": job.model.name,
        "cluster": job.cluster.name,
        "ranks": {r: n for r, n in ranks.items()},
        "phases": {},
        "memory": {},
        "predicted_for": "declared cluster" if machine is None else machine.basis,
        "batch": job.schedule.batch,
    }
    # weights, KV cache and arenas per rank as place and plan-memory checked them
    memory = rank_memory(module)
    arenas: dict = {}
    group = prog.config.heads // prog.config.kv_heads  # query heads per key/value head
    for phase, progs in programs.items():
        plan = prog.placement.get(phase)
        tokens = _step_tokens(phase, progs, job)

        def predicted(rows: int, plan=plan, progs=progs):
            if machine is None:
                return predict(plan, progs, nodes, ranks, job.cluster, rows, context=rows)
            return machine.predict(plan, progs, rows, context=rows)

        pred = predicted(tokens)
        stages = []
        for s in plan.stages:
            stages.append(
                {
                    "stage": s.index,
                    "nodes": list(s.nodes),
                    "ranks": list(s.ranks),
                    "layers": [s.first, s.last],
                    "kv_heads": [list(r) for r in s.kv_heads],
                    # each rank's query heads: a share of one group where its key/value
                    # head is held by several ranks (`replicated`)
                    "heads": [list(s.query_heads(j, group)) for j in range(len(s.ranks))],
                    "ffn": [list(r) for r in s.ffn],
                    "vocab": [list(r) for r in s.vocab],
                    "predicted_seconds": pred.stage_time[s.index],
                    "bubble_seconds": pred.bubble(s.index),
                }
            )
        transfers = []
        for r, f in sorted(progs.items()):
            for op in f.regions[0].entry.ops:
                if op.name.startswith("dist."):
                    t = (op.operands or op.results)[0].type
                    fmt = op.attr("format", "f32")
                    transfers.append(
                        {
                            "rank": r,
                            "op": op.name,
                            "peer": op.attr("peer"),
                            "group": list(op.attr("group") or ()),
                            "format": fmt,
                            "bytes": cost.dist_message_bytes(op, tokens),
                            "f32_bytes": cost.message_bytes(t, "f32", tokens),
                        }
                    )
            arenas.setdefault(str(r), {})[phase] = {
                "bytes": f.attr("arena_bytes", 0),
                "buffers": [
                    {
                        "op": op.name,
                        "layer": op.attr("layer"),
                        "offset": op.attr("offset"),
                        "bytes": _buffer_bytes(op, f),
                    }
                    for op in f.regions[0].entry.ops
                    if op.attr("offset") is not None
                ],
            }
        active = sum(pred.weight_bytes.values())
        out["phases"][phase] = {
            "placement": plan.describe(),
            "auto": plan.auto,
            "why": plan.why,
            "candidates": [
                {"placement": d, "predicted_seconds": t, "fits": fit}
                for d, t, fit in plan.candidates
            ],
            "tokens": tokens,
            "stages": stages,
            "transfers": transfers,
            "transfer_bytes": sum(t["bytes"] for t in transfers if t["op"] != "dist.recv"),
            "transfer_bytes_saved": sum(
                t["f32_bytes"] - t["bytes"] for t in transfers if t["op"] != "dist.recv"
            ),
            "predicted_seconds": pred.latency,
            "predicted_tokens_per_second": tokens / pred.latency if pred.latency else 0.0,
            "active_bytes": active,
            "cku": cost.cku(active, pred.latency / tokens),
            "rank_seconds": pred.rank_time,
            "comm_seconds": pred.comm_time,
        }
        b = bubbles.decode_bubbles(prog, predicted) if phase == "decode" else None
        if b is not None:
            one, fly = b["one_batch"], b["micro_batches"]
            out["phases"][phase]["bubbles"] = {
                "one_batch": one.as_dict(),
                "micro_batches": fly.as_dict(),
                # what generate_many runs (`bubbles.chosen_depth`): the shorter period
                "in_flight": fly.micro_batches if fly.period < one.period else 1,
            }
    for r, m in memory.items():
        node = nodes[ranks[r]]
        m["total"] = m["weights"] + m["kv_cache"] + m["arena"]
        m["node_dram"] = node.dram
        m["fits"] = m["total"] <= node.dram
    out["memory"] = dict(memory)
    out["arenas"] = arenas
    return out


def _step_tokens(phase: str, progs: dict, job) -> int:
    """Rows of one step: a prefill chunk, one decode token, or one token of each slot of a
    batched decode program."""
    if phase == "decode":
        return max(f.attr("slots", 1) for f in progs.values())
    return min(PREFILL_CHUNK, job.config.context)


def _buffer_bytes(op, func) -> int:
    return nbytes(op.results[0].type, dyn=func.attr("max_tokens", 1))


def print_plan(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    console.print(
        f"[bold]{report['spec']}[/]: model {report['model']} on cluster "
        f"{report['cluster']}, ranks " + ", ".join(f"{r}={n}" for r, n in report["ranks"].items())
    )
    basis = report.get("predicted_for", "declared cluster")
    basis = (
        "the declared cluster"
        if basis == "declared cluster"
        else (
            f"this machine ({basis['cpu']}, {basis['threads_per_rank']} threads per rank, "
            f"links: {basis['links']})"
        )
    )
    console.print(f"predictions for {basis}")
    for phase, p in report["phases"].items():
        t = Table(title=escape(f"{phase}: {p['placement']}" + (" (auto)" if p["auto"] else "")))
        for col in (
            "stage",
            "nodes → ranks",
            "layers",
            "kv heads",
            "q heads",
            "ffn",
            "vocab",
            "predicted",
            "bubble",
        ):
            t.add_column(col)
        for s in p["stages"]:
            t.add_row(
                str(s["stage"]),
                f"{', '.join(s['nodes'])} → {s['ranks']}",
                f"{s['layers'][0]}..{s['layers'][1]}",
                str(s["kv_heads"]),
                str(s["heads"]),
                str(s["ffn"]),
                str(s["vocab"]),
                format_seconds(s["predicted_seconds"]),
                format_seconds(s["bubble_seconds"]),
            )
        console.print(t)
        if p["auto"]:
            console.print(f"  auto: {p['why']}")
            for c in p["candidates"]:
                console.print(
                    f"    {c['placement']}: {format_seconds(c['predicted_seconds'])}"
                    f"{'' if c['fits'] else ' (does not fit)'}"
                )
        per = "token" if phase == "decode" else f"{p['tokens']}-token prompt"
        if phase == "decode" and p["tokens"] > 1:
            per = f"step of {p['tokens']} sequences' tokens"
        console.print(
            f"  predicted {format_seconds(p['predicted_seconds'])} per {per} "
            f"({p['predicted_tokens_per_second']:.1f} tok/s); transfers "
            f"{format_bytes(p['transfer_bytes'])} per step"
            + (
                f" ({format_bytes(p['transfer_bytes_saved'])} saved by Q8_0)"
                if p["transfer_bytes_saved"]
                else ""
            )
            + "; active bytes "
            f"{format_bytes(p['active_bytes'])}; CKU {format_bytes(p['cku'])}/s"
        )
        if p.get("bubbles"):
            console.print(_bubble_table(p["bubbles"]))
        if p["transfers"]:
            tt = Table(title=f"{phase} transfers per step")
            for col in ("rank", "op", "peer / group", "bytes"):
                tt.add_column(col)
            for x in p["transfers"]:
                tt.add_row(
                    str(x["rank"]),
                    x["op"],
                    str(x["peer"] if x["peer"] is not None else x["group"]),
                    str(x["bytes"]),
                )
            console.print(tt)
    at = Table(title="arenas (plan-memory): intermediates per rank and phase")
    for col in ("rank", "phase", "buffers", "peak bytes", "largest buffer"):
        at.add_column(col)
    for r, phases in sorted(report.get("arenas", {}).items()):
        for phase, a in phases.items():
            big = max(a["buffers"], key=lambda b: b["bytes"], default=None)
            at.add_row(
                r,
                phase,
                str(len(a["buffers"])),
                format_bytes(a["bytes"]),
                f"{big['op']} @ {big['offset']}: {format_bytes(big['bytes'])}" if big else "",
            )
    console.print(at)
    batch = report.get("batch", 1)
    mt = Table(title=f"memory per rank (batch {batch}: KV cache per sequence slot × slots)")
    for col in ("rank", "node", "weights", "KV cache", "arena", "total", "node DRAM", "fits"):
        mt.add_column(col)
    for r, m in sorted(report["memory"].items()):
        kv = format_bytes(m["kv_cache"])
        if m["kv_slots"] > 1:
            kv = f"{m['kv_slots']} × {format_bytes(m['kv_cache_per_slot'])} = {kv}"
        mt.add_row(
            str(r),
            report["ranks"][r],
            format_bytes(m["weights"]),
            kv,
            format_bytes(m["arena"]),
            format_bytes(m["total"]),
            format_bytes(m["node_dram"]),
            "yes" if m["fits"] else "[red]NO[/]",
        )
    console.print(mt)


def _bubble_table(b: dict):
    """Each stage's busy and idle time in a decode period (every sequence one token): the
    batch as one step beside its micro-batches in flight."""
    from rich.table import Table

    one, fly = b["one_batch"], b["micro_batches"]
    heads = [
        f"one step of {_rows(one['rows'])}",
        f"{fly['micro_batches']} micro-batch{'es' if fly['micro_batches'] > 1 else ''} of "
        f"{_rows(fly['rows'])} in flight",
    ]
    t = Table(title="decode bubbles per period (every sequence one token)")
    t.add_column("stage")
    for h in heads:
        t.add_column(f"{h}: busy / idle")
    for s in range(len(one["busy_seconds"])):
        t.add_row(
            str(s),
            *(
                f"{format_seconds(x['busy_seconds'][s])} / {format_seconds(x['idle_seconds'][s])}"
                f" ({100 * x['idle_fractions'][s]:.0f}% idle)"
                for x in (one, fly)
            ),
        )
    t.add_row(
        "period",
        *(
            f"{format_seconds(x['period_seconds'])} ({x['tokens_per_second']:.1f} tok/s)"
            for x in (one, fly)
        ),
    )
    t.caption = f"generate_many keeps {b['in_flight']} step(s) in flight: the shorter period"
    return t


def _rows(n: int) -> str:
    return f"{n} row{'s' if n != 1 else ''}"
