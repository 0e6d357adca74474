"""Chrome Trace Event JSON (opens in Perfetto and chrome://tracing): one process track per
rank, complete events ("ph": "X") with microsecond `ts`/`dur`, metadata events naming the
tracks."""

from __future__ import annotations

import json

COMM = ("send", "recv", "allreduce", "allgather", "broadcast", "wait")


def trace_events(per_rank: dict[int, list[tuple]], names: dict[int, str]) -> list[dict]:
    """`per_rank[r]` holds (kind, peer or group, bytes, t0 seconds, duration seconds)."""
    t_min = min((e[3] for evs in per_rank.values() for e in evs), default=0.0)
    out = []
    for rank, events in sorted(per_rank.items()):
        out.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": rank,
                "tid": 0,
                "args": {"name": f"rank {rank} ({names.get(rank, '?')})"},
            }
        )
        out.append(
            {"ph": "M", "name": "thread_name", "pid": rank, "tid": 0, "args": {"name": "program"}}
        )
        for kind, peer, nbytes, t0, dt in events:
            out.append(
                {
                    "ph": "X",
                    "name": kind,
                    "cat": "comm" if kind in COMM else "kernel",
                    "pid": rank,
                    "tid": 0,
                    "ts": (t0 - t_min) * 1e6,
                    "dur": dt * 1e6,
                    "args": {
                        "peer": peer if isinstance(peer, int) else list(peer),
                        "bytes": nbytes,
                    },
                }
            )
    return out


def write_trace(path, per_rank, names, flag: str | None = None) -> None:
    from ckeir.outputs import write_output

    write_output(
        path,
        json.dumps({"traceEvents": trace_events(per_rank, names), "displayTimeUnit": "ms"}),
        flag,
    )
