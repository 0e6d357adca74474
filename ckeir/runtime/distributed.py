"""Running one rank of a distributed program: its native segments, the communication steps
between them, the token broadcast, and the KV-cache handoff when prefill and decode place
layers or heads differently.

Every rank runs the same generation loop (SPMD).  A rank without a program in a phase only
takes part in the token broadcast (and in the handoff after prefill).

On local ranks, a program whose communication is all collectives runs each token as one
native call (its fused entry: the collectives speak the local transport's channels from
JIT-compiled code), unless a message would not fit one channel slot or crosses a simulated
link; the transport's counters and the IR byte check then come from what the native code
recorded.  Elsewhere (MPI, or $CKEIR_PYTHON_COLLECTIVES=1) the steps run one by one, the
collectives handed arena views.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

import attrs
import numpy as np

from ckeir.backends.llvm.engine import _Program, lazy_zeros
from ckeir.backends.llvm.kernels import collective as C
from ckeir.backends.llvm.lower import Step
from ckeir.backends.llvm.pool import Pool
from ckeir.backends.llvm.width import WidthPolicy
from ckeir.driver import PREFILL_CHUNK
from ckeir.errors import TransportError
from ckeir.passes.plan_memory import kv_cache_row, kv_extents

HANDOFF_TAG = 7
# Set (to anything but "" or "0") to run every collective from Python between native
# segments, as before native collectives: the A/B switch of benchmarks/tp_overhead.py.
PYTHON_COLLECTIVES_ENV = "CKEIR_PYTHON_COLLECTIVES"


def head_owner(plan, layer: int, head: int) -> tuple[int, int]:
    """(rank, local head index) that holds KV head `head` of `layer` under a phase plan."""
    stage = next(s for s in plan.stages if s.first <= layer <= s.last)
    for rank, (k0, k1) in zip(stage.ranks, stage.kv_heads, strict=True):
        if k0 <= head < k1:
            return rank, head - k0
    raise ValueError(f"no owner for layer {layer} head {head}")


def handoff_plan(pre, dec, layers: int, kv_heads: int):
    """(src rank, dst rank) -> [(layer, src local head, dst local head)] for every KV head whose
    owner or local index differs between the prefill and the decode placement."""
    moves = defaultdict(list)
    for layer in range(layers):
        for h in range(kv_heads):
            src, i = head_owner(pre, layer, h)
            dst, j = head_owner(dec, layer, h)
            if (src, i) != (dst, j) or pre.describe() != dec.describe():
                moves[(src, dst)].append((layer, i, j))
    return dict(moves)


class RankEngine:
    """Engine (see `ckeir.runtime.generate`) for one rank of a placed program."""

    def __init__(
        self,
        rank: int,
        lowered,
        compiled,
        weights,
        placement,
        config,
        threads,
        host,
        transport,
        events=None,
        huge_pages: bool | None = None,
        adaptive: bool | None = None,
        trace_collectives: bool = True,
    ):
        self.rank, self.transport, self.config = rank, transport, config
        self.placement = placement
        self.context = config.context
        self.pool = Pool(threads, host)
        # how many of the pool's threads a token's runs take (None: CKEIR_ADAPTIVE_THREADS
        # says); chosen once per token, observed on the token's native time alone
        self.widths = WidthPolicy.for_pool(threads, adaptive)
        self.compiled = compiled
        self.events = events if events is not None else []
        self.programs, self.caches = {}, {}
        self.fused: dict[str, _Fused] = {}  # phase -> its one-call entry, where it has one
        same = placement["prefill"].describe() == placement["decode"].describe()
        # a batched decode program (`batch N`) keeps N slot-major caches; prefill writes one
        # slot's region of them (the spec's check makes both phases share the stages)
        batched = next((a for a in lowered.programs.values() if "positions" in a.slots), None)
        self.slots = batched.cache_shape[0] if batched is not None else 1
        for abi in lowered.programs.values():
            key = "shared" if same else abi.phase
            if key not in self.caches:
                # resident only where written, as one rank's cache (engine.lazy_zeros): numpy
                # would advise huge pages, and each first touch would fault in 2 MiB mid-token
                shape = batched.cache_shape if batched is not None else abi.cache_shape
                self.caches[key] = (lazy_zeros(shape), lazy_zeros(shape))
            kc, vc = self.caches[key]
            if batched is not None and "positions" not in abi.slots:
                kc, vc = kc[0], vc[0]
            addresses = {
                st.symbol: compiled.address(st.symbol) for st in abi.steps if st.kind == "native"
            }
            prog = _Program(abi, 0, weights, kc, vc, huge_pages)
            self.programs[abi.phase] = (prog, addresses)
            self._attach_comm(prog, compiled)
        self.max_prefill = min(
            (p.abi.max_tokens for p, _ in self.programs.values() if p.abi.phase == "prefill"),
            default=min(PREFILL_CHUNK, config.context),
        )
        self.handoff = (
            None
            if same
            else handoff_plan(
                placement["prefill"], placement["decode"], config.layers, config.kv_heads
            )
        )
        # phase -> {layer: its extent of this rank's packed cache} (rings), where it has one
        self.extents = {} if same else self._cache_extents(lowered)
        self.world = tuple(sorted({r for p in placement.values() for r in p.ranks}))
        self.stats = defaultdict(float)
        self.native_seconds = {"prefill": 0.0, "decode": 0.0}
        self._phase = "prefill"
        self._fault = injected_fault(rank)
        self._steps = 0
        self._padding: dict = {}  # allgather step -> its padded send and receive buffers
        # the root rank's choice of the token from its row's logits before the broadcast
        # (`pick(argmax, logits) -> id`: a request's sampler); None: the argmax
        self.pick = None
        # one event per collective of a fused call (for traces); without, they are counted
        # per kind in bulk and only the call's own time is an event
        self.trace_collectives = trace_collectives

    def _cache_extents(self, lowered) -> dict[str, dict[int, tuple[int, int]]]:
        """Each phase's layout of this rank's packed KV cache, as plan-memory laid it out: the
        layers of the rank's stage in order, every func seeing calls of the prefill's rows."""
        out = {}
        for abi in lowered.programs.values():
            if len(abi.cache_shape) != 2:  # (L, C, KVD): a layer's rows are its positions
                continue
            stage = next(s for s in self.placement[abi.phase].stages if self.rank in s.ranks)
            layers = range(stage.first, stage.last + 1)
            windows = [self.config.layer_window(layer) for layer in layers]
            extents = kv_extents(windows, abi.context, self.max_prefill)
            if extents is None or sum(r or abi.context for _, r in extents) != abi.cache_shape[0]:
                raise RuntimeError(
                    f"rank {self.rank}: the {abi.phase} program's KV cache of "
                    f"{abi.cache_shape[0]} rows is not the layout of layers "
                    f"{stage.first}..{stage.last} (the KV handoff could not find their rows)"
                )
            out[abi.phase] = dict(zip(layers, extents, strict=True))
        return out

    def _kv_rows(self, phase: str, layer: int, rows: slice):
        """Index of `layer`'s rows at positions `rows` in this rank's `phase` cache."""
        extent = self.extents.get(phase, {}).get(layer)
        if extent is None:
            return (layer, rows)
        return (kv_cache_row(extent, np.arange(rows.start, rows.stop)),)

    # -- native collectives ------------------------------------------------------------------
    def _attach_comm(self, prog, compiled) -> None:
        """Give a program whose collectives can run in native code (`ProgramABI.fused`) its
        comm block, when the transport offers one (local ranks) and the old path is not asked
        for."""
        switch = os.environ.get(PYTHON_COLLECTIVES_ENV, "")
        if (
            not prog.abi.fused
            or not hasattr(self.transport, "comm_block")
            or switch not in ("", "0")
        ):
            return
        fused = _Fused(prog, compiled.address(prog.abi.fused), self.transport)
        prog.ctx[prog.abi.slot("comm")] = fused.comm.ctypes.data
        self.fused[prog.abi.phase] = fused

    def _run_fused(self, fused: _Fused, n: int, width: int) -> float:
        """The whole program in one native call; then its collectives' records are checked
        against the IR and counted as the transport would count its own, all at once (the
        ranks wait for each other's bookkeeping at the next token's first collective).
        Returns the seconds spent computing (the call less its collectives' waits)."""
        prog, comm, records = fused.prog, fused.comm, fused.records
        comm[C.C_STATUS] = C.OK
        t0 = time.perf_counter()
        self.pool.run(fused.address, prog.ctx.ctypes.data, width=width)
        dt = time.perf_counter() - t0
        if comm[C.C_STATUS] != C.OK:
            raise fused.failure(n)
        book = fused.book(n)
        sent = records[:, C.R_SENT]
        if not np.array_equal(sent, book.sent):
            i = int(np.flatnonzero(sent != book.sent)[0])
            self._checked(prog.abi.comm_steps[i], n, int(sent[i]))  # raises, naming the step
            raise AssertionError("unreachable")  # pragma: no cover
        # CLOCK_MONOTONIC: time.perf_counter's clock
        c0 = records[:, C.R_T0] * 1e-9
        waits = records[:, C.R_T1] * 1e-9 - c0
        waited = 0.0
        for kind, group, steps, payload, message in book.counts:
            seconds = float(waits[steps].sum())
            if self.transport.on_event is not None:  # the hook sees each operation
                for i in steps.tolist():
                    r0, r1 = records[i, C.R_T0].item(), records[i, C.R_T1].item()
                    self.transport.count_collective(
                        kind, group, book.payloads[i], int(sent[i]), r0 * 1e-9, r1 * 1e-9
                    )
            else:
                self.transport.count_collectives(kind, group, len(steps), payload, message, seconds)
            self.stats[kind] += seconds
            waited += seconds
        if self.trace_collectives:
            self.events.extend(
                zip(
                    book.kinds,
                    book.peers,
                    book.sent.tolist(),
                    c0.tolist(),
                    waits.tolist(),
                    strict=True,
                )
            )
        self._record(_NATIVE, 0, t0, dt - waited)
        return dt - waited

    # -- one phase step ---------------------------------------------------------------------
    def _run(self, phase: str, ids: np.ndarray, pos: int):
        """One sequence's step (SPMD): this rank's program, then the token broadcast from
        the last stage to every rank (the root's argmax, or its `pick`).  A batched decode program runs it as its slot 0."""
        token, logits = -1, None
        entry = self.programs.get(phase)
        if entry is not None:
            prog = entry[0]
            if prog.batched:
                self._set_rows(prog, [(0, int(ids[0]), pos)])
            else:
                self._set_span(prog, 0, ids, pos)
            self._execute(phase, len(ids))
            if prog.abi.outputs:
                token = int(prog.output(0, np.int32)[0])
                logits = prog.output(1, np.float32)[: self.config.vocab]
        root = _root(self.placement[phase])
        if self.pick is not None and self.rank == root:
            token = self.pick(token, logits)  # every rank follows the root's choice
        buf = np.array([token], dtype=np.int32)
        self.transport.broadcast(buf, root, self.world)
        if phase == "prefill" and self.handoff is not None:
            self._handoff(pos, len(ids))
        return int(buf[0]), logits

    def _execute(self, phase: str, n: int) -> None:
        """This rank's program of `phase` on the n rows its inputs hold: one native call
        with native collectives where it can, else step by step, each transfer held to the
        IR's bytes for n rows."""
        self._phase = phase
        prog, addresses = self.programs[phase]
        fused = self.fused.get(phase)
        width = self.widths.choose(phase)
        if fused is not None and fused.fits(n):
            computed = self._run_fused(fused, n, width)
        else:
            computed = 0.0
            for st in prog.abi.steps:
                t0 = time.perf_counter()
                before = self._counted(st)
                self._step(prog, st, addresses, n, width)
                dt = time.perf_counter() - t0
                self._record(st, self._checked(st, n, self._counted(st) - before), t0, dt)
                computed += dt if st.kind == "native" else 0.0
        # the width is judged on this rank's own work: waits for peers are not its doing
        self.widths.observe(phase, width, computed, n)

    def _set_span(self, prog, slot: int, ids: np.ndarray, pos: int) -> None:
        """Inputs of a one-sequence program: ids at positions pos.. of `slot`'s cache
        region (slot 0 of one sequence's caches when the rank keeps no slots)."""
        n = len(ids)
        prog.ids[:n] = ids
        prog.ctx[prog.abi.slot("n")] = n
        prog.ctx[prog.abi.slot("pos")] = pos
        if self.slots > 1:
            kc, vc = self.caches["shared"]
            prog.ctx[prog.abi.slot("kcache")] = kc[slot].ctypes.data
            prog.ctx[prog.abi.slot("vcache")] = vc[slot].ctypes.data

    @staticmethod
    def _set_rows(prog, rows) -> None:
        """Inputs of a batched decode program: one row (slot, token, pos) per sequence."""
        for t, (slot, token, pos) in enumerate(rows):
            prog.ids[t], prog.positions[t], prog.seq_slots[t] = token, pos, slot
        prog.ctx[prog.abi.slot("n")] = len(rows)
        prog.ctx[prog.abi.slot("pos")] = 0

    # -- steps a driver rank hands out (`runtime.pipeline_slots`) ----------------------------
    def prefill_slot(self, slot: int, ids: np.ndarray, pos: int):
        """`ids` at positions pos.. of `slot`'s sequence through this rank's stage (its recv
        from the stage before, its layers, its send to the next): the last stage returns
        (argmax of the last row, its logits), the others None.  No broadcast: the driver
        collects the results (see `PipelineSlots`)."""
        prog = self.programs["prefill"][0]
        self._set_span(prog, slot, np.asarray(ids, np.int32), pos)
        self._execute("prefill", len(ids))
        if not prog.abi.outputs:
            return None
        return int(prog.output(0, np.int32)[0]), prog.output(1, np.float32)

    def decode_rows(self, rows):
        """One step of rows (slot, token, pos) through this rank's stage of the batched
        decode program: the last stage returns (argmax per row, logits [rows, vocab]), the
        others None."""
        prog = self.programs["decode"][0]
        self._set_rows(prog, rows)
        self._execute("decode", len(rows))
        if not prog.abi.outputs:
            return None
        n = len(rows)
        tokens = prog.output(0, np.int32)[:n]
        return tokens, prog.output(1, np.float32).reshape(-1, self.config.vocab)[:n]

    def _step(self, prog, st, addresses, n: int, width: int) -> None:
        arena = prog.arena
        size = st.nbytes(n)
        if st.kind == "native":
            self.pool.run(addresses[st.symbol], prog.ctx.ctypes.data, width=width)
        elif st.kind == "send":  # the value, or its Q8_0 blocks in a staging buffer
            self.transport.send(arena[st.src : st.src + st.wire_bytes(n)], st.peer)
        elif st.kind == "recv":
            self.transport.recv(arena[st.dst : st.dst + st.wire_bytes(n)], st.peer)
        elif st.kind == "allreduce":  # arena views straight to the transport, no copy
            src = arena[st.src : st.src + size].view(np.float32)
            out = arena[st.dst : st.dst + size // st.slots].view(np.float32)
            self.transport.allreduce(src, st.group, out=out, slots=st.slots)
        elif st.kind == "allgather":
            self._allgather(arena, st, size)
        else:
            raise TransportError(f"unknown program step {st.kind}")

    def _allgather(self, arena: np.ndarray, st, size: int) -> None:
        """Each member's one-row slice, in group order.  Equal slices gather straight into
        the arena; uneven ones (shards follow the nodes) travel padded to the widest, through
        buffers kept for the step."""
        src = arena[st.src : st.src + size].view(np.float32)
        out = arena[st.dst : st.dst + 4 * sum(st.sizes)].view(np.float32)
        widest = max(st.sizes)
        if min(st.sizes) == widest:
            self.transport.allgather(src, out, st.group)
            return
        padded, gathered = self._padding.get(st) or self._padding.setdefault(
            st, (np.zeros(widest, np.float32), np.empty(widest * len(st.group), np.float32))
        )
        padded[: src.size] = src
        self.transport.allgather(padded, gathered, st.group)
        at = 0
        for i, w in enumerate(st.sizes):
            out[at : at + w] = gathered[i * widest : i * widest + w]
            at += w

    def _counted(self, st) -> int:
        """The transport's count of the bytes a step moves, so far: a send's or recv's with
        its peer; a collective's payload (an allgather counts what it gathered: every
        member's share)."""
        stats = self.transport.stats
        if st.kind == "native":
            return 0
        if st.kind in ("send", "recv"):
            peer = stats.peer(st.peer)
            return peer.bytes_sent if st.kind == "send" else peer.bytes_received
        return stats.op(st.kind).bytes // (len(st.group) if st.kind == "allgather" else 1)

    def _checked(self, st, n: int, moved: int) -> int:
        """`moved`, once it is what the IR states for n rows: the evidence (plan, report)
        comes from the IR's byte counts, so a transfer of any other size is an error."""
        if st.kind == "native":
            return 0
        if not st.ir_agrees(n, moved):
            raise TransportError(
                f"rank {self.rank}: {st.op} (peer/group {st.peer if st.peer >= 0 else st.group})"
                f" moved {moved} bytes for {st.row_count(n)} rows, but the IR states "
                f"{st.ir_bytes} bytes for {st.ir_rows} rows"
            )
        return moved

    def _record(self, st, wire: int, t0: float, dt: float | None = None) -> None:
        dt = time.perf_counter() - t0 if dt is None else dt
        self.stats[st.kind] += dt
        if st.kind == "native":
            self.native_seconds[self._phase] += dt
        self.events.append((st.kind, st.peer if st.peer >= 0 else st.group, wire, t0, dt))

    def _handoff(self, pos: int, n: int) -> None:
        """Move the KV rows just written from their prefill owners to their decode owners
        (each phase's cache finds a layer's rows in its own layout: rings, `kv_extents`)."""
        hd = self.config.head_dim
        pre = self.caches.get("prefill")
        dec = self.caches.get("decode")
        rows = slice(pos, pos + n)

        def at(phase, layer, head):
            return (*self._kv_rows(phase, layer, rows), slice(head * hd, (head + 1) * hd))

        for (src, dst), moves in sorted(self.handoff.items()):
            if self.rank not in (src, dst):
                continue
            if src == dst:
                for layer, i, j in moves:
                    for c in (0, 1):
                        dec[c][at("decode", layer, j)] = pre[c][at("prefill", layer, i)]
                continue
            buf = np.empty((2, len(moves), n, hd), np.float32)
            if self.rank == src:
                for m, (layer, i, _j) in enumerate(moves):
                    for c in (0, 1):
                        buf[c, m] = pre[c][at("prefill", layer, i)]
                self.transport.send(buf.reshape(-1).view(np.uint8), dst, HANDOFF_TAG)
            else:
                self.transport.recv(buf.reshape(-1).view(np.uint8), src, HANDOFF_TAG)
                for m, (layer, _i, j) in enumerate(moves):
                    for c in (0, 1):
                        dec[c][at("decode", layer, j)] = buf[c, m]

    # -- the Engine protocol ----------------------------------------------------------------
    def prefill(self, ids, pos):
        return self._run("prefill", np.asarray(ids, np.int32), pos)

    def decode(self, token, pos):
        self._steps += 1
        if self._fault is not None and self._steps == self._fault[0]:
            if self._fault[1] in FAULT_SIGNALS:
                os.kill(os.getpid(), FAULT_SIGNALS[self._fault[1]])
            raise RuntimeError(
                f"fault injected on rank {self.rank} at decode step {self._steps} (CKEIR_FAULT)"
            )
        return self._run("decode", np.array([token], np.int32), pos)

    def reset(self) -> None:
        """Start a new sequence (the KV caches need no clearing: see NativeEngine.reset)."""

    def memory_regions(self):
        """Weights, arenas and KV cache this rank holds (see `ckeir.runtime.memory`)."""
        return [r for p, _ in self.programs.values() for r in p.regions()]

    def close(self) -> None:
        self.pool.close()


# CKEIR_FAULT kinds that are a signal to the rank itself: killed, or stopped (as by
# `kill -STOP` or a debugger: only a watchdog notices; once continued, it raises).
FAULT_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def injected_fault(rank: int):
    """CKEIR_FAULT="rank=R,step=S[,kind=raise|kill|stop]": make rank R fail at decode step S
    — a testing aid for the fault paths (every rank must stop, naming the failed one)."""
    spec = os.environ.get("CKEIR_FAULT")
    if not spec:
        return None
    fields = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    try:
        target, step = int(fields.get("rank", -1)), int(fields.get("step", 1))
    except ValueError:
        target = step = -1
    kind = fields.get("kind", "raise")
    if target < 0 or step < 1 or kind not in ("raise", *FAULT_SIGNALS):
        raise TransportError(
            f"CKEIR_FAULT={spec[:60]!r} is not rank=R,step=S[,kind=raise|kill|stop]"
            " (R a rank, S >= 1 a decode step)"
        )
    return (step, kind) if target == rank else None


class _Fused:
    """A program's one-call entry with native collectives: its address, the comm block and
    records its collectives use, and per row count whether they all fit the native path."""

    def __init__(self, prog, address: int, transport):
        self.prog, self.address, self.transport = prog, address, transport
        self.records = np.zeros((len(prog.abi.comm_steps), C.RECORD_WORDS), np.int64)
        self.comm = transport.comm_block(self.records)
        self._fits: dict[int, bool] = {}
        self._books: dict[int, _Book] = {}

    def fits(self, n: int) -> bool:
        """Whether a call of n rows runs as one native call: every collective's messages
        take the transport's native path (one slot each, an unshaped link)."""
        fits = self._fits.get(n)
        if fits is None:
            fits = self._fits[n] = all(
                self.transport.runs_natively(st.kind, st.group, _message_bytes(st, n))
                for st in self.prog.abi.comm_steps
            )
        return fits

    def book(self, n: int) -> _Book:
        """What a call of n rows must record and counts (see `_Book`), made once per n."""
        book = self._books.get(n)
        if book is None:
            book = self._books[n] = _Book.of(self.prog.abi.comm_steps, n)
        return book

    def failure(self, n: int) -> TransportError:
        """The error of a call whose comm block's status is not OK."""
        comm = self.comm
        st = self.prog.abi.comm_steps[int(comm[C.C_STEP])]
        tag = int(comm[C.C_TAG_ALLREDUCE if st.kind == "allreduce" else C.C_TAG_ALLGATHER])
        what = f"{st.kind} over ranks {st.group} (native)"
        return self.transport.native_failure(
            int(comm[C.C_STATUS]), what, int(comm[C.C_PEER]), _message_bytes(st, n), tag
        )


_NATIVE = Step("native")  # a fused call's own time, without its collectives


@attrs.frozen
class _Book:
    """A fused call's collectives at n rows: the bytes each must record as sent (the IR's
    message bytes; -1 where the IR's bytes do not make whole bytes for n rows, which no
    record matches), and per (kind, group) the steps, payload and message bytes in all."""

    sent: np.ndarray
    counts: tuple[tuple[str, tuple[int, ...], np.ndarray, int, int], ...]
    payloads: tuple[int, ...]  # per step, for the transport's event hook
    kinds: tuple[str, ...]  # per step, for the trace's events
    peers: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, steps, n: int) -> _Book:
        sent = np.array(
            [
                st.ir_bytes * st.row_count(n) // st.ir_rows
                if st.ir_bytes * st.row_count(n) % st.ir_rows == 0
                else -1
                for st in steps
            ],
            np.int64,
        )
        by: dict = {}
        for i, st in enumerate(steps):
            by.setdefault((st.kind, tuple(st.group)), []).append(i)
        counts = []
        for (kind, group), idx in by.items():
            message = int(sent[idx].sum())
            payload = (
                sum(steps[i].nbytes(n) for i in idx)
                if kind == "allreduce"
                else message * len(group)
            )
            counts.append((kind, group, np.array(idx, np.intp), payload, message))
        payloads = tuple(
            st.nbytes(n) if st.kind == "allreduce" else int(sent[i]) * len(st.group)
            for i, st in enumerate(steps)
        )
        return cls(
            sent,
            tuple(counts),
            payloads,
            tuple(st.kind for st in steps),
            tuple(st.group for st in steps),
        )


def _message_bytes(st, n: int) -> int:
    """Bytes of each message a collective step sends at n rows: what the IR states."""
    return st.ir_bytes * st.row_count(n) // st.ir_rows


def _root(plan) -> int:
    return plan.stages[-1].ranks[0]
