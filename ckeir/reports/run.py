"""The run report: what one generation cost, in the units CPU inference is bound by.

CKU = active bytes touched per token (weights + KV cache + activations + communication)
÷ seconds per token; next to it, the fraction of the node's DRAM bandwidth that is.  Time
outside kernels is a decode step's wall time minus the time spent in native code."""

from __future__ import annotations

from ckeir.passes.manager import funcs
from ckeir.planner import cost


def decode_active_bytes(prog, context: int, rank: int | None = None) -> int:
    """Bytes one decode step touches at `context` cached tokens, on `rank` (default: summed
    over ranks)."""
    total = 0
    for f in funcs(prog.module):
        if f.attr("phase") != "decode" or rank is not None and f.attr("rank", 0) != rank:
            continue
        for op in f.regions[0].entry.ops:
            if op.name.startswith("cke.") and op.name not in ("cke.weight", "cke.return"):
                total += cost.op_bytes(op, 1, context)
            elif op.name.startswith("dist."):
                total += op.attr("bytes", 0)
    return total


def run_report(prog, stats, bandwidth: float | None = None, parity=None) -> dict:
    engine = prog.engine
    decode_tokens = max(stats.generated_tokens - 1, 0)
    mean_context = stats.prompt_tokens + decode_tokens / 2
    active = decode_active_bytes(prog, int(mean_context))
    per_token = stats.decode_seconds / decode_tokens if decode_tokens else 0.0
    native = getattr(engine, "native_seconds", {})
    outside = (
        (stats.decode_seconds - native.get("decode", 0.0)) / decode_tokens if decode_tokens else 0.0
    )
    node = prog.job.cluster.node(prog.rank_nodes[prog.rank or 0])
    bw = bandwidth or node.dram_bw
    cku = cost.cku(active, per_token)
    report = {
        "model": prog.job.model.name,
        "spec": str(prog.job.spec_path),
        "host": {"cpu": prog.host.name, "isa": prog.host.isa, "threads": prog.threads},
        "batch": prog.job.schedule.batch,
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "context_mean": mean_context,
        "prefill": {
            "seconds": stats.prefill_seconds,
            "tokens_per_second": stats.prefill_tps,
            "native_seconds": native.get("prefill", 0.0),
        },
        "decode": {
            "seconds": stats.decode_seconds,
            "tokens_per_second": stats.decode_tps,
            "seconds_per_token": per_token,
            "native_seconds": native.get("decode", 0.0),
            "outside_kernels_per_token": outside,
            "outside_kernels_fraction": outside / per_token if per_token else 0.0,
        },
        "active_bytes_per_token": active,
        "cku_bytes_per_second": cku,
        "bandwidth_bytes_per_second": bw,
        "bandwidth_source": "measured" if bandwidth else f"declared (node {node.name})",
        "cku_fraction_of_bandwidth": cku / bw if bw else 0.0,
        "timings": dict(prog.timings),
    }
    if parity is not None:
        report["parity"] = parity
    return report


def summary_line(report: dict) -> str:
    d = report["decode"]
    return (
        f"CKU {report['cku_bytes_per_second'] / 1e9:.2f} GB/s = "
        f"{100 * report['cku_fraction_of_bandwidth']:.0f}% of "
        f"{report['bandwidth_bytes_per_second'] / 1e9:.1f} GB/s "
        f"({report['bandwidth_source']}) | active {report['active_bytes_per_token'] / 1e6:.1f}"
        f" MB/token | outside kernels {d['outside_kernels_per_token'] * 1e6:.0f} us/token "
        f"({100 * d['outside_kernels_fraction']:.1f}%)"
    )
