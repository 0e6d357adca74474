"""Ranks as MPI processes (mpi4py): `mpiexec -n N python -m mpi4py -m ckeir.cli run …`.

Point-to-point messages are `Isend`/matched `Recv` of the buffers' bytes; the collectives
are the deterministic ones of `base.Transport`, built on `Isend`/`Irecv` (so they sum in
group order and a shaped link delays every hop).  A rank waits for its requests as every
ckeir wait does (`backends.llvm.wait`, budget `MPI_REQUEST`): it tests them in a short spin,
then between naps, instead of MPI's own busy polling — which keeps a CPU busy for as long as
a peer computes, and takes it from that peer when ranks share CPUs.

Failures: under `mpiexec`, a rank that raises and exits leaves the others blocked in MPI
forever.  An `MPITransport` therefore aborts the whole job (`COMM_WORLD.Abort`, which makes
`mpiexec` kill every rank within about a second) when its process

- ends with an unhandled exception (an `excepthook`), or is closed while an exception
  propagates (`close()` in a `finally`, `__exit__`): it prints the error as the CLI prints a
  `CkeError`, naming the rank and the fault, then aborts; or
- exits in any other way without `close()` — e.g. `sys.exit(1)` after printing an error.

So a program must `close()` its transport on success (or use it as a context manager).
Running under `python -m mpi4py` gives the same protection for exceptions raised before
the transport exists.  A rank killed by a signal is noticed by `mpiexec` itself, which
tears the job down (with SIGKILL: a rank cannot clean up after itself).  Set
`MPIEXEC_TIMEOUT` as a last backstop.

Nothing is left behind: MPICH's shared-memory segment of the node (`/dev/shm/mpich_shm_*`,
which an aborted or killed job would leave there) is unlinked as soon as every rank has
mapped it, as the local transport does with its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from ckeir.backends.llvm import wait
from ckeir.backends.llvm.host import usable_cpus
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
        self._abort_on_error = abort_on_error and self.size > 1
        self.ranks_here = _ranks_here(self.size)
        self._wait = wait.MPI_REQUEST.for_waiters(self.ranks_here, usable_cpus())
        if self._abort_on_error:
            self._prev_hook = sys.excepthook
            sys.excepthook = self._excepthook
            atexit.register(self._at_exit)
        if self.comm == mpi.COMM_WORLD and self.size > 1:
            self.comm.Barrier()  # every rank of the node has mapped MPICH's segment
            unlink_mpich_segments()

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
        print(failure_text(self.rank, value), file=sys.stderr, flush=True)
        if os.environ.get("CKEIR_DEBUG"):
            lines = traceback.format_exception(tp, value, tb)
            print(f"traceback of rank {self.rank}:\n{''.join(lines)}", file=sys.stderr)
        self.abort(f"aborting the job because rank {self.rank} failed")

    def _at_exit(self) -> None:
        if not self._closed:
            self.abort(
                "exited without closing its transport (an error path?); aborting the job so"
                " that no rank waits for it forever"
            )

    def close(self) -> None:
        """Release the transport.  Called while an exception propagates (a `finally`
        clause), it aborts the job instead, naming this rank and the exception: the other
        ranks may be waiting for this one."""
        if self._closed:
            return
        failing = sys.exc_info()[1]
        if self._abort_on_error and _is_failure(failing):
            self._excepthook(type(failing), failing, failing.__traceback__)
        self._closed = True
        if self._prev_hook is not None and sys.excepthook == self._excepthook:
            sys.excepthook = self._prev_hook
        atexit.unregister(self._at_exit)

    def __exit__(self, tp, value, tb) -> None:
        if self._abort_on_error and not self._closed and _is_failure(value):
            self._excepthook(tp, value, tb)
        self.close()

    # -- messages

    def _send(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: send on a closed transport")
        link = self._link(peer)
        if link is not None:
            wait.sleep_until(t0 + link.delay(buf.nbytes))
        try:
            request = self.comm.Isend([buf, self._mpi.BYTE], peer, tag)
            wait.poll(request.Test, self._wait)
        except self._mpi.Exception as e:
            msg = Message("send", peer, buf, tag)
            raise TransportError(f"rank {self.rank}: {msg.describe()}: {e}") from e

    def _recv(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: recv on a closed transport")
        status = self._status
        try:  # a matched probe first: a size mismatch is reported with both byte counts
            probes = []

            def matched_one() -> bool:
                probes.append(self.comm.Improbe(peer, tag, status))
                return probes[-1] is not None

            wait.poll(matched_one, self._wait)
            matched = probes[-1]
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
                wait.sleep_until(_due(m))
            reqs.append(self.comm.Isend([m.buf, mpi.BYTE], m.peer, m.tag))
            order.append(m)
        status = mpi.Status()

        def one_done() -> bool:
            i, flag = mpi.Request.Testany(reqs, status)
            if flag and i != mpi.UNDEFINED:
                m = order[i]
                m.t_done = time.perf_counter()
                if m.kind == "recv":
                    self._check_count(m, status)
            return flag

        try:
            for _ in range(len(reqs)):
                wait.poll(one_done, self._wait)
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


def failure_text(rank: int, e: BaseException) -> str:
    """A failed rank's error as the CLI prints a CkeError, naming the rank: the CkeError
    itself (prefixed with 'rank R: ' unless its message names the rank already), anything
    else as 'error: rank R failed: Type: message'."""
    if isinstance(e, CkeError):
        named = e.message.startswith((f"rank {rank}:", f"rank {rank} "))
        return e.format() if named else f"rank {rank}: {e.format()}"
    text = f"{type(e).__name__}: {e}".rstrip(": ")
    return TransportError(
        f"rank {rank} failed: {text}", hint="set CKEIR_DEBUG=1 for its traceback"
    ).format()


def _is_failure(e: BaseException | None) -> bool:
    if isinstance(e, SystemExit):
        return e.code not in (None, 0)
    return e is not None


MPICH_SEGMENTS = "/dev/shm/mpich_shm_"


def unlink_mpich_segments() -> list[str]:
    """Unlink the MPICH shared-memory segments this process maps (its job's, by
    construction), once every local rank has mapped them: the memory stays until the last
    rank unmaps it, and an aborted or killed job leaves no file behind.  Returns the
    paths unlinked."""
    gone = []
    for path in _mapped(MPICH_SEGMENTS):
        with contextlib.suppress(OSError):  # another rank of the node was first
            os.unlink(path)
            gone.append(path)
    return gone


def _mapped(prefix: str) -> set[str]:
    """Paths starting with `prefix` that this process maps (and are not yet unlinked)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:  # not Linux
        return set()
    paths = set()
    for line in lines:
        fields = line.split(maxsplit=5)
        if (
            len(fields) == 6
            and fields[5].startswith(prefix)
            and not fields[5].endswith(" (deleted)")
        ):
            paths.add(fields[5])
    return paths


def _due(m: Message) -> float:
    return m.t_start + m.link.delay(m.nbytes) if m.link is not None else m.t_start


def _ranks_here(size: int) -> int:
    """Ranks of this job on this machine, as the launcher says (Hydra, Open MPI); else
    all of them."""
    for key in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        with contextlib.suppress(KeyError, ValueError):
            return int(os.environ[key])
    return size


def under_mpiexec() -> bool:
    """This process was started by an MPI launcher (Hydra/MPICH, Open MPI, PMIx, MVAPICH)."""
    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return any(k in os.environ for k in keys)
