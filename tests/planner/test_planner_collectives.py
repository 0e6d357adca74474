"""Each collective's cost is the algorithm the transport runs: the messages and bytes every
rank's LocalTransport counted, per collective, are the ones `cost.collective_steps` lists
(the direct all-reduce, the reduce-scatter + allgather one for large buffers over 3+ ranks
with uneven slices, allgather, broadcast from a rank that is not 0)."""

from __future__ import annotations

import numpy as np
import pytest

from ckeir.planner import cost
from ckeir.planner.cost import ALLREDUCE_DIRECT_BYTES
from ckeir.runtime.transport import launch_local

SMALL = 576  # floats: a decode row
LARGE = ALLREDUCE_DIRECT_BYTES // 4 * 3 + 7  # floats: sliced over 3+ ranks, unevenly
GATHER = 1000
ROOT = 1


def _sent(t) -> tuple[int, int]:
    peers = t.stats.peers.values()
    return sum(p.messages_sent for p in peers), sum(p.bytes_sent for p in peers)


def _received(t) -> int:
    return sum(p.bytes_received for p in t.stats.peers.values())


def prog_collectives(t) -> dict:
    """Every rank: the messages and bytes it sent (and bytes received) in each collective."""
    calls = {
        "allreduce-small": lambda: t.allreduce(np.ones(SMALL, np.float32)),
        "allreduce-large": lambda: t.allreduce(np.ones(LARGE, np.float32)),
        "allgather": lambda: t.allgather(
            np.ones(GATHER, np.float32), np.empty(GATHER * t.size, np.float32)
        ),
        "broadcast": lambda: t.broadcast(np.ones(SMALL, np.float32), ROOT),
    }
    out = {}
    for name, call in calls.items():
        m0, b0 = _sent(t)
        r0 = _received(t)
        call()
        m1, b1 = _sent(t)
        out[name] = {"messages": m1 - m0, "bytes": b1 - b0, "received": _received(t) - r0}
    return out


EXPECTED = {  # name -> (collective kind, buffer bytes)
    "allreduce-small": ("allreduce", SMALL * 4),
    "allreduce-large": ("allreduce", LARGE * 4),
    "allgather": ("allgather", GATHER * 4),
    "broadcast": ("broadcast", SMALL * 4),
}


@pytest.mark.parametrize("n", [2, 3])
def test_the_transport_sends_what_the_cost_model_counts(n):
    results = launch_local(n, prog_collectives, timeout=60)
    for name, (kind, nbytes) in EXPECTED.items():
        for rank, r in enumerate(results):
            steps = cost.collective_steps(kind, nbytes, n, member=rank, root=ROOT)
            assert r[name]["messages"] == sum(len(s) for s in steps), (name, rank)
            assert r[name]["bytes"] == sum(sum(s) for s in steps), (name, rank)
        # every byte sent was received
        assert sum(r[name]["bytes"] for r in results) == sum(r[name]["received"] for r in results)


def test_large_all_reduce_over_three_ranks_takes_two_steps():
    """The sliced algorithm: two steps of (n - 1) messages, each about a third of the
    buffer; over two ranks the whole buffer goes in one step."""
    steps = cost.collective_steps("allreduce", LARGE * 4, 3, member=0)
    assert len(steps) == 2 and all(len(s) == 2 for s in steps)
    assert all(b < LARGE * 4 / 2 for s in steps for b in s)
    assert cost.collective_steps("allreduce", LARGE * 4, 2) == ((LARGE * 4,),)


def test_collective_time_is_latency_plus_bytes_per_step():
    link = cost.LinkModel(bw=1e9, latency=1e-3)
    over = cost.Overheads(collective=1e-5)
    one = cost.collective_time("allreduce", 2304, 2, link, over)
    assert one == pytest.approx(link.time(2304) + 1e-5)
    two = cost.collective_time("allreduce", LARGE * 4, 3, link, over)
    assert two == pytest.approx(2 * 1e-3 + 2 * 1e-5 + 2 * (LARGE // 3 + 1) * 4 / 1e9, rel=1e-3)
    assert cost.collective_time("allreduce", 2304, 1, link, over) == 0.0
