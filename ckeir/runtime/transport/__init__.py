"""Transports: how the ranks of one run exchange tensors (the interface: `base.Transport`).

- `launch_local(n, target, args)`: n ranks as processes of this machine over shared memory;
- `MPITransport`: ranks started by `mpiexec -n N python -m mpi4py -m ckeir.cli run …`;
- `transport_from_env()`: the MPI transport when this process is one of several MPI ranks.
"""

from __future__ import annotations

from ckeir.runtime.transport.base import (
    TAG_UB,
    EventHook,
    Link,
    LinkModel,
    PeerStats,
    Transport,
    TransportStats,
    measure_round_trip,
)
from ckeir.runtime.transport.local import LocalTransport, launch_local
from ckeir.runtime.transport.mpi import MPITransport, under_mpiexec


def transport_from_env(
    *, link_model: LinkModel | None = None, on_event: EventHook | None = None
) -> Transport | None:
    """An `MPITransport` on COMM_WORLD when started by mpiexec with more than one rank;
    otherwise None (a single process)."""
    if not under_mpiexec():
        return None
    t = MPITransport(link_model=link_model, on_event=on_event)
    if t.size > 1:
        return t
    t.close()
    return None


__all__ = [
    "TAG_UB",
    "EventHook",
    "Link",
    "LinkModel",
    "LocalTransport",
    "MPITransport",
    "PeerStats",
    "Transport",
    "TransportStats",
    "launch_local",
    "measure_round_trip",
    "transport_from_env",
    "under_mpiexec",
]
