"""Ranks as MPI processes (mpi4py): `mpiexec -n N python -m mpi4py -m ckeir.cli run …`.

Point-to-point messages are `Send`/`Recv` of the buffers' bytes; the collectives are the
deterministic ones of `base.Transport`, built on `Isend`/`Irecv` (so they sum in group order
and a shaped link delays every hop).

Failures: under `mpiexec`, a rank that raises and exits leaves the others blocked in MPI
forever.  An `MPITransport` therefore aborts the whole job (`COMM_WORLD.Abort`, which makes
`mpiexec` kill every rank within about a second) when its process

- ends with an unhandled exception (an `excepthook` prints the error, naming the rank, then
  aborts), or
- exits in any other way without `close()` — e.g. `sys.exit(1)` after printing an error.

So a program must `close()` its transport on success (or use it as a context manager).
Running under `python -m mpi4py` gives the same protection for exceptions raised before
the transport exists.  A rank killed by a signal is noticed by `mpiexec` itself, which
tears the job down.  Set `MPIEXEC_TIMEOUT` as a last backstop.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from ckeir.errors import CkeError, TransportError
from ckeir.runtime.transport.base import EventHook, LinkModel, Message, Transport

ABORT_FLUSH_S = 0.2


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise TransportError(
            "the MPI transport needs mpi4py", hint="pip install mpi4py mpich"
        ) from e
    return MPI


class MPITransport(Transport):
    """This process's rank of an MPI communicator (default: COMM_WORLD)."""

    def __init__(
        self,
        comm=None,
        *,
        link_model: LinkModel | None = None,
        on_event: EventHook | None = None,
        abort_on_error: bool = True,
    ):
        mpi = _mpi()
        self.comm = comm if comm is not None else mpi.COMM_WORLD
        super().__init__(
            self.comm.Get_rank(), self.comm.Get_size(), link_model=link_model, on_event=on_event
        )
        self._mpi = mpi
        self._status = mpi.Status()
        self._closed = False
        self._prev_hook = None
        if abort_on_error and self.size > 1:
            self._prev_hook = sys.excepthook
            sys.excepthook = self._excepthook
            atexit.register(self._at_exit)

    # -- failure handling

    def abort(self, reason: str, code: int = 1) -> NoReturn:
        """Print `reason` naming this rank, then end every rank of the job."""
        self._closed = True
        print(f"ckeir: rank {self.rank}: {reason}", file=sys.stderr, flush=True)
        # Hydra forwards a rank's output asynchronously and may be torn down by the abort
        # before it has: give it a moment, or the reason never reaches the terminal.
        time.sleep(ABORT_FLUSH_S)
        try:
            self._mpi.COMM_WORLD.Abort(code)
        finally:  # MPICH's Abort can return once the process manager has the message
            os._exit(code)

    def _excepthook(self, tp, value, tb) -> None:
        text = value.message if isinstance(value, CkeError) else f"{tp.__name__}: {value}"
        lines = traceback.format_exception(tp, value, tb)
        print(f"ckeir: rank {self.rank} failed:\n{''.join(lines)}", file=sys.stderr, flush=True)
        self.abort(f"aborting the job because rank {self.rank} failed: {text}")

    def _at_exit(self) -> None:
        if not self._closed:
            self.abort(
                "exited without closing its transport (an error path?); aborting the job so"
                " that no rank waits for it forever"
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._prev_hook is not None and sys.excepthook == self._excepthook:
            sys.excepthook = self._prev_hook
        atexit.unregister(self._at_exit)

    def __exit__(self, tp, value, tb) -> None:
        if value is not None and self._prev_hook is not None and not self._closed:
            self._excepthook(tp, value, tb)
        self.close()

    # -- messages

    def _send(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: send on a closed transport")
        link = self._link(peer)
        if link is not None:
            sleep_until(t0 + link.delay(buf.nbytes))
        try:
            self.comm.Send([buf, self._mpi.BYTE], peer, tag)
        except self._mpi.Exception as e:
            msg = Message("send", peer, buf, tag)
            raise TransportError(f"rank {self.rank}: {msg.describe()}: {e}") from e

    def _recv(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: recv on a closed transport")
        status = self._status
        try:  # a matched probe first: a size mismatch is reported with both byte counts
            matched = self.comm.Mprobe(peer, tag, status)
            if status.Get_count(self._mpi.BYTE) != buf.nbytes:
                self._check_count(Message("recv", peer, buf, tag), status)
            matched.Recv([buf, self._mpi.BYTE])
        except self._mpi.Exception as e:
            raise self._recv_error(Message("recv", peer, buf, tag), e) from e

    def _exchange(self, msgs: Sequence[Message], what: str) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: {what} on a closed transport")
        mpi = self._mpi
        # Receives first, then the sends in order of their due time (shaped links).
        order = [m for m in msgs if m.kind == "recv"]
        sends = sorted((m for m in msgs if m.kind == "send"), key=_due)
        reqs = [self.comm.Irecv([m.buf, mpi.BYTE], m.peer, m.tag) for m in order]
        for m in sends:
            if m.link is not None:
                sleep_until(_due(m))
            reqs.append(self.comm.Isend([m.buf, mpi.BYTE], m.peer, m.tag))
            order.append(m)
        status = mpi.Status()
        try:
            for _ in range(len(reqs)):
                i = mpi.Request.Waitany(reqs, status)
                m = order[i]
                m.t_done = time.perf_counter()
                if m.kind == "recv":
                    self._check_count(m, status)
        except mpi.Exception as e:
            raise TransportError(f"rank {self.rank}: {what}: {e}") from e

    def _check_count(self, msg: Message, status) -> None:
        got = status.Get_count(self._mpi.BYTE)
        if got != msg.nbytes:
            raise TransportError(
                f"rank {self.rank}: {msg.describe()}: size mismatch: rank {msg.peer} sent"
                f" {got} bytes, rank {self.rank} expects {msg.nbytes} bytes"
            )

    def _recv_error(self, msg: Message, e: Exception) -> TransportError:
        if e.Get_error_class() == self._mpi.ERR_TRUNCATE:
            return TransportError(
                f"rank {self.rank}: {msg.describe()}: size mismatch: rank {msg.peer} sent more"
                f" than the {msg.nbytes} bytes rank {self.rank} expects"
            )
        return TransportError(f"rank {self.rank}: {msg.describe()}: {e}")


def _due(m: Message) -> float:
    return m.t_start + m.link.delay(m.nbytes) if m.link is not None else m.t_start


def sleep_until(t: float) -> None:
    """Return at time.perf_counter() == t, to about a microsecond: sleep while far (the OS
    overshoots a sleep by up to ~100 µs), then spin."""
    left = t - time.perf_counter()
    if left > 300e-6:
        time.sleep(left - 200e-6)
    while time.perf_counter() < t:
        pass


def under_mpiexec() -> bool:
    """This process was started by an MPI launcher (Hydra/MPICH, Open MPI, PMIx, MVAPICH)."""
    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return any(k in os.environ for k in keys)
