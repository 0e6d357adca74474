"""The transport interface every rank program talks to, and the collectives built on it.

A `Transport` moves contiguous numpy buffers between the ranks of one run.  Subclasses
provide point-to-point messaging (`_exchange`: a set of sends and receives that progress
together, so that no pairing order can deadlock); this module builds the collectives on top,
so that every transport sums in the same order and produces the same bits:

- `allreduce` sums each element as ``((b[g0] + b[g1]) + b[g2]) + ...`` in *group order*,
  never in arrival order, so every rank of the group holds bitwise identical results (the
  same bits whichever transport and algorithm ran).  Small buffers: every member
  sends its whole buffer to every other member and each sums locally (one hop).  Large
  buffers, three or more ranks: each member sums one slice (reduce-scatter) and the summed
  slices are exchanged (allgather) — two hops, (n-1)/n of the bytes each.
- `allgather` concatenates along axis 0 (rank-major bytes); `axis=-1` is also offered.
- `broadcast` sends from the root to every other member; `barrier` is a zero-byte
  all-to-all.

Messages between two ranks are delivered in the order they were sent, and a receive names
its peer (no wildcard source).  Tags are user tags in ``0..TAG_UB``; collectives use tags
above it.  The local transport treats a tag as a check (the next message from that peer
must carry it, else a TransportError), MPI matches by tag: programs that receive in send
order behave the same on both.

Links can be *shaped* (a `LinkModel`): the sender holds each message back until
``latency + bytes / bandwidth`` has passed since the send started, before its bytes become
visible to the receiver.  The sender's call is blocked for that time (a real NIC would let
it compute meanwhile).

Every transfer is counted in `stats` (per peer and per operation), and an optional
`on_event(kind, peer, nbytes, t_start, t_end)` hook sees one record per `send`, `recv` and
collective (`allreduce`, `allgather`, `broadcast`, `barrier`; peer -1), plus `wait`
records for the time a local rank spent blocked (peer -1 when it waited for several).
Times are `time.perf_counter()` seconds: CLOCK_MONOTONIC, one clock for every process of a
machine, so the ranks' records line up in one trace.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import attrs
import numpy as np

from ckeir.errors import TransportError
from ckeir.planner import cost

TAG_UB = (1 << 14) - 1  # user tags: 0..TAG_UB (MPI guarantees tags up to 32767)

# Tags of the collectives' internal messages (above every user tag).
TAG_ALLREDUCE, TAG_REDUCE_SCATTER, TAG_ALLGATHER, TAG_BROADCAST, TAG_BARRIER = (
    TAG_UB + 1,
    TAG_UB + 2,
    TAG_UB + 3,
    TAG_UB + 4,
    TAG_UB + 5,
)
TAG_GATHER, TAG_CLOCK = TAG_UB + 6, TAG_UB + 7

# Ping-pongs per rank when measuring clock offsets: the one with the shortest round trip
# bounds the error best (a rank taken off its CPU mid-exchange only lengthens that round).
CLOCK_ROUNDS = 8

EventHook = Callable[[str, int, int, float, float], None]


# ---- shaped links -------------------------------------------------------------------------------


@attrs.frozen
class Link:
    """A simulated link: `bandwidth` in bytes/s (inf: no bandwidth term), `latency` in s."""

    bandwidth: float
    latency: float

    def __attrs_post_init__(self) -> None:
        if not self.bandwidth > 0 or self.latency < 0:
            raise TransportError(
                f"a link needs bandwidth > 0 and latency >= 0, got bandwidth {self.bandwidth} B/s,"
                f" latency {self.latency} s"
            )

    def delay(self, nbytes: int) -> float:
        """Seconds from the start of a send of `nbytes` until they are visible."""
        return cost.LinkModel(self.bandwidth, self.latency).time(nbytes)


def _pair_links(links: Mapping[tuple[int, int], Link]) -> dict[tuple[int, int], Link]:
    return {(min(a, b), max(a, b)): link for (a, b), link in dict(links).items()}


@attrs.frozen
class LinkModel:
    """Which simulated link joins two ranks: `links` by (unordered) rank pair, `default`
    for the pairs not listed (None: not shaped)."""

    links: Mapping[tuple[int, int], Link] = attrs.field(factory=dict, converter=_pair_links)
    default: Link | None = None

    @classmethod
    def uniform(cls, bandwidth: float, latency: float) -> LinkModel:
        """Every pair of ranks joined by the same link."""
        return cls(default=Link(bandwidth, latency))

    def link(self, a: int, b: int) -> Link | None:
        return self.links.get((min(a, b), max(a, b)), self.default)


# ---- counters -----------------------------------------------------------------------------------


@attrs.define
class PeerStats:
    """Traffic with one peer.  `wait_s`: wall time from the start of each transfer with this
    peer (point-to-point or inside a collective) until that transfer completed — mostly
    waiting for the peer, plus the copies and any link delay."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    wait_s: float = 0.0

    def count(self, kind: str, nbytes: int, seconds: float) -> None:
        """One finished transfer: kind "send" or "recv", its bytes and wall time."""
        if kind == "send":
            self.bytes_sent += nbytes
            self.messages_sent += 1
        else:
            self.bytes_received += nbytes
            self.messages_received += 1
        self.wait_s += seconds


@attrs.define
class OpStats:
    """Calls of one operation kind: how many, payload bytes, wall seconds inside them."""

    count: int = 0
    bytes: int = 0
    seconds: float = 0.0


@attrs.define
class TransportStats:
    peers: dict[int, PeerStats] = attrs.field(factory=dict)
    ops: dict[str, OpStats] = attrs.field(factory=dict)

    def peer(self, p: int) -> PeerStats:
        s = self.peers.get(p)
        if s is None:
            s = self.peers[p] = PeerStats()
        return s

    def op(self, kind: str) -> OpStats:
        s = self.ops.get(kind)
        if s is None:
            s = self.ops[kind] = OpStats()
        return s

    def as_dict(self) -> dict:
        return {
            "peers": {p: attrs.asdict(s) for p, s in sorted(self.peers.items())},
            "ops": {k: attrs.asdict(s) for k, s in sorted(self.ops.items())},
        }


@attrs.frozen
class ClockOffset:
    """What `Transport.clock_offset` measured: `seconds` to add to this rank's clock to read
    the root's, and the round trip of the exchange it came from (the error bound is half)."""

    seconds: float
    round_trip_seconds: float


# ---- messages -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class Message:
    """One send or receive handed to `Transport._exchange`; the transport sets `t_done`."""

    kind: str  # "send" | "recv"
    peer: int
    buf: np.ndarray  # C-contiguous; filled in place by a recv
    tag: int
    link: Link | None = None  # shaping of a send (None: deliver at once)
    t_start: float = 0.0  # time.perf_counter() when the operation began
    t_done: float = 0.0

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes

    def describe(self) -> str:
        way = "to" if self.kind == "send" else "from"
        return f"{self.kind} {way} rank {self.peer} ({_tag_name(self.tag)})"


def _tag_name(tag: int) -> str:
    names = {
        TAG_ALLREDUCE: "allreduce",
        TAG_REDUCE_SCATTER: "allreduce reduce-scatter",
        TAG_ALLGATHER: "allgather",
        TAG_BROADCAST: "broadcast",
        TAG_BARRIER: "barrier",
        TAG_GATHER: "gather",
        TAG_CLOCK: "clock offset",
    }
    return names.get(tag, f"tag {tag}")


# ---- the interface ------------------------------------------------------------------------------


class Transport(abc.ABC):
    """Point-to-point messages and deterministic collectives between `size` ranks."""

    # Ranks of this job whose threads share this machine's CPUs, as far as this rank knows
    # (an MPI launcher says; local ranks are given their threads by their launcher).
    ranks_here = 1

    def __init__(
        self,
        rank: int,
        size: int,
        *,
        link_model: LinkModel | None = None,
        on_event: EventHook | None = None,
    ):
        self.rank = rank
        self.size = size
        self.link_model = link_model
        self.on_event = on_event
        self.stats = TransportStats()
        self._groups: dict[tuple[int, ...] | None, tuple[int, ...]] = {}
        self._scratch_bufs: dict[tuple[int, int, int], np.ndarray] = {}
        self._group_text: dict[tuple[int, ...], str] = {}

    # -- what a subclass provides

    @abc.abstractmethod
    def _exchange(self, msgs: Sequence[Message], what: str) -> None:
        """Carry out every send and receive of `msgs` (any order of completion, none may
        wait for another to finish first) and set each one's `t_done`.  `what` names the
        operation for error messages."""

    def _send(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        """One send (arguments checked; `t0`: when the call began).  Subclasses may
        override this with a faster path than a one-message exchange."""
        msg = Message("send", peer, buf, tag, self._link(peer), t0)
        self._exchange([msg], msg.describe())

    def _recv(self, buf: np.ndarray, peer: int, tag: int, t0: float) -> None:
        msg = Message("recv", peer, buf, tag, None, t0)
        self._exchange([msg], msg.describe())

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Release this rank's resources; the transport is unusable afterwards."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- point to point

    def send(self, buf: np.ndarray, peer: int, tag: int = 0) -> None:
        """Send the bytes of `buf` (C-contiguous) to `peer`.  Returns once `buf` may be reused."""
        self._check_p2p("send to", buf, peer, tag, writable=False)
        t0 = time.perf_counter()
        self._send(buf, peer, tag, t0)
        self._count_p2p("send", peer, buf.nbytes, t0)

    def recv(self, buf: np.ndarray, peer: int, tag: int = 0) -> None:
        """Receive the next message from `peer` into `buf` (same byte count as sent)."""
        self._check_p2p("receive from", buf, peer, tag, writable=True)
        t0 = time.perf_counter()
        self._recv(buf, peer, tag, t0)
        self._count_p2p("recv", peer, buf.nbytes, t0)

    # -- collectives

    def allreduce(
        self,
        buf: np.ndarray,
        group: Sequence[int] | None = None,
        out: np.ndarray | None = None,
        slots: int = 1,
    ) -> None:
        """Elementwise sum over the ranks of `group` (default: all), summed in group order:
        the result is bitwise identical on every member.  In place, or into `out` (same
        size and type as `buf`, which is then only read: no copy of it is made first).

        With `slots` > 1, `buf` holds `slots` partial sums of a K reduction split in
        chunks (a `k_chunk` matmul's chunk sums, see `lower.Step.slots`), and `out` (required,
        1/slots of `buf`) gets the fold a single rank's kernel makes: the first member's
        slot 0 (its chunks already folded), then every later member's slots in K order.
        Every member sends its whole buffer to every other (the direct algorithm, the
        messages the native collective exchanges)."""
        g = self._group(group)
        if slots > 1:
            self._allreduce_slots(buf, g, out, slots)
            return
        x = _flat(_contiguous(buf, "allreduce", writable=out is None))
        y = x if out is None else _flat(_contiguous(out, "allreduce", writable=True))
        if y.dtype != x.dtype or y.size != x.size:
            raise TransportError(
                f"rank {self.rank}: allreduce of {x.size} x {x.dtype} into {y.size} x {y.dtype}"
            )
        t0 = time.perf_counter()
        if len(g) > 1 and cost.allreduce_is_direct(len(g), x.nbytes):
            self._allreduce_direct(x, g, t0, y)
        elif len(g) > 1:
            if y is not x:
                np.copyto(y, x)
            self._allreduce_sliced(y, g, t0)
        elif y is not x:
            np.copyto(y, x)
        self._record_collective("allreduce", x.nbytes, t0)

    def _allreduce_slots(
        self, buf: np.ndarray, g: tuple[int, ...], out: np.ndarray | None, slots: int
    ) -> None:
        x = _flat(_contiguous(buf, "allreduce", writable=False))
        if out is None or x.size % slots:
            raise TransportError(
                f"rank {self.rank}: an allreduce of {slots} slots needs a buffer of whole "
                f"slots ({x.size} values) and an `out` of one slot"
            )
        y = _flat(_contiguous(out, "allreduce", writable=True))
        if y.dtype != x.dtype or y.size != x.size // slots:
            raise TransportError(
                f"rank {self.rank}: allreduce of {slots} slots of {x.size // slots} x "
                f"{x.dtype} into {y.size} x {y.dtype}"
            )
        t0 = time.perf_counter()
        first, *later = (part.reshape(slots, -1) for part in self._direct_exchange(x, g, t0))
        chunks = [first[0], *(c for member in later for c in member)]
        if len(chunks) == 1:
            np.copyto(y, chunks[0])
        else:
            _ordered_sum(chunks, out=y)
        self._record_collective("allreduce", x.nbytes, t0)

    def allgather(
        self,
        buf: np.ndarray,
        out: np.ndarray,
        group: Sequence[int] | None = None,
        axis: int = 0,
    ) -> None:
        """`out` = the members' `buf`s concatenated in group order along axis 0 (rank-major
        bytes: `out` may be shaped (n * d0, ...) or (n, d0, ...)), or along the last axis
        with `axis=-1` (`out` shaped (..., n * d_last))."""
        g = self._group(group)
        buf = _contiguous(buf, "allgather")
        out = _contiguous(out, "allgather", writable=True)
        n = len(g)
        if out.dtype != buf.dtype or out.nbytes != n * buf.nbytes:
            raise TransportError(
                f"rank {self.rank}: allgather over {n} ranks of {buf.nbytes} bytes ({buf.dtype})"
                f" needs an output of {n * buf.nbytes} bytes of {buf.dtype}, got {out.nbytes}"
                f" bytes of {out.dtype}"
            )
        last = axis in (-1, buf.ndim - 1) and buf.ndim > 1
        if axis not in (0, -1, buf.ndim - 1):
            raise TransportError(f"allgather concatenates along axis 0 or -1, not {axis}")
        t0 = time.perf_counter()
        rows = np.empty((n, buf.nbytes), np.uint8) if last else out.reshape(-1).view(np.uint8)
        rows = rows.reshape(n, buf.nbytes)
        rows[g.index(self.rank)] = buf.reshape(-1).view(np.uint8)
        self._all_to_all(
            g, lambda _p: buf, lambda p: rows[g.index(p)], TAG_ALLGATHER, "allgather", t0
        )
        if last:
            parts = rows.view(buf.dtype).reshape(n, *buf.shape)
            np.copyto(out.reshape(*buf.shape[:-1], n, buf.shape[-1]), np.moveaxis(parts, 0, -2))
        self._record_collective("allgather", out.nbytes, t0)

    def broadcast(self, buf: np.ndarray, root: int, group: Sequence[int] | None = None) -> None:
        """Copy `root`'s `buf` into every member's `buf`."""
        g = self._group(group)
        if root not in g:
            raise TransportError(f"rank {self.rank}: broadcast root {root} is not in group {g}")
        buf = _contiguous(buf, "broadcast", writable=self.rank != root)
        t0 = time.perf_counter()
        if self.rank == root:
            msgs = [self._message("send", p, buf, TAG_BROADCAST, t0) for p in g if p != root]
        else:
            msgs = [self._message("recv", root, buf, TAG_BROADCAST, t0)]
        if msgs:
            self._exchange(msgs, f"broadcast from rank {root} {self._over(g)}")
            self._record_messages(msgs)
        self._record_collective("broadcast", buf.nbytes, t0)

    def barrier(self, group: Sequence[int] | None = None) -> None:
        """Return once every member of `group` (default: all ranks) has entered."""
        g = self._group(group)
        t0 = time.perf_counter()
        empty = np.empty(0, np.uint8)
        self._all_to_all(g, lambda _p: empty, lambda _p: empty, TAG_BARRIER, "barrier", t0)
        self._record_collective("barrier", 0, t0)

    def gather_object(self, obj: object, root: int = 0) -> list | None:
        """Every rank's picklable `obj`, in rank order, on `root` (None elsewhere).  Built on
        byte messages, the length first, so every transport has it: how rank 0 collects the
        figures of a run."""
        import pickle

        g = self._group(None)
        if root not in g:
            raise TransportError(f"rank {self.rank}: gather root {root} is not a rank")
        t0 = time.perf_counter()
        if self.rank != root:
            payload = np.frombuffer(pickle.dumps(obj), np.uint8)
            self._exchange_one("send", root, np.array([payload.nbytes], np.int64), TAG_GATHER)
            self._exchange_one("send", root, payload, TAG_GATHER)
            self._record_collective("gather", payload.nbytes, t0)
            return None
        out = [obj if p == root else None for p in g]
        total = 0
        for p in g:
            if p == root:
                continue
            size = np.zeros(1, np.int64)
            self._exchange_one("recv", p, size, TAG_GATHER)
            payload = np.empty(int(size[0]), np.uint8)
            self._exchange_one("recv", p, payload, TAG_GATHER)
            out[p] = pickle.loads(payload.tobytes())
            total += payload.nbytes
        self._record_collective("gather", total, t0)
        return out

    def clock_offset(self, root: int = 0, rounds: int = CLOCK_ROUNDS) -> ClockOffset:
        """How far `root`'s clock is ahead of this rank's, measured (every rank calls it):
        NTP-style ping-pongs with `root`, offset = ((t1 - t0) + (t2 - t3)) / 2 from the
        exchange with the shortest round trip.  The true offset lies within half that round
        trip of the estimate.  On `root`: zero.  Add `seconds` to this rank's
        `time.perf_counter()` readings to put them on `root`'s clock."""
        g = self._group(None)
        if self.rank == root:
            for p in g:
                if p != root:
                    self._serve_clock(p, rounds)
            return ClockOffset(0.0, 0.0)
        best = None
        stamps = np.zeros(2, np.float64)
        for _ in range(rounds):
            t0 = time.perf_counter()
            self._exchange_one("send", root, np.zeros(0, np.uint8), TAG_CLOCK)
            self._exchange_one("recv", root, stamps, TAG_CLOCK)
            t3 = time.perf_counter()
            t1, t2 = float(stamps[0]), float(stamps[1])
            trip = (t3 - t0) - (t2 - t1)
            if best is None or trip < best.round_trip_seconds:
                best = ClockOffset(((t1 - t0) + (t2 - t3)) / 2, trip)
        return best

    def _serve_clock(self, peer: int, rounds: int) -> None:
        """`root`'s half of `clock_offset` with one rank: stamp each ping's arrival and the
        reply's departure."""
        stamps = np.zeros(2, np.float64)
        for _ in range(rounds):
            self._exchange_one("recv", peer, np.zeros(0, np.uint8), TAG_CLOCK)
            stamps[0] = time.perf_counter()
            stamps[1] = time.perf_counter()
            self._exchange_one("send", peer, stamps, TAG_CLOCK)

    def count_collective(
        self, kind: str, group: Sequence[int], payload: int, message: int, t0: float, t1: float
    ) -> None:
        """Count a collective that a rank program's native code ran over this transport's
        channels, as `allreduce` / `allgather` count their own: one message of `message`
        bytes each way with every other member, `payload` bytes for the operation."""
        g = self._group(group)
        for p in g:
            if p != self.rank:
                self.stats.peer(p).count("send", message, t1 - t0)
                self.stats.peer(p).count("recv", message, t1 - t0)
        self._count(kind, payload, t0, t1)

    def count_collectives(
        self,
        kind: str,
        group: Sequence[int],
        calls: int,
        payload: int,
        message: int,
        seconds: float,
    ) -> None:
        """Count `calls` collectives of one kind over one group at once, as `calls` calls of
        `count_collective` would: `message` bytes each way with every other member and
        `payload` bytes for the operations in all, `seconds` inside them in all.  Without the
        `on_event` hook's records (one per operation): a caller with a hook counts each."""
        for p in self._group(group):
            if p != self.rank:
                peer = self.stats.peer(p)
                peer.bytes_sent += message
                peer.bytes_received += message
                peer.messages_sent += calls
                peer.messages_received += calls
                peer.wait_s += 2 * seconds  # a send and a receive each, as count_collective
        op = self.stats.op(kind)
        op.count += calls
        op.bytes += payload
        op.seconds += seconds

    def _exchange_one(self, kind: str, peer: int, buf: np.ndarray, tag: int) -> None:
        """One message of a collective built here (not counted as a user send or receive)."""
        msg = self._message(kind, peer, buf, tag, time.perf_counter())
        self._exchange([msg], msg.describe())

    # -- collective algorithms

    def _allreduce_direct(
        self, x: np.ndarray, g: tuple[int, ...], t0: float, out: np.ndarray
    ) -> None:
        _ordered_sum(self._direct_exchange(x, g, t0), out=out)

    def _direct_exchange(self, x: np.ndarray, g: tuple[int, ...], t0: float) -> list:
        """The direct all-reduce's messages: `x` to every other member, theirs into scratch
        buffers; every member's buffer (this one's `x`) in group order."""
        parts = {p: self._scratch(p, x) for p in g if p != self.rank}
        if parts:
            self._all_to_all(g, lambda _p: x, parts.__getitem__, TAG_ALLREDUCE, "allreduce", t0)
        parts[self.rank] = x
        return [parts[p] for p in g]

    def _scratch(self, peer: int, like: np.ndarray) -> np.ndarray:
        """A receive buffer shaped like `like`, reused across calls (the same buffers every
        decode step: no allocation, and the transport's address lookups hit)."""
        key = (peer, like.dtype.num, like.size)
        buf = self._scratch_bufs.get(key)
        if buf is None:
            if len(self._scratch_bufs) >= 64:
                self._scratch_bufs.clear()
            buf = self._scratch_bufs[key] = np.empty(like.size, like.dtype)
        return buf

    def _allreduce_sliced(self, x: np.ndarray, g: tuple[int, ...], t0: float) -> None:
        bounds = cost.slices(x.size, len(g))
        me = g.index(self.rank)
        lo, hi = bounds[me]
        mine = {p: np.empty(hi - lo, x.dtype) for p in g if p != self.rank}
        self._all_to_all(
            g,
            lambda p: x[slice(*bounds[g.index(p)])],
            mine.__getitem__,
            TAG_REDUCE_SCATTER,
            "allreduce (reduce-scatter)",
            t0,
        )
        mine[self.rank] = own = x[lo:hi]
        _ordered_sum([mine[p] for p in g], out=own)
        self._all_to_all(
            g,
            lambda _p: x[lo:hi],
            lambda p: x[slice(*bounds[g.index(p)])],
            TAG_ALLGATHER,
            "allreduce (allgather)",
            time.perf_counter(),
        )

    def _all_to_all(
        self,
        g: tuple[int, ...],
        to: Callable[[int], np.ndarray],
        into: Callable[[int], np.ndarray],
        tag: int,
        what: str,
        t0: float,
    ) -> None:
        """Every member sends `to(p)` to each other member p and receives into `into(p)`."""
        others = [p for p in g if p != self.rank]
        if not others:
            return
        msgs = [self._message("send", p, to(p), tag, t0) for p in others]
        msgs += [self._message("recv", p, into(p), tag, t0) for p in others]
        self._exchange(msgs, f"{what} {self._over(g)}")
        self._record_messages(msgs)

    # -- helpers

    def _message(self, kind: str, peer: int, buf: np.ndarray, tag: int, t0: float) -> Message:
        link = self._link(peer) if kind == "send" else None
        return Message(kind, peer, buf, tag, link, t0)

    def _over(self, g: tuple[int, ...]) -> str:
        """'over ranks (0, 1)', for messages (formatted once per group)."""
        text = self._group_text.get(g)
        if text is None:
            text = self._group_text[g] = f"over ranks {g}"
        return text

    def _link(self, peer: int) -> Link | None:
        return self.link_model.link(self.rank, peer) if self.link_model is not None else None

    def _group(self, group: Sequence[int] | None) -> tuple[int, ...]:
        key = None if group is None else tuple(group)
        g = self._groups.get(key)
        if g is None:
            g = tuple(range(self.size)) if key is None else tuple(int(p) for p in key)
            if len(set(g)) != len(g) or any(not 0 <= p < self.size for p in g):
                raise TransportError(
                    f"rank {self.rank}: group {g} must list distinct ranks in 0..{self.size - 1}"
                )
            if self.rank not in g:
                raise TransportError(f"rank {self.rank} is not a member of group {g}")
            self._groups[key] = g
        return g

    def _check_p2p(self, verb: str, buf: np.ndarray, peer: int, tag: int, writable: bool) -> None:
        if not (
            isinstance(buf, np.ndarray)
            and buf.flags.c_contiguous
            and (buf.flags.writeable or not writable)
            and 0 <= tag <= TAG_UB
            and 0 <= peer < self.size
            and peer != self.rank
        ):
            self._bad_p2p(verb, buf, peer, tag, writable)

    def _count_p2p(self, kind: str, peer: int, nbytes: int, t0: float) -> None:
        t1 = time.perf_counter()
        self.stats.peer(peer).count(kind, nbytes, t1 - t0)
        self._count(kind, nbytes, t0, t1, peer)

    def _bad_p2p(self, verb: str, buf: object, peer: int, tag: int, writable: bool) -> NoReturn:
        if not 0 <= peer < self.size or peer == self.rank:
            raise TransportError(
                f"rank {self.rank} cannot {verb} rank {peer}: peers are the other ranks of"
                f" 0..{self.size - 1}"
            )
        if not 0 <= tag <= TAG_UB:
            raise TransportError(f"rank {self.rank}: tag {tag} is outside 0..{TAG_UB}")
        _contiguous(buf, f"{verb.split()[0]}", writable)  # raises
        raise AssertionError("unreachable")

    def _count(self, kind: str, nbytes: int, t0: float, t1: float, peer: int = -1) -> None:
        op = self.stats.op(kind)
        op.count += 1
        op.bytes += nbytes
        op.seconds += t1 - t0
        if self.on_event is not None:
            self.on_event(kind, peer, nbytes, t0, t1)

    def _record_messages(self, msgs: Sequence[Message]) -> None:
        for m in msgs:
            self.stats.peer(m.peer).count(m.kind, m.nbytes, (m.t_done or m.t_start) - m.t_start)

    def _record_collective(self, kind: str, nbytes: int, t0: float) -> None:
        self._count(kind, nbytes, t0, time.perf_counter())


def _contiguous(buf: np.ndarray, op: str, writable: bool = False) -> np.ndarray:
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise TransportError(f"{op} needs a C-contiguous numpy array, got {type(buf).__name__}")
    if writable and not buf.flags.writeable:
        raise TransportError(f"{op} writes into its buffer, but the array is read-only")
    return buf


def _flat(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 1 else x.reshape(-1)


def _ordered_sum(parts: Sequence[np.ndarray], out: np.ndarray) -> None:
    """out = ((parts[0] + parts[1]) + parts[2]) + ..., elementwise (IEEE additions: the same
    bits wherever they are computed).  `out` may be one of the parts."""
    if len(parts) == 2:
        np.add(parts[0], parts[1], out=out)
        return
    later = any(np.may_share_memory(p, out) for p in parts[2:])  # read after out is written
    acc = np.empty_like(out) if later else out
    np.add(parts[0], parts[1], out=acc)
    for p in parts[2:]:
        np.add(acc, p, out=acc)
    if acc is not out:
        np.copyto(out, acc)


def measure_round_trip(t: Transport, peer: int, nbytes: int = 2304, iters: int = 1000) -> float:
    """Mean seconds of a ping-pong of `nbytes` with `peer` (both ranks call it; the lower
    rank serves first).  For reports and calibration."""
    buf = np.zeros(max(nbytes, 0), np.uint8)
    first = t.rank < peer
    for _ in range(2):  # the first pass warms caches and the peer's wait loop
        t0 = time.perf_counter()
        for _ in range(iters):
            if first:
                t.send(buf, peer)
                t.recv(buf, peer)
            else:
                t.recv(buf, peer)
                t.send(buf, peer)
        elapsed = time.perf_counter() - t0
    return elapsed / iters
