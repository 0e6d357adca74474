"""Chrome Trace Event JSON (opens in Perfetto and chrome://tracing): one process track per
rank, complete events ("ph": "X") with microsecond `ts`/`dur`, metadata events naming the
tracks and labelling each with the CPUs its threads ran on.  Every rank's records are put on
rank 0's clock by the offset measured at the start of the run (`Transport.clock_offset`),
which the trace keeps in its `otherData`."""

from __future__ import annotations

import json

COMM = ("send", "recv", "allreduce", "allgather", "broadcast", "wait")


def trace_events(
    per_rank: dict[int, list[tuple]],
    names: dict[int, str],
    offsets: dict[int, float] | None = None,
    cpus: dict[int, str] | None = None,
) -> list[dict]:
    """`per_rank[r]` holds (kind, peer or group, bytes, t0 seconds, duration seconds) on rank
    r's clock; `offsets[r]` (default 0) is added to put it on rank 0's; `cpus[r]` says where
    rank r's threads ran (a label on its track)."""
    offsets = offsets or {}
    cpus = cpus or {}
    t_min = min(
        (e[3] + offsets.get(r, 0.0) for r, evs in per_rank.items() for e in evs), default=0.0
    )
    out = []
    for rank, events in sorted(per_rank.items()):
        out += _track_names(rank, names.get(rank, "?"))
        if rank in cpus:
            out.append(_label(rank, cpus[rank]))
        offset = offsets.get(rank, 0.0)
        for kind, peer, nbytes, t0, dt in events:
            out.append(
                {
                    "ph": "X",
                    "name": kind,
                    "cat": "comm" if kind in COMM else "kernel",
                    "pid": rank,
                    "tid": 0,
                    # the same sum as t_min's, then the difference: never below 0 (shifting
                    # by (offset - t_min) rounds differently and made the first event -1e-10)
                    "ts": ((t0 + offset) - t_min) * 1e6,
                    "dur": dt * 1e6,
                    "args": {
                        "peer": peer if isinstance(peer, int) else list(peer),
                        "bytes": nbytes,
                    },
                }
            )
    return out


def _track_names(rank: int, node: str) -> list[dict]:
    """The metadata events naming rank `rank`'s process track and its one thread."""
    return [
        {
            "ph": "M",
            "name": "process_name",
            "pid": rank,
            "tid": 0,
            "args": {"name": f"rank {rank} ({node})"},
        },
        {"ph": "M", "name": "thread_name", "pid": rank, "tid": 0, "args": {"name": "program"}},
    ]


def _label(rank: int, text: str) -> dict:
    return {"ph": "M", "name": "process_labels", "pid": rank, "tid": 0, "args": {"labels": text}}


def cpu_label(linux: dict) -> str:
    """Where a rank's pool threads ran, from its `linux` figures: 'pinned: thread 0 on CPU 1,
    thread 1 on CPU 0' (or 'unpinned: ...', each thread's last CPU)."""
    threads = linux["threads"]
    where = ", ".join(f"thread {tid} on CPU {t['cpu']}" for tid, t in sorted(threads.items()))
    return f"{'pinned' if linux['pinned'] else 'unpinned'}: {where}"


def write_trace(path, per_rank, names, flag: str | None = None, clocks=None, linux=None) -> None:
    """`clocks[r]`: rank r's measured (offset seconds, round trip seconds) to rank 0;
    `linux[r]`: rank r's Linux figures (`ckeir.runtime.linux`), for where its threads ran."""
    from ckeir.outputs import write_output

    clocks = clocks or {}
    offsets = {r: c[0] for r, c in clocks.items()}
    cpus = {r: cpu_label(lx) for r, lx in (linux or {}).items() if lx and lx.get("threads")}
    trace = {
        "traceEvents": trace_events(per_rank, names, offsets, cpus),
        "displayTimeUnit": "ms",
        "otherData": {
            "clock": "rank 0's time.perf_counter(); other ranks shifted by a measured offset",
            "clock_offset_seconds": {str(r): c[0] for r, c in sorted(clocks.items())},
            "clock_round_trip_seconds": {str(r): c[1] for r, c in sorted(clocks.items())},
        },
    }
    write_output(path, json.dumps(trace), flag)
