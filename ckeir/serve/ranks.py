"""`ckec serve` on a schedule of several ranks (a batched pipeline): rank 0 holds the HTTP
side and the scheduler, driving `PipelineSlots`; every other rank runs its stage of each
step (`pipeline_slots.serve_steps`) until rank 0 stops it.  Local ranks (processes of this
machine, `serve_local`) and MPI ranks (`mpiexec ... ckec serve`, each process calling
`serve_rank`) run the same body.

A SIGTERM or SIGINT to the launcher of local ranks reaches rank 0 as an event: it stops its
server cleanly, which stops the other ranks, and every rank returns.
"""

from __future__ import annotations

import multiprocessing as mp
import signal


def serve_rank(transport, spec, options: dict, http: dict, stop_event=None) -> None:
    """One rank's part of a multi-rank `ckec serve` (`http`: host, port, parallel, log)."""
    if transport.rank == 0:
        from ckeir.serve import serve

        serve(spec, transport=transport, stop_event=stop_event, **http, **options)
        return
    from ckeir.api import Program
    from ckeir.runtime.pipeline_slots import serve_steps

    # a terminal's Ctrl-C reaches every process of the group: rank 0 stops the others
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with Program(spec, transport=transport, **options) as prog:
        serve_steps(prog.engine, transport)


def serve_local(spec, world_size: int, options: dict, http: dict, watchdog=None) -> None:
    """Serve on `world_size` local ranks until SIGTERM or SIGINT; a rank's failure raises
    (a `TransportError` naming it, or rank 0's own error)."""
    from ckeir.runtime.transport.local import launch_local

    stop_event = mp.Event()

    def told_to_stop(sig, frame) -> None:
        stop_event.set()

    before = {s: signal.signal(s, told_to_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        launch_local(
            world_size,
            serve_rank,
            args=(str(spec), options, http, stop_event),
            watchdog=watchdog,
        )
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
