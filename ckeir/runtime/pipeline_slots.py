"""Sequence slots over pipeline stages: rank 0 drives, the other ranks serve steps.

A `batch N` schedule on pipeline stages (one node each) keeps N sequence slots on every
rank: each rank holds its layers' KV cache for every slot.  Continuous batching decides
each step on one rank (its scheduler), so the ranks cannot all run the same loop as
`generate` does: rank 0 (stage 0) sends every other rank a description of each step, runs
its own stage of it, and the last stage sends back each row's result.

The step protocol, on the transport's point-to-point messages (FIFO per pair of ranks):

- rank 0 → every other rank, tag `STEP_TAG`: one int64 message of `step_words` words,
  `[kind, n, logits, seq, *payload]`; kind `DECODE` (payload: n rows of slot, token, pos),
  `PREFILL` (payload: slot, pos; the n ids follow as an int32 message of their own) or
  `STOP` (the worker loop returns);
- each rank then runs its stage of the step: its program's recv from the stage before, its
  layers, its send to the next (the IR's bytes for n rows, checked as every run checks them);
- the last stage → rank 0, tag `RESULT_TAG`: each row's argmax (int32), then, when the
  step asked for them (`logits`), each row's logits (float32 x vocab), in one message.

`PipelineSlots` (rank 0) is a `runtime.batching.SlotEngine` and keeps up to `depth` steps
(one per stage) in flight: `start_decode` / `start_prefill` send a step and run stage 0 of
it, `finish` takes its results, in the order the steps started.  Stage s then works on step
k while stage s + 1 works on step k - 1.  `serve_steps` is the other ranks' loop.

A step whose results carry logits runs alone (the steps before it are finished first, and
it is finished before the next starts): a message larger than what the transport buffers
would leave the last stage waiting to send it while rank 0 waits to send the next step.
"""

from __future__ import annotations

from collections import deque

import attrs
import numpy as np

from ckeir.errors import CkeError
from ckeir.runtime.batching import check_rows, check_span

STEP_TAG = 11
RESULT_TAG = 12
STOP, PREFILL, DECODE = 0, 1, 2
HEADER = 4  # kind, n, logits, seq


@attrs.define(eq=False)
class Pending:
    """A step in flight: what it was, and its rows' (argmax, logits) once received."""

    kind: int
    n: int
    logits: bool
    seq: int
    result: list | None = None


def step_words(slots: int) -> int:
    """int64 words of a step message: the header, then a decode step's rows at most."""
    return HEADER + max(3 * slots, 2)


class PipelineSlots:
    """`SlotEngine` on rank 0 of a batched pipeline: `engine` is rank 0's `RankEngine`
    (stage 0 of the batched decode and prefill programs), `transport` its transport.  The
    other ranks run `serve_steps` until `close` (which stops them) is called.  `depth`:
    at most this many steps in flight (default: one per stage)."""

    def __init__(self, engine, transport, depth: int | None = None):
        plan = engine.placement["decode"]
        if transport.rank != 0 or plan.stages[0].ranks != (0,):
            raise CkeError("the pipeline's slots are driven from rank 0, its first stage")
        if any(len(s.ranks) > 1 for s in plan.stages):
            raise CkeError("pipeline slots run on stages of one rank each")
        self.engine, self.transport = engine, transport
        self.slots = engine.slots
        self.context = engine.context
        self.max_prefill = engine.max_prefill
        self.vocab = engine.config.vocab
        # steps in flight: one per stage (1: the whole batch one step at a time)
        self.depth = len(plan.stages) if depth is None else max(1, min(depth, len(plan.stages)))
        self.last = plan.stages[-1].ranks[0]
        self.workers = tuple(r for r in engine.world if r != transport.rank)
        self._words = step_words(self.slots)
        self._message = np.zeros(self._words, np.int64)
        self._pending: deque[Pending] = deque()
        self._seq = 0
        self._closed = False
        self.most_in_flight = 0  # steps sent down the pipeline before the oldest came back

    # -- SlotEngine ---------------------------------------------------------------------------
    def prefill(self, slot: int, ids, pos: int) -> tuple[int, np.ndarray]:
        return self.finish(self.start_prefill(slot, ids, pos, logits=True))[0]

    def decode(self, rows) -> list[tuple[int, np.ndarray]]:
        return self.finish(self.start_decode(rows, logits=True))

    def release(self, slot: int) -> None:
        """Nothing to clear on any rank: a sequence's attention reads only the rows it
        wrote (see `NativeEngine.reset`)."""
        check_span(slot, 0, 1, self.slots, self.context)

    # -- steps in flight ------------------------------------------------------------------------
    def start_prefill(self, slot: int, ids, pos: int, logits: bool = False) -> Pending:
        """Send a prefill chunk of `slot`'s sequence down the pipeline; `finish` gives
        [(argmax of its last row, its logits or None)]."""
        ids = np.asarray(ids, np.int32)
        check_span(slot, pos, len(ids), self.slots, self.context)
        if not 1 <= len(ids) <= self.max_prefill:
            raise CkeError(f"a prefill call takes 1 to {self.max_prefill} ids, not {len(ids)}")
        return self._start(PREFILL, len(ids), [slot, pos], logits, slot=slot, ids=ids, pos=pos)

    def start_decode(self, rows, logits: bool = False) -> Pending:
        """Send one decode step of rows (slot, token, pos) down the pipeline; `finish`
        gives each row's (argmax, logits or None)."""
        check_rows(rows, self.slots, self.context, self.vocab)
        rows = [(int(s), int(t), int(p)) for s, t, p in rows]
        payload = [v for row in rows for v in row]
        return self._start(DECODE, len(rows), payload, logits, rows=rows)

    def finish(self, pending: Pending) -> list[tuple[int, np.ndarray | None]]:
        """The results of a step started here: those of the steps started before it are
        received first (they come back in order)."""
        if pending.result is None and pending not in self._pending:
            raise CkeError(f"step {pending.seq} was not started by this engine")
        while pending.result is None:
            self._receive(self._pending.popleft())
        return pending.result

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _start(self, kind: int, n: int, payload, logits: bool, **step) -> Pending:
        if self._closed:
            raise CkeError("the pipeline's slots are closed")
        if logits or (self._pending and self._pending[-1].logits):
            self._drain()  # see the module doc: a step with logits runs alone
        while len(self._pending) >= self.depth:
            self._receive(self._pending.popleft())
        pending = Pending(kind, n, logits, self._seq)
        self._seq += 1
        self._send_step(kind, n, logits, pending.seq, payload, step.get("ids"))
        if kind == PREFILL:
            out = self.engine.prefill_slot(step["slot"], step["ids"], step["pos"])
        else:
            out = self.engine.decode_rows(step["rows"])
        if self.last == self.transport.rank:  # one stage: the results are here
            pending.result = _rows_of(kind, out, n, logits)
        else:
            self._pending.append(pending)
            self.most_in_flight = max(self.most_in_flight, len(self._pending))
        return pending

    def _send_step(self, kind: int, n: int, logits: bool, seq: int, payload, ids=None) -> None:
        msg = self._message
        msg[:] = 0
        msg[:HEADER] = (kind, n, int(logits), seq)
        msg[HEADER : HEADER + len(payload)] = payload
        for rank in self.workers:
            self.transport.send(msg, rank, STEP_TAG)
            if ids is not None:
                self.transport.send(ids, rank, STEP_TAG)

    def _receive(self, pending: Pending) -> None:
        n, vocab = pending.n if pending.kind == DECODE else 1, self.vocab
        buf = np.empty(n * 4 + (n * vocab * 4 if pending.logits else 0), np.uint8)
        self.transport.recv(buf, self.last, RESULT_TAG)
        tokens = buf[: n * 4].view(np.int32)
        logits = buf[n * 4 :].view(np.float32).reshape(n, vocab) if pending.logits else None
        pending.result = [
            (int(tokens[i]), None if logits is None else logits[i].copy()) for i in range(n)
        ]

    def _drain(self) -> None:
        while self._pending:
            self._receive(self._pending.popleft())

    def close(self) -> None:
        """Finish the steps in flight and stop the other ranks' `serve_steps` (once)."""
        if self._closed:
            return
        try:
            self._drain()
        finally:
            self._closed = True
            self._send_step(STOP, 0, False, self._seq, [])


def _rows_of(kind: int, out, n: int, logits: bool) -> list:
    """A last stage's output as the rows' (argmax, logits or None)."""
    if kind == PREFILL:
        token, row = out
        return [(int(token), row if logits else None)]
    tokens, rows = out
    return [(int(tokens[i]), rows[i].copy() if logits else None) for i in range(n)]


def serve_steps(engine, transport, driver: int = 0) -> int:
    """The loop of a rank other than the driver: run each step the driver sends (its stage
    of it), send the rows' results back from the last stage, until the driver stops it.
    Returns the number of steps run."""
    plan = engine.placement["decode"]
    last = plan.stages[-1].ranks[0] == transport.rank
    msg = np.zeros(step_words(engine.slots), np.int64)
    ids = np.zeros(engine.max_prefill, np.int32)
    steps = 0
    while True:
        transport.recv(msg, driver, STEP_TAG)
        kind, n, logits, _seq = (int(v) for v in msg[:HEADER])
        body = msg[HEADER:]
        if kind == STOP:
            return steps
        if kind == PREFILL:
            transport.recv(ids[:n], driver, STEP_TAG)
            out = engine.prefill_slot(int(body[0]), ids[:n], int(body[1]))
        elif kind == DECODE:
            rows = [tuple(int(v) for v in body[3 * i : 3 * i + 3]) for i in range(n)]
            out = engine.decode_rows(rows)
        else:
            raise CkeError(f"rank {transport.rank}: step message of unknown kind {kind}")
        steps += 1
        if last:
            transport.send(_result_bytes(kind, out, n, bool(logits)), driver, RESULT_TAG)


def _result_bytes(kind: int, out, n: int, logits: bool) -> np.ndarray:
    if kind == PREFILL:
        token, row = out
        tokens, rows = np.array([token], np.int32), row.reshape(1, -1)
    else:
        tokens, rows = out
    parts = [np.ascontiguousarray(tokens, np.int32).view(np.uint8)]
    if logits:
        parts.append(np.ascontiguousarray(rows, np.float32).reshape(-1).view(np.uint8))
    return np.concatenate(parts)
