"""The run report: what one generation cost, in the units CPU inference is bound by.

CKU = active bytes touched per token (weights + KV cache + activations + communication)
÷ seconds per token; next to it, the fraction of the node's DRAM bandwidth that is.  Time
outside kernels is a decode step's wall time minus the time spent in native code.

The same report comes from one rank, local ranks and MPI ranks: `ranks` (per rank: node,
busy seconds in native code, waiting seconds inside transport calls, bytes its transport
counted, CKU — over the whole run) and `hops` (each sender → receiver pair's messages, mean
bytes, measured and predicted seconds), next to the decode time per token measured and
predicted for the machine and links the run used (`prediction_absent` says why a report
has none: `ckec run --no-predict`), and `linux`: what the kernel and the hardware saw of
every rank (`ckeir.runtime.linux`).  `prefill.widths` and `decode.widths`
say, per rank, how many tokens ran at each width of the rank's pool and how often its
policy switched (`ckeir.backends.llvm.width`); the summary says when a run narrowed."""

from __future__ import annotations

from ckeir.ir import types as ir_types
from ckeir.passes.manager import funcs
from ckeir.planner import cost
from ckeir.runtime.generate import GenerationStats
from ckeir.runtime.machine import run_prediction


def decode_active_bytes(prog, context: int, rank: int | None = None, rows: int = 1) -> int:
    """Bytes one decode step of `rows` rows (one token of each of `rows` sequences) touches
    at `context` cached tokens each, on `rank` (default: summed over ranks): each weight
    once for all the rows, each row's activations, KV-cache rows and messages."""
    total = 0
    for f in _decode_funcs(prog, rank):
        for op in f.regions[0].entry.ops:
            if op.name.startswith("cke.") and op.name not in ("cke.weight", "cke.return"):
                total += cost.op_bytes(op, rows, context)
            elif op.name.startswith("dist."):  # the IR's bytes are at the func's bound
                total += op.attr("bytes", 0) * rows // f.attr("max_tokens", 1)
    return total


def decode_weight_bytes(prog, rank: int | None = None) -> int:
    """Bytes of the weights a decode step reads once, whatever its rows: every op's weight
    operands but the embedding table's (each row reads a row of it)."""
    total = 0
    for f in _decode_funcs(prog, rank):
        for op in f.regions[0].entry.ops:
            if op.name == "cke.embed":
                continue
            for v in op.operands:
                if getattr(v, "op", None) is not None and v.op.name == "cke.weight":
                    total += ir_types.nbytes(v.type)
    return total


def _decode_funcs(prog, rank: int | None):
    return [
        f
        for f in funcs(prog.module)
        if f.attr("phase") == "decode" and (rank is None or f.attr("rank", 0) == rank)
    ]


def many_report(prog, figures: list[dict], bandwidth: float | None = None) -> dict:
    """The report of a `generate_many` run (`ranks.run_many`'s figures, every rank's, in
    rank order): the batch as the run ran it (slots, sequences, rows a decode step, steps in
    flight), and the decode from the moment every sequence had its first id: tokens per
    second over all sequences, seconds per step, and the bytes a step touched — its weights
    once for all its rows (`decode_active_bytes`) — over those seconds: CKU."""
    first = figures[0]
    m = first["many"]
    window = m["decode_window"]
    steps, rows, seconds = window["steps"], window["rows"], window["seconds"]
    per_step_rows = rows / steps if steps else 0.0
    per_step = seconds / steps if steps else 0.0
    context = int(
        m["prompt_tokens"] / max(m["sequences"], 1)
        + m["generated_tokens"] / 2 / max(m["sequences"], 1)
    )
    active = decode_active_bytes(prog, context, rows=max(round(per_step_rows), 1))
    cku = active / per_step if per_step else 0.0
    node = prog.job.cluster.node(first["node"])
    return {
        "model": prog.job.model.name,
        "spec": str(prog.job.spec_path),
        "launch": _launch(figures),
        "batch": {
            "slots": m["slots"],
            "sequences": m["sequences"],
            "rows_per_step": per_step_rows,
            "micro_batches": m["depth"],
            "most_in_flight": m["most_in_flight"],
        },
        "prompt_tokens": m["prompt_tokens"],
        "generated_tokens": m["generated_tokens"],
        "context_mean": context,
        "decode": {
            "seconds": seconds,
            "steps": steps,
            "rows": rows,
            "tokens_per_second": rows / seconds if seconds else 0.0,
            "seconds_per_step": per_step,
        },
        "weight_bytes_per_step": decode_weight_bytes(prog),
        "active_bytes_per_step": active,
        "cku_bytes_per_second": cku,
        **against_bandwidth(cku, bandwidth, node),
        "ranks": {
            f["rank"]: {
                "node": f["node"],
                "busy_seconds": f["busy_seconds"],
                "waiting_seconds": f["waiting_seconds"],
                "bytes_sent": f["bytes_sent"],
                "bytes_received": f["bytes_received"],
                "steps": f["many"]["steps"],
            }
            for f in figures
        },
        "hops": _hops(figures, None, False),
    }


# `prediction_absent` of a report made without its prediction: the predicted figures are
# null for this reason, not for a failure
NOT_PREDICTED = (
    "not made: the run asked for no prediction (ckec run --no-predict), so this machine was "
    "not measured; decode.predicted_seconds_per_token, prediction_basis and each hop's "
    "predicted_seconds are null"
)


def run_report(
    prog,
    figures: list[dict],
    bandwidth: float | None = None,
    links=None,
    parity=None,
    predict: bool = True,
) -> dict:
    """The run report, the same keys on one rank, local ranks and MPI ranks: built from every
    rank's figures (`ckeir.ranks.run_rank`, gathered on rank 0, in rank order) and the
    planner's prediction for the run as it ran (`links`: the simulated LinkModel, or None).
    Rank 0's clock measures the token times: every rank sees the same tokens.  `predict`:
    False leaves the predictions None and says so in `prediction_absent` (a machine not
    measured yet is measured first, which takes seconds: only worth it when a report is
    written, and not when the user declined it)."""
    first = figures[0]
    stats = GenerationStats(**first["stats"])
    decode_tokens = max(stats.generated_tokens - 1, 0)
    mean_context = stats.prompt_tokens + decode_tokens / 2
    context = int(mean_context)
    active = decode_active_bytes(prog, context)
    per_token = stats.decode_seconds / decode_tokens if decode_tokens else 0.0
    native = first["native_seconds"]
    outside = (
        (stats.decode_seconds - native.get("decode", 0.0)) / decode_tokens if decode_tokens else 0.0
    )
    prediction = (
        run_prediction(
            prog, context, links, threads=first["threads"], message_seconds=_message(figures)
        )
        if predict
        else None
    )
    node = prog.job.cluster.node(first["node"])
    cku = cost.cku(active, per_token)
    return {
        "model": prog.job.model.name,
        "spec": str(prog.job.spec_path),
        "host": {"cpu": prog.host.name, "isa": prog.host.isa, "threads": first["threads"]},
        "launch": _launch(figures),
        # a run decodes its one prompt: one sequence a step, in one of the schedule's slots
        "batch": 1,
        "slots": prog.job.schedule.batch,
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "context_mean": mean_context,
        "prefill": {
            "seconds": stats.prefill_seconds,
            "tokens_per_second": stats.prefill_tps,
            "native_seconds": native.get("prefill", 0.0),
            "widths": _widths(figures, "prefill"),
        },
        "decode": {
            "seconds": stats.decode_seconds,
            "tokens_per_second": stats.decode_tps,
            "seconds_per_token": per_token,
            "predicted_seconds_per_token": (
                None if prediction is None else prediction.decode_seconds_per_token
            ),
            "native_seconds": native.get("decode", 0.0),
            "outside_kernels_per_token": outside,
            "outside_kernels_fraction": outside / per_token if per_token else 0.0,
            "widths": _widths(figures, "decode"),
        },
        "prediction_basis": None if prediction is None else dict(prediction.basis),
        "prediction_absent": None if predict else NOT_PREDICTED,
        "active_bytes_per_token": active,
        "cku_bytes_per_second": cku,
        **against_bandwidth(cku, bandwidth, node),
        "links_simulated": links is not None,
        "ranks": {f["rank"]: _rank_entry(prog, f, context, per_token) for f in figures},
        "hops": _hops(figures, prediction, links is not None),
        "timings": dict(prog.timings),
        "parity": parity,
        "linux": linux_section(figures, stats.prompt_tokens, decode_tokens),
        # whether the run asked for weights and arenas on huge pages (`--no-huge-pages`...)
        "huge_pages_wanted": bool(getattr(prog, "huge_pages", True)),
    }


def against_bandwidth(cku: float, measured: float | None, node) -> dict:
    """The report's bandwidth fields: CKU as a fraction of this machine's `measured` read
    bandwidth, else of the bandwidth the spec declares for the rank's `node`."""
    bw = measured or node.dram_bw
    return {
        "bandwidth_bytes_per_second": bw,
        "bandwidth_source": "measured" if measured else f"declared (node {node.name})",
        "cku_fraction_of_bandwidth": cku / bw if bw else 0.0,
    }


def fastest_rank_cku(report: dict) -> float:
    """The highest CKU any one rank reached: more than the bandwidth a rank's threads were
    measured to read means that figure was measured under load."""
    return max(r["cku_bytes_per_second"] for r in report["ranks"].values())


def _message(figures: list[dict]) -> float | None:
    """MPI ranks: one small message's one-way time as the run's own transport measured it
    (the clock exchange's shortest round trip / 2); None elsewhere (local ranks' shared
    memory is measured once per machine)."""
    if figures[0]["transport_kind"] != "mpi" or len(figures) < 2:
        return None
    return min(f["clock_round_trip_seconds"] for f in figures[1:]) / 2


def _launch(figures: list[dict]) -> str:
    """How the ranks ran: 'one rank', or how many over which transport."""
    if len(figures) == 1:
        return "one rank"
    return f"{len(figures)} ranks over {figures[0]['transport_kind']}"


def _rank_entry(prog, f: dict, context: int, per_token: float) -> dict:
    """One rank's line of the report: where it ran and what it did over the whole run."""
    active = decode_active_bytes(prog, context, f["rank"])
    return {
        "node": f["node"],
        "threads": f["threads"],
        "busy_seconds": f["busy_seconds"],
        "waiting_seconds": f["waiting_seconds"],
        "bytes_sent": f["bytes_sent"],
        "bytes_received": f["bytes_received"],
        "active_bytes_per_token": active,
        "cku_bytes_per_second": cost.cku(active, per_token),
        "clock_offset_seconds": f["clock_offset_seconds"],
        "clock_round_trip_seconds": f["clock_round_trip_seconds"],
        "tokens": f["tokens"],
        "stats": f["stats"],
        "seconds_by_step": f["seconds_by_step"],
        "transport": f["transport"],
    }


def hop_figures(figures: list[dict]) -> dict:
    """(sender, receiver) -> messages (`count`), mean `seconds` and mean `bytes` of the
    point-to-point sends every rank recorded."""
    hops = {}
    for f in figures:
        for peer, (count, seconds, nbytes) in f["sends"].items():
            hops[(f["rank"], peer)] = {
                "count": count,
                "seconds": seconds / count,
                "bytes": nbytes / count,
            }
    return hops


def _hops(figures: list[dict], prediction, simulated: bool) -> list[dict]:
    return [
        {
            "from": a,
            "to": b,
            "messages": h["count"],
            "mean_bytes": h["bytes"],
            "measured_seconds": h["seconds"],
            "predicted_seconds": (
                None if prediction is None else prediction.hop_seconds(a, b, h["bytes"])
            ),
            "links_simulated": simulated,
        }
        for (a, b), h in sorted(hop_figures(figures).items())
    ]


def _widths(figures: list[dict], phase: str) -> dict:
    """Per rank: the tokens `phase` ran at each width of the rank's pool, the policy's
    switches and probes (`width.PhaseWidth.figures`); ranks without a pool are left out."""
    return {f["rank"]: f["widths"][phase] for f in figures if phase in (f.get("widths") or {})}


def linux_section(figures: list[dict], prompt_tokens: int, decode_tokens: int) -> dict:
    """The report's `linux`: each key holds every rank's figures, keyed by rank."""
    ranks = {f["rank"]: f["linux"] for f in figures if f.get("linux")}
    nodes = sorted({n for lx in ranks.values() for n in lx.get("numa", {}).get("nodes", ())})
    return {
        "pinned": {r: lx["pinned"] for r, lx in ranks.items()},
        "affinity": {r: lx["threads"] for r, lx in ranks.items()},
        "page_faults": {r: lx["page_faults"] for r, lx in ranks.items()},
        "context_switches": {r: lx["context_switches"] for r, lx in ranks.items()},
        "huge_pages": {r: lx.get("huge_pages") for r, lx in ranks.items()},
        "numa": {
            "nodes": nodes,
            "note": (
                f"one NUMA node (node {nodes[0]}): every thread and every page is on it"
                if len(nodes) == 1
                else f"{len(nodes)} NUMA nodes"
            ),
            "ranks": {r: _numa_rank(lx.get("numa", {})) for r, lx in ranks.items()},
        },
        "perf": {r: _perf(lx["perf"], prompt_tokens, decode_tokens) for r, lx in ranks.items()},
    }


def _numa_rank(numa: dict) -> dict:
    return {"threads": numa.get("threads", {}), "weights": numa.get("weights", {})}


def _perf(perf: dict, prompt_tokens: int, decode_tokens: int) -> dict:
    """A rank's counters per token: decode's per decoded token, prefill's per prompt token;
    without hardware counters, why not (software counters are there either way)."""

    def per(phase: str, n: int) -> dict:
        return {k: v / n for k, v in perf.get(phase, {}).items()} if n else {}

    return {
        "hardware": perf["hardware"],
        "reason": perf["reason"],
        "software_reason": perf.get("software_reason"),
        "decode_per_token": per("decode", decode_tokens),
        "prefill_per_token": per("prefill", prompt_tokens),
    }


# Weights smaller than this cannot fill huge pages worth mentioning (2 MiB each).
HUGE_WORTH_BYTES = 8 << 20


def linux_warnings(linux: dict, decode_tokens: int, huge_pages_wanted: bool = True) -> list[str]:
    """What the Linux side shows abnormal: threads preempted during decode (each costs the
    other threads of the rank a wait at the next barrier), major faults (pages read from
    disk) while generating, weights on small pages when the run wanted them on huge ones
    (not after `--no-huge-pages`, `huge_pages=False` or `CKEIR_HUGE_PAGES=0`)."""
    out = []
    for r, cs in linux["context_switches"].items():
        n = cs.get("decode", {}).get("involuntary", 0)
        if n:
            out.append(
                f"rank {r}: {n} involuntary context switches during decode "
                f"({n / max(decode_tokens, 1):.2f} per token)"
            )
    for r, pf in linux["page_faults"].items():
        n = sum(pf.get(phase, {}).get("major", 0) for phase in ("prefill", "decode"))
        if n:
            out.append(f"rank {r}: {n} major page faults while generating")
    for r, hp in linux["huge_pages"].items() if huge_pages_wanted else ():
        w = (hp or {}).get("weights")
        if w and w["bytes"] >= HUGE_WORTH_BYTES and w["huge_page_bytes"] < w["bytes"] / 2:
            out.append(
                f"rank {r}: weights not on huge pages "
                f"({w['huge_page_bytes'] / 2**20:.0f} of {w['bytes'] / 2**20:.0f} MiB)"
            )
    return out


def summary_line(report: dict) -> str:
    d = report["decode"]
    return (
        f"CKU {report['cku_bytes_per_second'] / 1e9:.2f} GB/s = "
        f"{100 * report['cku_fraction_of_bandwidth']:.0f}% of "
        f"{report['bandwidth_bytes_per_second'] / 1e9:.1f} GB/s "
        f"({report['bandwidth_source']}) | active {report['active_bytes_per_token'] / 1e6:.1f}"
        f" MB/token | outside kernels {d['outside_kernels_per_token'] * 1e6:.0f} us/token "
        f"({100 * d['outside_kernels_fraction']:.1f}%)"
        + _prediction_line(d)
        + _ranks_line(report["ranks"])
        + _widths_line(report)
        + _linux_line(
            report.get("linux"),
            max(report["generated_tokens"] - 1, 0),
            report.get("huge_pages_wanted", True),
        )
    )


def _widths_line(report: dict) -> str:
    """'threads: decode ran 97 of 127 tokens on 1 of 2 threads (3 switches)' for each phase
    and rank that ran tokens on fewer threads than its pool has; nothing when none did."""
    out = []
    several = len(report["ranks"]) > 1
    for phase in ("prefill", "decode"):
        for r, w in report[phase].get("widths", {}).items():
            tokens = {int(k): n for k, n in w["tokens"].items()}
            total = sum(tokens.values())
            for width, n in sorted(tokens.items()):
                if width < w["threads"] and n:
                    out.append(
                        f"{f'rank {r} ' if several else ''}{phase} ran {n} of {total} tokens "
                        f"on {width} of {w['threads']} threads "
                        f"({w['switches']} switch{'' if w['switches'] == 1 else 'es'})"
                    )
    return "\nthreads: " + "; ".join(out) if out else ""


def _linux_line(linux: dict | None, decode_tokens: int, huge_pages_wanted: bool) -> str:
    warnings = linux_warnings(linux, decode_tokens, huge_pages_wanted) if linux else []
    return "\nlinux: " + "; ".join(warnings) if warnings else ""


def _prediction_line(decode: dict) -> str:
    predicted = decode["predicted_seconds_per_token"]
    if predicted is None:
        return ""
    return (
        f" | predicted {predicted * 1e3:.3f} ms/token, measured "
        f"{decode['seconds_per_token'] * 1e3:.3f}"
    )


def _ranks_line(ranks: dict) -> str:
    if len(ranks) < 2:
        return ""
    return "\nCKU per rank: " + ", ".join(
        f"rank {r}: {v['cku_bytes_per_second'] / 1e9:.2f} GB/s" for r, v in ranks.items()
    )
