"""Ranks as processes on one machine, talking through one shared-memory segment.

`launch_local(n, target, args)` creates the segment (a file in /dev/shm, unlinked as soon
as every rank has mapped it), starts `n` processes, gives each a `LocalTransport`, runs
`target(transport, *args)` in each and returns the results in rank order.

The segment holds a header (the world's `failed` word), one block per rank (doorbell,
state, pid, heartbeat, what it is blocked in, why it failed) and one channel per ordered
pair of ranks (see `shm_native`).  A send copies into the channel's next slot and
publishes it with one native call; a blocked rank waits as every ckeir wait does
(`backends.llvm.wait`, budget `MESSAGE`, or `SHAPED_LINK` for a receive over a shaped link):
it spins briefly on the channel, offering its CPU early (a peer rank may be waiting for
it), then sleeps on its doorbell in naps of the budget's `nap_s`, checking between naps
that its peers are alive.

Faults end the run on every rank (most within milliseconds), never hang it:

- a rank whose target raises records why in its block, marks the world failed and rings
  every doorbell: blocked ranks wake and raise a `TransportError` naming it;
- a rank that dies (SIGKILL, segfault) is noticed by the launcher (process sentinel) or by
  a waiting peer (its pid is gone or a zombie), which records "rank r was killed by SIGKILL
  during recv from rank p (tag t)" and fails the world the same way;
- a rank that returned while a peer still waits for it fails that peer's operation;
- a rank that stops (SIGSTOP, a debugger) stops its heartbeat: the launcher's watchdog
  kills it after `watchdog` seconds (default 30) and fails the world with "rank r made no
  progress for 30 s (it is stopped …)", naming what each of its threads was in.  A still
  heartbeat alone is not enough: a rank asleep in a system call (a lock, a pipe, a futex
  waiting for the GIL) or starved of a CPU runs again by itself and is left alone — only a
  rank whose every thread /proc shows stopped (T, t) is;
- ranks still computing `grace` seconds after a failure are killed by the launcher, which
  raises a `TransportError` naming the rank that failed first, its error and traceback,
  and what every other rank was doing; a `timeout` fails the world the same way;
- a launcher that dies takes its ranks with it (the kernel SIGKILLs them: PR_SET_PDEATHSIG).

Every kill is a SIGKILL: a stopped process ignores every other signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import multiprocessing as mp
import multiprocessing.connection
import os
import secrets
import signal
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ckeir.backends.llvm import wait
from ckeir.backends.llvm.host import usable_cpu_ids, usable_cpus
from ckeir.backends.llvm.kernels import collective as C
from ckeir.errors import CkeError, TransportError
from ckeir.limits import MAX_WATCHDOG_S, in_real_range
from ckeir.planner import cost
from ckeir.runtime.transport import shm_native
from ckeir.runtime.transport.base import (
    TAG_ALLGATHER,
    TAG_ALLREDUCE,
    EventHook,
    LinkModel,
    Message,
    Transport,
)
from ckeir.runtime.transport.shm_native import DONE, MISMATCH, NOT_READY

DEFAULT_SLOT_BYTES = 256 * 1024
SHAPED_CHUNK = 32 * 1024  # chunk bytes over a shaped link
GRACE_S = 2.0  # after a failure, ranks still running this long are killed
WATCHDOG_S = 30.0  # a rank whose heartbeat stands still this long is taken for stopped
WATCHDOG_ENV = "CKEIR_WATCHDOG_SECONDS"  # overrides WATCHDOG_S; 0 turns the watchdog off
BEATS_PER_WATCHDOG = 20  # heartbeats per watchdog period (at most one a second)
MIN_BEAT_S = 0.01  # ... and at most 100 a second, however short the period

# ---- the segment layout -------------------------------------------------------------------------

MAGIC = 0x314B4543  # "CEK1"
H_MAGIC, H_SIZE, H_SLOT, H_LAUNCHER = 0, 4, 8, 16
H_FAILED = 64  # 0, or 1 + the first rank that failed (1 + size: the launcher)
H_CLAIM_LAUNCHER = 68  # 0 until the launcher's reason is written
H_TEXT, TEXT_BYTES = 1024, 1024  # the launcher's reason when it fails the world
RANKS_AT, RANK_BYTES = 4096, 2048
R_BELL = 0  # doorbell + sleepers, alone on their cache line
R_STATE, R_CLAIM, R_WAITING, R_PID, R_BEAT = 64, 68, 72, 80, 96
R_OP, OP_BYTES = 128, 128  # what the rank is blocked in, while R_WAITING is 1
R_TEXT = 256  # why the rank failed (RANK_BYTES - R_TEXT bytes)

STARTING, RUNNING, FINISHED, FAILED = 0, 1, 2, 3


def _page_align(n: int) -> int:
    return (n + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE


class World:
    """The shared segment as seen by one process (a rank or the launcher)."""

    def __init__(self, path: Path, size: int, slot_bytes: int, create: bool):
        self.path, self.size, self.slot_bytes = path, size, slot_bytes
        self.nat = shm_native.native(slot_bytes)
        self._channels_at = _page_align(RANKS_AT + size * RANK_BYTES)
        self._channel_bytes = shm_native.channel_bytes(slot_bytes)
        nbytes = self._channels_at + size * max(size - 1, 0) * self._channel_bytes
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, nbytes)
            self._mm = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        self._anchor = ctypes.c_char.from_buffer(self._mm)
        self.base = ctypes.addressof(self._anchor)

    @classmethod
    def create(cls, size: int, slot_bytes: int = DEFAULT_SLOT_BYTES) -> World:
        if size < 1:
            raise TransportError(f"a local run needs at least 1 rank, got {size}")
        if slot_bytes < 4096 or slot_bytes % 4096:
            raise TransportError(
                f"slot_bytes must be a positive multiple of 4096, not {slot_bytes}"
            )
        shm = Path("/dev/shm")
        folder = shm if shm.is_dir() else Path(tempfile.gettempdir())
        path = folder / f"ckeir-{os.getpid()}-{secrets.token_hex(4)}"
        w = cls(path, size, slot_bytes, create=True)
        w._i32(H_MAGIC).value = MAGIC
        w._i32(H_SIZE).value = size
        w._i64(H_SLOT).value = slot_bytes
        w._i64(H_LAUNCHER).value = os.getpid()
        return w

    @classmethod
    def attach(cls, path: str | Path) -> World:
        with open(path, "rb") as f:
            head = np.frombuffer(f.read(24), np.int32)
        if head[0] != MAGIC:
            raise TransportError(f"{path} is not a ckeir shared-memory world")
        return cls(Path(path), int(head[1]), int(head[2:4].view(np.int64)[0]), create=False)

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        del self._anchor
        self._mm.close()

    # -- addresses and words

    def _i32(self, offset: int) -> ctypes.c_int32:
        return ctypes.c_int32.from_address(self.base + offset)

    def _i64(self, offset: int) -> ctypes.c_int64:
        return ctypes.c_int64.from_address(self.base + offset)

    def rank_at(self, r: int) -> int:
        return self.base + RANKS_AT + r * RANK_BYTES

    def bell(self, r: int) -> int:
        return self.rank_at(r) + R_BELL

    def channel(self, src: int, dst: int) -> int:
        idx = src * (self.size - 1) + (dst - (dst > src))
        return self.base + self._channels_at + idx * self._channel_bytes

    @property
    def launcher_pid(self) -> int:
        return self._i64(H_LAUNCHER).value

    def state(self, r: int) -> int:
        return self.nat.load(self.rank_at(r) + R_STATE)

    def set_state(self, r: int, state: int) -> None:
        self.nat.store(self.rank_at(r) + R_STATE, state)

    def pid(self, r: int) -> int:
        return ctypes.c_int64.from_address(self.rank_at(r) + R_PID).value

    def started(self, r: int, pid: int) -> None:
        ctypes.c_int64.from_address(self.rank_at(r) + R_PID).value = pid
        self.set_state(r, RUNNING)

    # -- heartbeats (one writer per counter: the rank's heartbeat thread)

    def beat(self, r: int) -> None:
        ctypes.c_int64.from_address(self.rank_at(r) + R_BEAT).value += 1

    def beats(self, r: int) -> int:
        return ctypes.c_int64.from_address(self.rank_at(r) + R_BEAT).value

    # -- what a rank is blocked in

    def set_waiting(self, r: int, what: str | None) -> None:
        at = self.rank_at(r)
        if what is not None:
            _write_text(at + R_OP, OP_BYTES, what)
        self.nat.store(at + R_WAITING, int(what is not None))

    def doing(self, r: int) -> str:
        """'blocked in <op>' or 'running (not in a transport operation)'."""
        at = self.rank_at(r)
        if self.nat.load(at + R_WAITING):
            return f"blocked in {_read_text(at + R_OP, OP_BYTES)}"
        return "running (not in a transport operation)"

    # -- failures

    def fail(self, r: int, text: str) -> None:
        """Record why rank r failed (first reporter wins), and fail the world."""
        at = self.rank_at(r)
        if self.nat.cas(at + R_CLAIM, 0, 1) == 0:
            _write_text(at + R_TEXT, RANK_BYTES - R_TEXT, text)
            self.set_state(r, FAILED)
        self.nat.cas(self.base + H_FAILED, 0, r + 1)
        self.ring_all()

    def fail_launcher(self, text: str) -> None:
        if self.nat.cas(self.base + H_CLAIM_LAUNCHER, 0, 1) == 0:
            _write_text(self.base + H_TEXT, TEXT_BYTES, text)
        self.nat.cas(self.base + H_FAILED, 0, self.size + 1)
        self.ring_all()

    def failure(self) -> tuple[int, str] | None:
        """(rank, why) of the first failure, rank == size for the launcher; or None."""
        who = self.nat.load(self.base + H_FAILED)
        if not who:
            return None
        r = who - 1
        if r == self.size:
            return r, _read_text(self.base + H_TEXT, TEXT_BYTES)
        return r, self.reason(r)

    def reason(self, r: int) -> str:
        text = _read_text(self.rank_at(r) + R_TEXT, RANK_BYTES - R_TEXT)
        return text or f"rank {r} failed"

    def ring_all(self) -> None:
        for r in range(self.size):
            self.nat.ring(self.bell(r))


def _write_text(addr: int, cap: int, text: str) -> None:
    data = text.encode("utf-8", "replace")[: cap - 1]
    ctypes.memmove(addr, data + b"\0", len(data) + 1)


def _read_text(addr: int, cap: int) -> str:
    return ctypes.string_at(addr, cap).split(b"\0", 1)[0].decode("utf-8", "replace")


def _pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed child its parent has not reaped)."""
    if pid <= 0:
        return True  # not started yet: the launcher watches it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("", "Z", "X")


def _proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T, Z, ...); "" if the process is gone,
    "?" if it cannot be read."""
    try:
        return _state_letter(Path(f"/proc/{pid}/stat").read_text(errors="replace"))
    except FileNotFoundError:
        return ""
    except OSError:
        return "?"


def _state_letter(stat: str) -> str:
    """The state field of a /proc stat line (after the command name, which may hold
    anything, ')' included)."""
    at = stat.rindex(")") + 2
    return stat[at : at + 1]


# ---- one rank's transport -----------------------------------------------------------------------


class _Send:
    """A send in progress: chunks go through the channel's slots; with a shaped link each
    chunk is staged (copied) first and published at its due time."""

    __slots__ = (
        "msg",
        "t",
        "ch",
        "bell",
        "addr",
        "chunk",
        "nchunks",
        "idx",
        "staged",
        "due",
        "done",
    )

    def __init__(self, t: LocalTransport, msg: Message):
        self.msg, self.t = msg, t
        self.ch = t._out[msg.peer]
        self.bell = t._bells[msg.peer]
        self.addr = t.address(msg.buf)
        self.chunk = t._chunks[msg.peer]
        self.nchunks = max(1, math.ceil(msg.nbytes / self.chunk))
        self.idx, self.staged, self.due, self.done = 0, False, 0.0, False

    def advance(self, spin_ns: int) -> bool:
        nat, slot, msg = self.t._nat, self.chunk, self.msg
        moved = False
        while self.idx < self.nchunks:
            if self.staged:
                if self.due - time.perf_counter() > wait.DEADLINE_SPIN_S:
                    return moved
                nat.publish_at(self.ch, self.bell, int(self.due * 1e9))
                self.staged, self.idx, moved = False, self.idx + 1, True
                continue
            lo = self.idx * slot
            n = min(slot, msg.nbytes - lo)
            shaped = msg.link is not None
            rc = nat.send(
                self.ch,
                self.addr + lo,
                n,
                msg.nbytes,
                msg.tag,
                spin_ns,
                self.bell,
                0 if shaped else 1,
            )
            if rc != DONE:
                return moved
            moved, spin_ns = True, 0
            if shaped:
                self.staged, self.due = True, msg.t_start + msg.link.delay(lo + n)
            else:
                self.idx += 1
        self.done = True
        msg.t_done = time.perf_counter()
        return True


class _Recv:
    """A receive in progress, chunk by chunk."""

    __slots__ = ("msg", "t", "ch", "bell", "addr", "chunk", "nchunks", "idx", "done")
    staged = False  # only sends are held back (shaped links)

    def __init__(self, t: LocalTransport, msg: Message):
        self.msg, self.t = msg, t
        self.ch = t._in[msg.peer]
        self.bell = t._bells[msg.peer]  # the sender's: rung when its full channel frees a slot
        self.addr = t.address(msg.buf)
        self.chunk = t._chunks[msg.peer]
        self.nchunks = max(1, math.ceil(msg.nbytes / self.chunk))
        self.idx, self.done = 0, False

    def advance(self, spin_ns: int) -> bool:
        nat, slot, msg = self.t._nat, self.chunk, self.msg
        moved = False
        while self.idx < self.nchunks:
            lo = self.idx * slot
            n = min(slot, msg.nbytes - lo)
            rc = nat.recv(self.ch, self.addr + lo, n, msg.nbytes, msg.tag, spin_ns, self.bell)
            if rc == NOT_READY:
                return moved
            if rc == MISMATCH:
                raise self.t._mismatch(msg, self.ch)
            self.idx, moved, spin_ns = self.idx + 1, True, 0
        self.done = True
        msg.t_done = time.perf_counter()
        return True


class LocalTransport(Transport):
    """One rank's end of a shared-memory `World` (made by `launch_local`).

    `wait_timeout` (seconds, None: no limit) bounds how long one operation may wait while
    its peers are alive — a deadlock guard; `spin_us` overrides how long a blocked rank
    spins before it sleeps."""

    def __init__(
        self,
        world: World,
        rank: int,
        *,
        link_model: LinkModel | None = None,
        on_event: EventHook | None = None,
        wait_timeout: float | None = None,
        spin_us: float | None = None,
    ):
        super().__init__(rank, world.size, link_model=link_model, on_event=on_event)
        self._world = world
        self._nat = world.nat
        self._slot = world.slot_bytes
        self._bell = world.bell(rank)
        # watched in waits: a rank whose launcher died must not wait forever (0: not our
        # parent, e.g. started through a forkserver — then the launcher's death goes unseen)
        self._launcher = world.launcher_pid if os.getppid() == world.launcher_pid else 0
        self.wait_timeout = wait_timeout
        self._closed = False
        # per peer: the channels to and from it, its doorbell, the shaping of the link to it
        peers = range(self.size)
        self._out = [world.channel(rank, p) if p != rank else 0 for p in peers]
        self._in = [world.channel(p, rank) if p != rank else 0 for p in peers]
        self._bells = [world.bell(p) for p in peers]
        self._links = [self._link(p) if p != rank else None for p in peers]
        # messages are cut in chunks of a slot; smaller over shaped links, so that the
        # receiver's copy of the last chunk adds little to the simulated hop time
        self._chunks = [
            self._slot if link is None else min(self._slot, SHAPED_CHUNK) for link in self._links
        ]
        self._addresses: dict[int, tuple[weakref.ref, int, int]] = {}
        # how this rank waits: shorter spins when ranks outnumber CPUs, longer ones for a
        # receive over a shaped link (`SHAPED_LINK`); every wait offers its CPU early
        crowded = world.size > usable_cpus()
        self._wait = wait.MESSAGE.crowded() if crowded else wait.MESSAGE
        if spin_us is not None:
            self._wait = attrs.evolve(self._wait, spin_s=spin_us * 1e-6)
        self._link_wait = wait.SHAPED_LINK.crowded() if crowded else wait.SHAPED_LINK
        self._spin_ns = wait.ns(self._wait.spin_s)
        self._link_spin_ns = wait.ns(self._link_wait.spin_s)
        self._nat.set_yield_after(
            wait.ns(min(self._wait.yield_after_s, self._link_wait.yield_after_s))
        )

    def close(self) -> None:
        self._closed = True

    def _spin_for(self, msgs: Sequence[Message]) -> int:
        """How long (ns) to spin for `msgs` before sleeping: longer for receives over a
        shaped link, where a futex wake-up (~20-50 µs) would add to the simulated time."""
        shaped = any(self._links[m.peer] is not None and m.kind == "recv" for m in msgs)
        return self._link_spin_ns if shaped else self._spin_ns

    def address(self, buf: np.ndarray) -> int:
        """The address of `buf`'s data (`buf.ctypes.data` costs ~1 µs: remember it for the
        buffers a program passes again and again)."""
        hit = self._addresses.get(id(buf))
        if hit is not None and hit[0]() is buf and hit[1] == buf.nbytes:
            return hit[2]
        addr = buf.ctypes.data
        if len(self._addresses) >= 256:
            self._addresses.clear()
        with contextlib.suppress(TypeError):  # an ndarray subclass without weakref slots
            self._addresses[id(buf)] = (weakref.ref(buf), buf.nbytes, addr)
        return addr

    # -- point to point, fast paths: one native call when a slot is free / the data there

    def _send(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: send on a closed transport")
        n = buf.nbytes
        if n <= self._chunks[peer] and self._links[peer] is None:
            rc = self._nat.send(
                self._out[peer], self.address(buf), n, n, tag, self._spin_ns, self._bells[peer], 1
            )
            if rc == DONE:
                return
        msg = Message("send", peer, buf, tag, self._links[peer], t0)
        self._progress([_Send(self, msg)], msg.describe(), self._spin_ns)

    def _recv(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: recv on a closed transport")
        n = buf.nbytes
        if n <= self._chunks[peer]:
            spin = self._spin_ns if self._links[peer] is None else self._link_spin_ns
            rc = self._nat.recv(
                self._in[peer], self.address(buf), n, n, tag, spin, self._bells[peer]
            )
            if rc == DONE:
                return
            if rc == MISMATCH:
                raise self._mismatch(Message("recv", peer, buf, tag), self._in[peer])
            spin = 0
        else:
            spin = self._spin_for([Message("recv", peer, buf, tag)])
        msg = Message("recv", peer, buf, tag, None, t0)
        self._progress([_Recv(self, msg)], msg.describe(), spin)

    def _exchange(self, msgs: Sequence[Message], what: str) -> None:
        if self._closed:
            raise TransportError(f"rank {self.rank}: {what} on a closed transport")
        # First one native call per message that fits a slot (sends first: peers may be
        # waiting for them); the rest, chunked or shaped, goes through the progress loop.
        nat, left = self._nat, []
        for m in msgs:
            n, p = m.buf.nbytes, m.peer
            if n > self._chunks[p] or self._links[p] is not None:
                rc = NOT_READY
            elif m.kind == "send":
                rc = nat.send(self._out[p], self.address(m.buf), n, n, m.tag, 0, self._bells[p], 1)
            else:
                rc = nat.recv(self._in[p], self.address(m.buf), n, n, m.tag, 0, self._bells[p])
            if rc == DONE:
                m.t_done = time.perf_counter()
            elif rc == MISMATCH:
                raise self._mismatch(m, self._in[p])
            else:
                left.append(_Send(self, m) if m.kind == "send" else _Recv(self, m))
        if left:
            self._progress(left, what, self._spin_for(msgs))

    # -- collectives run by a program's native code (`backends.llvm.kernels.collective`)

    def comm_block(self, records: np.ndarray) -> np.ndarray:
        """A program's comm block for this rank: where the world's failure word, this rank's
        bell and every peer's channels, bell and state are, how to wait, the tags, and
        `records` (int64, one row of `collective.RECORD_WORDS` per collective step)."""
        w = self._world
        block = np.zeros(C.comm_words(self.size), np.int64)
        block[C.C_FAILED] = w.base + H_FAILED
        block[C.C_BELL] = self._bell
        block[C.C_SLOT_BYTES] = self._slot
        # over a shaped link a wake-up would add to the simulated time: wait as a receive
        # over one does (`_spin_for`)
        budget = self._link_wait if any(self._links) else self._wait
        block[C.C_SPIN_NS] = wait.ns(budget.spin_s)
        block[C.C_YIELD_NS] = wait.ns(budget.yield_after_s)
        block[C.C_NAP_NS] = wait.ns(budget.nap_s)
        block[C.C_TAG_ALLREDUCE] = TAG_ALLREDUCE
        block[C.C_TAG_ALLGATHER] = TAG_ALLGATHER
        block[C.C_RECORDS] = records.ctypes.data
        for p in range(self.size):
            if p != self.rank:
                at = C.C_PEERS + C.PEER_WORDS * p
                block[at + C.P_OUT] = self._out[p]
                block[at + C.P_IN] = self._in[p]
                block[at + C.P_BELL] = self._bells[p]
                block[at + C.P_STATE] = w.rank_at(p) + R_STATE
                link = self._links[p]
                block[at + C.P_LINK_NS] = C.NO_LINK if link is None else wait.ns(link.latency)
                block[at + C.P_LINK_PS] = 0 if link is None else round(1e12 / link.bandwidth)
        return block

    def runs_natively(self, kind: str, group: Sequence[int], nbytes: int) -> bool:
        """Whether native code can run this collective with the messages this transport
        would send: `nbytes` to every other member in one direct step, each message in one
        channel slot (every member decides alike: the same bytes and group).  Over a
        simulated link the native send holds its message until the link's delivery time,
        as `_Send` does (`collective.send_helper`)."""
        direct = kind == "allgather" or cost.allreduce_is_direct(len(group), nbytes)
        return direct and nbytes <= self._slot

    def native_failure(self, status: int, what: str, peer: int, nbytes: int, tag: int):
        """The TransportError for a native collective that ended with `status`."""
        w = self._world
        if status == C.MISMATCH:
            return self._mismatch(
                Message("recv", peer, np.empty(nbytes, np.uint8), tag), self._in[peer]
            )
        if (f := w.failure()) is not None:
            return TransportError(f"rank {self.rank}: {what} abandoned: {f[1]}")
        if w.state(peer) == FAILED:
            return TransportError(f"rank {self.rank}: {what} abandoned: {w.reason(peer)}")
        return TransportError(
            f"rank {self.rank}: {what}: rank {peer} finished its program without a matching send"
        )

    # -- the progress loop

    def _progress(self, pending: list[_Send | _Recv], what: str, spin_ns: int) -> None:
        """Advance every transfer until all are done.  When none can move, wait for this
        rank's doorbell: spin until `spin_ns` have passed since the first wait, then sleep
        in naps of the wait budget's `nap_s`, checking the world after each."""
        nat, bell, nap = self._nat, self._bell, self._wait.nap_s
        spin_end = 0.0
        t_block = last_check = 0.0  # t_block: when nothing could move the first time
        waited_on, asleep = -1, False
        try:
            while True:
                moved = _advance_all(pending)
                pending = [s for s in pending if not s.done]  # (also those _check_world did)
                if not pending:
                    return
                if moved:
                    continue
                seen = nat.load(bell)  # read before the re-check: a ring after it wakes us
                if _advance_all(pending):
                    continue
                now = time.perf_counter()
                if not t_block:
                    t_block = last_check = now
                    spin_end = now + spin_ns * 1e-9
                    peers = {s.msg.peer for s in pending if not s.done}
                    waited_on = peers.pop() if len(peers) == 1 else -1
                due = min((s.due for s in pending if s.staged), default=math.inf)
                if due - now < nap:
                    _sleep_until(nat, bell, seen, due)
                elif now < spin_end:
                    nat.wait(bell, seen, int((spin_end - now) * 1e9), 0)
                else:
                    if not asleep:  # what a peer reports if this rank dies now
                        asleep = True
                        self._world.set_waiting(self.rank, what)
                    nat.wait(bell, seen, 0, wait.ns(nap))
                now = time.perf_counter()
                if now - last_check >= nap:
                    last_check = now
                    self._check_world(pending, what, now - t_block)
        finally:
            if asleep:
                self._world.set_waiting(self.rank, None)
            if t_block and self.on_event is not None:
                self.on_event("wait", waited_on, 0, t_block, time.perf_counter())

    def _check_world(self, pending: list[_Send | _Recv], what: str, waited: float) -> None:
        w = self._world
        if (f := w.failure()) is not None:
            raise TransportError(f"rank {self.rank}: {what} abandoned: {f[1]}")
        for peer in sorted({s.msg.peer for s in pending}):
            state = w.state(peer)
            if state in (STARTING, RUNNING) and not _pid_alive(pid := w.pid(peer)):
                state = w.state(peer)  # it may have finished (and exited) since the last read
                if state in (STARTING, RUNNING):
                    w.fail(peer, f"rank {peer} died (pid {pid} is gone) while {w.doing(peer)}")
                    state = FAILED
            if state == FAILED:
                raise TransportError(f"rank {self.rank}: {what} abandoned: {w.reason(peer)}")
            if state == FINISHED:  # its last messages may have come since the last look
                _advance_all(pending)
                rest = [s for s in pending if s.msg.peer == peer and not s.done]
                if rest:
                    need = "send" if isinstance(rest[0], _Recv) else "receive"
                    raise TransportError(
                        f"rank {self.rank}: {what}: rank {peer} finished its program without a"
                        f" matching {need} ({rest[0].msg.describe()} is still pending)"
                    )
        if self._launcher and os.getppid() != self._launcher:
            w.fail(self.rank, f"rank {self.rank}: the launcher (pid {self._launcher}) is gone")
            raise TransportError(f"rank {self.rank}: {what} abandoned: the launcher is gone")
        if self.wait_timeout is not None and waited > self.wait_timeout:
            peers = sorted({s.msg.peer for s in pending})
            doing = "; ".join(f"rank {p} is {w.doing(p)}" for p in peers)
            raise TransportError(
                f"rank {self.rank}: {what}: no progress for {waited:.1f} s ({doing})",
                hint="a deadlock? every rank must post matching operations in the same order",
            )

    def _mismatch(self, msg: Message, ch: int) -> TransportError:
        ack = ctypes.c_int32.from_address(ch + shm_native.CH_ACK).value
        hdr = ch + shm_native.CH_HDR + (ack % shm_native.SLOTS) * shm_native.HDR_BYTES
        tag = ctypes.c_int32.from_address(hdr + shm_native.HDR_TAG).value
        total = ctypes.c_int64.from_address(hdr + shm_native.HDR_TOTAL).value
        head = f"rank {self.rank}: {msg.describe()}"
        if tag != msg.tag:
            return TransportError(
                f"{head}: the next message from rank {msg.peer} has tag {tag}",
                hint="messages between two ranks arrive in the order they were sent",
            )
        return TransportError(
            f"{head}: size mismatch: rank {msg.peer} sent {total} bytes, rank {self.rank}"
            f" expects {msg.nbytes} bytes"
        )


def _advance_all(pending: list[_Send | _Recv]) -> bool:
    moved = False
    for s in pending:
        if not s.done and s.advance(0):
            moved = True
    return moved


def _sleep_until(nat: shm_native.Native, bell: int, seen: int, due: float) -> None:
    """Sleep until `wait.DEADLINE_SPIN_S` before `due` (perf_counter seconds) or a ring;
    the native publish spins the rest (a sleep overshoots by up to ~100 µs)."""
    left = due - time.perf_counter() - wait.DEADLINE_SPIN_S
    if left > 0:
        nat.wait(bell, seen, 0, int(left * 1e9))


# ---- the launcher -------------------------------------------------------------------------------


def _describe(e: BaseException) -> str:
    return e.message if isinstance(e, CkeError) else f"{type(e).__name__}: {e}".rstrip(": ")


def _rank_main(
    path: str,
    rank: int,
    cpus: Sequence[int],
    pin: bool,
    conn: mp.connection.Connection,
    target: Callable[..., Any],
    args: tuple,
    options: dict,
    launcher: int,
    beat_s: float | None,
) -> None:
    _die_with_launcher(launcher)
    if cpus:
        # start on this rank's own CPUs (forked ranks all begin on the launcher's CPU, and
        # two spinning ranks sharing one until the scheduler separates them is slow), and
        # stay there only if pinned: a pinned rank cannot leave a CPU another job is using
        allowed = usable_cpu_ids()
        os.sched_setaffinity(0, cpus)
    world = World.attach(path)
    world.started(rank, os.getpid())
    if all(world.state(r) != STARTING for r in range(world.size)):
        world.unlink()  # the last rank to map it: nothing can leak, even if the launcher dies
    # the heartbeat's thread inherits the rank's CPUs: it cannot wake up on (and disturb)
    # another rank's CPU, nor push this rank's main thread onto one
    heart = _Heartbeat(world, rank, beat_s) if beat_s else None
    if cpus and not pin:
        os.sched_setaffinity(0, allowed)  # this thread only
    t = LocalTransport(world, rank, **options)
    code = 0
    try:
        result = target(t, *args)
        world.set_state(rank, FINISHED)
        world.ring_all()
        try:
            conn.send(("ok", result))
        except Exception as e:
            raise TransportError(
                f"rank {rank}: its result cannot be sent to the launcher: {_describe(e)}"
            ) from e
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the launcher
        code = 1
        text = _describe(e)
        if not text.startswith(f"rank {rank}:"):
            text = f"rank {rank} failed: {text}"
        world.fail(rank, text)
        with contextlib.suppress(Exception):
            tb = traceback.format_exception(type(e), e, e.__traceback__.tb_next)  # from target
            conn.send(("error", text, "".join(tb), _picklable(e)))
    finally:
        t.close()
        conn.close()
        if heart is not None:
            heart.stop()  # before the segment it writes to is unmapped
        world.close()
    if code:
        os._exit(code)  # skip interpreter teardown: nothing of the rank needs it


_PR_SET_PDEATHSIG = 1


def _die_with_launcher(launcher: int) -> None:
    """Have the kernel SIGKILL this rank when its launcher dies (killed, crashed): no rank
    outlives its run, not even a stopped one (SIGKILL is the one signal a stopped process
    cannot ignore).  Only when the launcher is our parent (not under a forkserver).  The
    kernel sends it when the *thread* that started the rank ends: `launch_local`'s caller
    waits in it until every rank has ended, so that is the launcher's death."""
    if os.getppid() != launcher:
        return
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the launcher watches
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != launcher:  # it died before the prctl took effect
        os._exit(1)


class _Heartbeat:
    """Bumps this rank's heartbeat counter every `interval` seconds from a thread of its
    own, whatever the rank's main thread is doing — computing, compiling, or blocked in a
    native wait (GIL released).  A process that does not run at all (SIGSTOP, a debugger)
    leaves it still; so does one whose main thread holds the GIL (a long call, a system call
    made without releasing it) or that a busy machine starves of a CPU, and one still
    starting (the heartbeat begins once the segment is mapped, and a spawned rank compiles
    its native helpers first).  The launcher's watchdog tells them apart by what /proc says
    of the threads (`_stopped`)."""

    def __init__(self, world: World, rank: int, interval: float):
        self._world, self._rank, self._interval = world, rank, interval
        self._stop = threading.Event()
        world.beat(rank)
        self._thread = threading.Thread(
            target=self._run, name=f"ckeir-heartbeat-{rank}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._world.beat(self._rank)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def watchdog_seconds(value: float | None = None) -> float | None:
    """The watchdog period: `value` if given, else $CKEIR_WATCHDOG_SECONDS, else WATCHDOG_S;
    None when turned off (0 or inf)."""
    if value is None:
        text = os.environ.get(WATCHDOG_ENV, "").strip()
        if not text:
            return WATCHDOG_S
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        where = f"{WATCHDOG_ENV}={text[:40]!r}"
    else:
        where = f"watchdog={value!r}"
    if value == 0 or value == math.inf:
        return None
    if not in_real_range(value, 0, MAX_WATCHDOG_S) or value <= 0:
        raise TransportError(
            f"{where}: the watchdog needs a number of seconds in (0, {MAX_WATCHDOG_S:g}]",
            hint="0 turns it off; the default is 30 s",
        )
    return float(value)


# ---- what /proc says of a rank's threads: the watchdog's evidence -------------------------------

# x86-64 numbers of the system calls a waiting thread is most often found in (elsewhere, and for
# any other call, the message gives the number)
_SYSCALLS = {
    0: "read", 1: "write", 7: "poll", 17: "pread64", 23: "select", 35: "nanosleep",
    45: "recvfrom", 47: "recvmsg", 61: "wait4", 62: "kill", 72: "fcntl", 73: "flock", 202: "futex",
    230: "clock_nanosleep", 232: "epoll_wait", 270: "pselect6", 271: "ppoll",
    281: "epoll_pwait",
} if os.uname().machine == "x86_64" else {}  # fmt: skip
MAX_THREADS_NAMED = 6  # a message names this many of a rank's threads, then counts the rest


@attrs.frozen
class ThreadState:
    """One thread of a rank as /proc shows it: `state` is the kernel's letter (R running or
    waiting for a CPU, S asleep, D waiting for the disk, T stopped by a signal, t stopped by a
    debugger), `syscall` the system call it waits in and `wchan` the kernel function it
    sleeps in ("" when it is in none)."""

    tid: int
    state: str
    syscall: str = ""
    wchan: str = ""

    @property
    def stopped(self) -> bool:
        return self.state in ("T", "t")

    def __str__(self) -> str:
        where = f" in {self.syscall}" if self.syscall else ""
        if self.wchan:
            where += f" ({self.wchan})" if where else f" in {self.wchan}"
        return f"{self.tid} {self.state}{where}"


def _read_proc(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _thread_state(task: Path) -> ThreadState | None:
    stat = _read_proc(task / "stat")
    if ")" not in stat:
        return None  # the thread ended
    call = _read_proc(task / "syscall").split(" ", 1)[0]  # "running", or -1 between calls
    syscall = _SYSCALLS.get(int(call), f"syscall {call}") if call.isdigit() else ""
    wchan = _read_proc(task / "wchan")
    return ThreadState(int(task.name), _state_letter(stat), syscall, "" if wchan == "0" else wchan)


def thread_states(pid: int) -> list[ThreadState]:
    """Every thread of process `pid`, main thread first ([] once the process is gone)."""
    try:
        tids = sorted(int(t.name) for t in Path(f"/proc/{pid}/task").iterdir())
    except (OSError, ValueError):
        return []
    tids.sort(key=lambda tid: tid != pid)  # stable: the main thread, then the others in order
    states = (_thread_state(Path(f"/proc/{pid}/task/{tid}")) for tid in tids)
    return [t for t in states if t is not None]


def _threads_text(threads: list[ThreadState]) -> str:
    named = ", ".join(map(str, threads[:MAX_THREADS_NAMED]))
    more = len(threads) - MAX_THREADS_NAMED
    return named + (f" and {more} more" if more > 0 else "")


def _stopped(threads: list[ThreadState]) -> bool:
    """The process cannot run: every thread is stopped (SIGSTOP, SIGTSTP, a debugger).  A
    thread asleep in a system call (a lock, a pipe from a child, a futex waiting for the GIL),
    waiting for the disk or for a CPU on a busy machine runs again by itself: slow, not
    stopped.  (A task frozen by a cgroup freezer is not taken for stopped either: a v1-frozen
    task does not even die of SIGKILL until it is thawed, so killing it would not end the
    run.)"""
    return bool(threads) and all(t.stopped for t in threads)


def _stalled(world: World, r: int, seconds: float, threads: list[ThreadState]) -> str:
    """The watchdog's verdict on rank r, with what /proc says of its threads."""
    return (
        f"rank {r} made no progress for {seconds:g} s (it is stopped: SIGSTOP or a debugger)"
        f" while {world.doing(r)}; the watchdog killed it (set {WATCHDOG_ENV} to change the"
        f" period, 0 to turn it off); its threads: {_threads_text(threads)}"
    )


def _picklable(e: BaseException) -> BaseException | None:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return None


def _death(world: World, r: int, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited (code {exitcode}) without returning a result"
    doing = world.doing(r)
    where = (
        doing.replace("blocked in", "during", 1)
        if doing.startswith("blocked")
        else f"while {doing}"
    )
    return f"rank {r} {how} {where}"


def _cpu_shares(n: int) -> list[tuple[int, ...]]:
    """Disjoint CPU sets for n ranks (rank r: the r-th n-th of this process's CPUs), or
    no binding at all when there are more ranks than CPUs."""
    cpus = usable_cpu_ids()
    if n > len(cpus):
        return [()] * n
    return [tuple(cpus[r * len(cpus) // n : (r + 1) * len(cpus) // n]) for r in range(n)]


def _start_method(start_method: str | None) -> str:
    if start_method is not None:
        return start_method
    # fork is fast, but only safe while this process runs a single thread
    forkable = "fork" in mp.get_all_start_methods() and threading.active_count() == 1
    return "fork" if forkable else "spawn"


def launch_local(
    n: int,
    target: Callable[..., Any],
    args: tuple = (),
    timeout: float | None = None,
    *,
    link_model: LinkModel | None = None,
    slot_bytes: int = DEFAULT_SLOT_BYTES,
    start_method: str | None = None,
    wait_timeout: float | None = None,
    spin_us: float | None = None,
    grace: float = GRACE_S,
    pin: bool = False,
    watchdog: float | None = None,
) -> list[Any]:
    """Run `target(transport, *args)` on `n` ranks (processes) of this machine; return the
    results in rank order.  Any failure — a rank raising, dying, or the `timeout` (seconds)
    passing — raises a `TransportError` naming the rank and what happened, after every rank
    has stopped.  `start_method`: 'fork' (default when this process has a single thread) or
    'spawn' (then `target` and `args` must be picklable).  With no more ranks than CPUs,
    each rank starts on its own share of this process's CPUs; with `pin` it stays bound
    there (a rank's thread pool then sizes itself to that share) — for dedicated machines:
    a pinned rank cannot escape a CPU that another job is using.

    A watchdog ends the run when a rank's heartbeat stands still for `watchdog` seconds
    (default: $CKEIR_WATCHDOG_SECONDS, else 30; 0 turns it off) — a stopped rank — and kills
    it.  Every rank dies with the launcher (SIGKILL, even when stopped), and the segment is
    unlinked once every rank has mapped it: nothing is left behind."""
    period = watchdog_seconds(watchdog)
    beat_s = None if period is None else min(1.0, max(MIN_BEAT_S, period / BEATS_PER_WATCHDOG))
    world = World.create(n, slot_bytes)
    cpus = _cpu_shares(n)
    options = dict(link_model=link_model, wait_timeout=wait_timeout, spin_us=spin_us)
    ctx = mp.get_context(_start_method(start_method))
    procs: list[mp.process.BaseProcess] = []
    conns: list[mp.connection.Connection] = []
    try:
        for r in range(n):
            recv_end, send_end = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=_rank_main,
                args=(
                    *(str(world.path), r, cpus[r], pin, send_end, target, tuple(args)),
                    *(options, os.getpid(), beat_s),
                ),
                name=f"ckeir-rank-{r}",
            )
            try:
                p.start()
            except Exception as e:
                raise TransportError(f"cannot start rank {r}: {_describe(e)}") from e
            finally:
                send_end.close()
            procs.append(p)
            conns.append(recv_end)
        return _Supervisor(world, procs, conns, timeout, grace, period).run()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        for c in conns:
            c.close()
        world.unlink()
        world.close()


class _Supervisor:
    """The launcher's loop: collect results, notice deaths, enforce the timeout and grace,
    and watch the heartbeats."""

    def __init__(
        self,
        world: World,
        procs,
        conns,
        timeout: float | None,
        grace: float,
        watchdog: float | None = None,
    ):
        self.world, self.procs, self.conns = world, procs, conns
        self.timeout, self.grace, self.watchdog = timeout, grace, watchdog
        n = len(procs)
        self.results: list[Any] = [None] * n
        self.outcome: dict[
            int, tuple[str, str, BaseException | None]
        ] = {}  # rank -> (text, tb, exc)
        self.finished: set[int] = set()
        self.killed: dict[int, str] = {}  # rank -> what it was doing when the launcher killed it
        self.stalled: dict[int, str] = {}  # rank -> the watchdog's verdict (it was killed)
        self.halted: dict[int, float] = {}  # rank -> since when every check saw it stopped
        self.unlinked = False
        now = time.monotonic()
        self.beats = {r: (-1, now) for r in range(n)}  # rank -> (last count, when it moved)

    def run(self) -> list[Any]:
        t0 = time.monotonic()
        failed_at: float | None = None
        running = set(range(len(self.procs)))
        while running:
            waitables = [self.conns[r] for r in running if not self.conns[r].closed]
            waitables += [self.procs[r].sentinel for r in running]
            ready = set(mp.connection.wait(waitables, timeout=0.05))
            for r in sorted(running):
                if self.conns[r] in ready:
                    self._receive(r)
                if self.procs[r].sentinel in ready:
                    self._reap(r)
                    running.discard(r)
            self._unlink_once_attached()
            now = time.monotonic()
            if failed_at is None:
                self._watch(running, now)
            if failed_at is None and self.world.failure() is not None:
                failed_at = now
            if failed_at is None and self.timeout is not None and now - t0 > self.timeout:
                doing = "; ".join(f"rank {r} is {self.world.doing(r)}" for r in sorted(running))
                self.world.fail_launcher(
                    f"launch_local timed out after {self.timeout:g} s ({doing})"
                )
                failed_at = now
            if failed_at is not None and now - failed_at > self.grace:
                for r in sorted(running):
                    if r not in self.killed:  # what it was doing, not what its corpse is
                        threads = _threads_text(thread_states(self.procs[r].pid))
                        self.killed[r] = f"{self.world.doing(r)}; its threads: {threads}"
                    self.procs[r].kill()
        if self.world.failure() is not None or self.outcome:
            raise self._error()
        return self.results

    def _watch(self, running: set[int], now: float) -> None:
        """Kill (SIGKILL: a stopped process ignores everything else) the first rank whose
        heartbeat has not moved for the watchdog period and whose threads have all been
        stopped for the last half of it, and fail the world naming it.  A rank asleep in a
        system call or starved of a CPU (its heartbeat thread cannot beat either) is left
        alone, however long its heartbeat stands still: it runs again by itself."""
        if self.watchdog is None:
            return
        for r in sorted(running):
            count, since = self.beats[r]
            if (now_count := self.world.beats(r)) != count:
                self.beats[r] = (now_count, now)
                self.halted.pop(r, None)
                continue
            if now - since <= self.watchdog / 2 or self.world.state(r) not in (STARTING, RUNNING):
                continue
            threads = thread_states(self.procs[r].pid)
            if not _stopped(threads):
                self.halted.pop(r, None)
                continue
            first = self.halted.setdefault(r, now)
            if now - since > self.watchdog and now - first >= self.watchdog / 2:
                self.stalled[r] = text = _stalled(self.world, r, self.watchdog, threads)
                self.procs[r].kill()
                self.world.fail(r, text)
                return

    def _receive(self, r: int) -> None:
        try:
            msg = self.conns[r].recv()
        except (EOFError, OSError):
            self.conns[r].close()
            return
        except Exception as e:  # a result that does not unpickle here
            text = f"rank {r}: its result cannot be read by the launcher: {_describe(e)}"
            self.outcome[r] = (text, "", None)
            self.world.fail(r, text)
            return
        if msg[0] == "ok":
            self.results[r] = msg[1]
            self.finished.add(r)
        else:
            self.outcome[r] = msg[1:]

    def _reap(self, r: int) -> None:
        conn = self.conns[r]
        while not conn.closed and conn.poll():
            self._receive(r)
        self.procs[r].join()
        if r in self.finished or r in self.outcome:
            return
        if r in self.stalled:
            text = self.stalled[r]
        elif r in self.killed:
            text = (
                f"rank {r} was still running {self.grace:g} s after the failure and was killed"
                f" (it was {self.killed[r]})"
            )
        else:
            text = _death(self.world, r, self.procs[r].exitcode)
            self.world.fail(r, text)
        self.outcome[r] = (text, "", None)

    def _unlink_once_attached(self) -> None:
        if not self.unlinked and all(
            self.world.state(r) != STARTING or not p.is_alive() for r, p in enumerate(self.procs)
        ):
            self.world.unlink()  # every rank has mapped it: nothing can leak from here on
            self.unlinked = True

    def _error(self) -> TransportError:
        first = self.world.failure()
        root = first[0] if first is not None else min(self.outcome)
        if first is not None and root == self.world.size:
            lines, exc = [first[1]], None
        else:
            text, tb, exc = self.outcome.get(root, (self.world.reason(root), "", None))
            lines = [text]
            if tb and os.environ.get("CKEIR_DEBUG"):
                lines += [
                    "",
                    f"traceback of rank {root}:",
                    *("  " + ln for ln in tb.rstrip().splitlines()),
                ]
            elif tb:
                lines += [f"(set CKEIR_DEBUG=1 for rank {root}'s traceback)"]
        others = [r for r in range(self.world.size) if r != root]
        if others:
            lines += ["", "other ranks:" if root < self.world.size else "ranks:"]
            for r in others:
                if r in self.finished:
                    lines.append(f"  rank {r}: finished")
                elif r in self.outcome:
                    text = self.outcome[r][0]  # "rank r: <op> abandoned: <the line above>"
                    lines.append("  " + text.removesuffix(": " + lines[0]))
        err = TransportError("\n".join(lines))
        # which rank failed first (None: the launcher, on a timeout), for programs
        err.rank = root if root < self.world.size else None  # type: ignore[attr-defined]
        if exc is not None:
            err.__cause__ = exc
        return err
