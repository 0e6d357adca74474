"""Continuous batching: a scheduler that keeps an engine's sequence slots full.

Iteration-level scheduling, as in Orca and vLLM: requests arrive at any time from any
thread; between two steps the scheduler retires finished and cancelled sequences, admits
waiting requests (first come, first served) into the freed slots, and plans the next step:
one decode row for every sequence that has a token to feed, and chunks of new prompts under
a per-step token budget.  Each sequence streams its ids as they come.

The scheduler talks to a `SlotEngine`: `slots` sequences, each with its own KV-cache region.
`OneSequenceSlots` makes one out of today's one-sequence engines (one engine, so one KV
cache, per slot); a compiled batched engine will implement the same protocol.

Greedy results never depend on which other sequences share a step: a slot's KV cache is its
own, and a prompt is cut into prefill chunks exactly as `generate` cuts it (at multiples of
`max_prefill` from its start).  Where a prompt is cut matters: on specs/tiny.cke (int8
activations), a 60-token prompt prefilled in chunks of 5 gives logits 0.036 away from the
same prompt in one chunk, on the native and the numpy engines alike (a last-bit difference
of a float sum flips an activation's int8 rounding); on SmolLM2, chunks of 5 changed one of
five prompts' first 16 greedy ids.  So the budget takes whole chunks.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import attrs
import numpy as np

from ckeir.driver import PREFILL_CHUNK
from ckeir.errors import CkeError
from ckeir.limits import shown
from ckeir.runtime.generate import Engine, check_request

FINISH_REASONS = ("length", "stop", "cancelled", "error")
_ANY_LENGTH = 1 << 62  # a context for `check_request` that any id list fits


class SlotEngine(Protocol):
    """`slots` sequences at once, each in its own KV-cache region of `context` positions."""

    slots: int  # sequence slots
    context: int  # positions per slot
    max_prefill: int  # most tokens one prefill call takes
    vocab: int  # token ids are 0..vocab-1 (requests are checked against it)

    def prefill(self, slot: int, ids: np.ndarray, pos: int) -> tuple[int, np.ndarray]:
        """`ids` at positions pos.. of `slot`'s sequence → (argmax of the last row, its
        logits)."""
        ...

    def decode(self, rows: list[tuple[int, int, int]]) -> list[tuple[int, np.ndarray]]:
        """One step for several sequences: rows of (slot, token, pos) → (argmax, logits)
        for each row, in order."""
        ...

    def release(self, slot: int) -> None:
        """`slot`'s sequence is over; the next prefill at position 0 starts another."""
        ...


def check_span(slot: int, pos: int, n: int, slots: int, context: int) -> None:
    """`n` positions from `pos` of `slot`'s sequence, refused unless the slot is one of the
    engine's and the positions lie inside its context: a sequence never writes past its KV
    region."""
    if isinstance(slot, bool) or not isinstance(slot, int | np.integer) or not 0 <= slot < slots:
        raise CkeError(
            f"slot {shown(slot)} is not one of the engine's {slots} slots (0..{slots - 1})"
        )
    if n < 1 or pos < 0 or pos + n > context:
        raise CkeError(
            f"slot {slot}: positions {pos}..{pos + n - 1} are outside its context of {context}"
        )


def check_rows(rows, slots: int, context: int, vocab: int) -> None:
    """A decode step's rows of (slot, token, pos), refused before anything runs: 1 to
    `slots` rows, each slot at most once and one of the engine's, each position inside its
    slot's context, each token in the vocabulary.  Every slot engine's decode (native,
    numpy, pipeline) checks its rows here, with one wording."""
    n = len(rows)
    if not 1 <= n <= slots:
        raise CkeError(f"a decode step takes 1 to {slots} rows, not {n}")
    seen = set()
    for slot, token, pos in rows:
        check_span(slot, pos, 1, slots, context)
        if slot in seen:
            raise CkeError(
                f"a decode step has slot {slot} twice (rows' slots {[r[0] for r in rows]})"
            )
        seen.add(slot)
        if not 0 <= token < vocab:
            raise CkeError(
                f"slot {slot}: token id {shown(token)} is not in the model's vocabulary of "
                f"{vocab} tokens (ids 0..{vocab - 1})"
            )


class PipelinedSlotEngine(SlotEngine, Protocol):
    """A `SlotEngine` that keeps up to `depth` steps in flight (a pipeline of `depth`
    stages: stage s works on one step while stage s + 1 works on the one before).  A step
    is started with its rows and finished later, steps finishing in the order they
    started; the scheduler never puts a sequence in two steps in flight.  `logits`: whether
    the caller needs each row's logits (a sampling pick does; greedy gets None)."""

    depth: int

    def start_decode(self, rows: list[tuple[int, int, int]], logits: bool = False) -> object:
        """Start a decode step of rows (slot, token, pos); returns its handle."""
        ...

    def start_prefill(self, slot: int, ids: np.ndarray, pos: int, logits: bool = False) -> object:
        """Start a prefill chunk of `slot`'s sequence; returns its handle."""
        ...

    def finish(self, handle: object) -> list[tuple[int, np.ndarray | None]]:
        """A started step's (argmax, logits) per row (one row for a prefill chunk)."""
        ...


class OneSequenceSlots:
    """A `SlotEngine` over one-sequence engines (`generate.Engine`), one per slot, each with
    its own KV cache (weights and compiled code shared by whoever built them).

    Correct, not fast: a step's rows run one after another, so every row reads all the
    weights again; a batched engine reads them once per step.  Every engine is called from
    the thread that steps the scheduler."""

    def __init__(self, engines: Iterable[Engine], vocab: int):
        engines = list(engines)
        if not engines:
            raise CkeError("a slot engine needs at least one engine (one per slot)")
        contexts = {e.context for e in engines}
        chunks = {e.max_prefill for e in engines}
        if len(contexts) > 1 or len(chunks) > 1:
            raise CkeError(
                f"the slots' engines differ: contexts {sorted(contexts)}, "
                f"prefill chunks {sorted(chunks)} (build them from one program)"
            )
        self.engines = engines
        self.slots = len(self.engines)
        self.context = contexts.pop()
        self.max_prefill = chunks.pop()
        self.vocab = vocab

    def prefill(self, slot: int, ids: np.ndarray, pos: int) -> tuple[int, np.ndarray]:
        engine = self.engines[slot]
        if pos == 0:
            engine.reset()  # a new sequence, as generate starts one
        return engine.prefill(np.asarray(ids, np.int32), pos)

    def decode(self, rows: list[tuple[int, int, int]]) -> list[tuple[int, np.ndarray]]:
        return [self.engines[slot].decode(token, pos) for slot, token, pos in rows]

    def release(self, slot: int) -> None:
        self.engines[slot].reset()

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


# The choice of a sequence's next id from its row's (argmax, logits): greedy takes the argmax.
# Sampling plugs in here: a scheduler's `pick` serves every request, a request's own `pick`
# (`submit(pick=)`, holding that request's options and random state) overrides it.
Pick = Callable[["Sequence", int, np.ndarray], int]


def greedy(seq: Sequence, argmax: int, logits: np.ndarray) -> int:
    return argmax


def check_batched_request(ids, max_new_tokens: int, vocab: int, context: int) -> list[int]:
    """The prompt as a list of ids, refused as `generate.check_request` refuses it, except
    that prompt + max_new_tokens may exceed the context: a batched sequence ends with
    "length" when it fills its slot.  The prompt and its first new token must fit."""
    prompt = check_request(ids, max_new_tokens, vocab, context=_ANY_LENGTH)
    return check_request(prompt, min(max_new_tokens, 1), vocab, context)


def check_prompts(prompts: Iterable, check: Callable[[object], list[int]]) -> list[list[int]]:
    """Every prompt through `check` (a request check such as `check_batched_request`), its
    error naming the prompt: "prompt 3: token id 99999 is not in the model's vocabulary"."""
    out = []
    for i, ids in enumerate(prompts):
        try:
            out.append(check(ids))
        except CkeError as e:
            raise CkeError(f"prompt {i}: {e.message}", hint=e.hint) from None
    return out


def _ids(ids, what: str, vocab: int) -> tuple[int, ...]:
    """A list of token ids from a request's options (an EOS set, a stop sequence)."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise CkeError(f"{what} is a list of token ids, not {shown(ids)}")
    ids = list(ids)
    return tuple(check_request(ids, 0, vocab, context=_ANY_LENGTH)) if ids else ()


def _check_stop(stop, vocab: int) -> tuple[tuple[int, ...], ...]:
    if isinstance(stop, str | bytes) or not isinstance(stop, Iterable):
        raise CkeError(f"stop is a list of token id sequences, not {shown(stop)}")
    out = tuple(_ids(s, "a stop sequence", vocab) for s in stop)
    if () in out:
        raise CkeError("a stop sequence is empty: give at least one token id")
    return out


class Sequence:
    """One request: its prompt, the ids generated so far (`tokens`), and how it ended
    (`finish_reason`: "length", "stop" for an EOS id or a stop sequence, "cancelled" or
    "error" with `error`).  Iterate over it to stream its ids as they come; any number of
    readers, each from the first id."""

    def __init__(self, scheduler: Scheduler, rid: int, max_new_tokens, on_token, on_done):
        self.id = rid
        self.prompt: list[int] = []
        self.max_new_tokens = max_new_tokens
        self.eos: frozenset[int] = frozenset()
        self.stop: tuple[tuple[int, ...], ...] = ()
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.stopped_by: tuple[int, ...] | None = None  # the EOS id or stop sequence matched
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._scheduler = scheduler
        self._on_token, self._on_done = on_token, on_done
        self._changed = threading.Condition()
        # the scheduler's bookkeeping (its stepping thread's)
        self.slot: int | None = None
        self.prefilled = 0  # prompt ids in the slot's cache
        self.started = False  # the engine was given this sequence's first chunk
        self.in_flight = False  # in a step the engine has not finished (its slot is busy)
        self.cancel_requested = False
        self.pick: Pick = greedy  # chooses the next id (the request's, else the scheduler's)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """End this sequence ("cancelled"): at once if it waits for a slot, at the next step
        boundary at the latest if it runs; its slot is freed then.  No-op once done."""
        self._scheduler._cancel(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the sequence is done (or `timeout` seconds); whether it is done."""
        with self._changed:
            return self._changed.wait_for(lambda: self.done, timeout)

    def result(self, timeout: float | None = None) -> list[int]:
        """The generated ids once done; raises the sequence's error if it failed."""
        if not self.wait(timeout):
            raise TimeoutError(f"request {self.id} is not done after {timeout} s")
        if self.error is not None:
            raise self.error
        return list(self.tokens)

    def __iter__(self) -> Iterator[int]:
        """The ids as they are generated; raises the sequence's error at the end if it
        failed."""
        i = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda i=i: len(self.tokens) > i or self.done)
                new, over = self.tokens[i:], self.done
            yield from new
            i += len(new)
            if over and i == len(self.tokens):
                break
        if self.error is not None:
            raise self.error

    def __repr__(self) -> str:
        state = self.finish_reason or ("waiting" if self.slot is None else f"slot {self.slot}")
        return f"<Sequence {self.id}: {len(self.prompt)} + {len(self.tokens)} ids, {state}>"

    # -- the scheduler's side ----------------------------------------------------------------
    def _append(self, token: int) -> None:
        with self._changed:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self.tokens.append(token)
            self._changed.notify_all()
        if self._on_token is not None:
            self._on_token(token)

    def _finish(self, reason: str, error: BaseException | None = None) -> bool:
        """End the sequence, once: whether this call ended it (`_announce` tells on_done)."""
        with self._changed:
            if self.done:
                return False
            self.error = error
            self.finished_at = time.monotonic()
            self.finish_reason = reason
            self._changed.notify_all()
        return True

    def _announce(self) -> None:
        if self._on_done is not None:
            try:
                self._on_done(self)
            except Exception as e:  # noqa: BLE001 - the sequence is over; say so, carry on
                warnings.warn(f"on_done of request {self.id} raised {e!r}", stacklevel=2)

    def _why_over(self, context: int) -> str | None:
        """After a new id: the reason this sequence ends, or None if it goes on."""
        last = self.tokens[-1]
        if last in self.eos:
            self.stopped_by = (last,)
            return "stop"
        for s in self.stop:
            if tuple(self.tokens[-len(s) :]) == s:
                self.stopped_by = s
                return "stop"
        if (
            len(self.tokens) >= self.max_new_tokens
            or len(self.prompt) + len(self.tokens) >= context
        ):
            return "length"
        return None


@attrs.frozen
class SchedulerMetrics:
    """Counters for a server's /metrics (totals since the scheduler started, and gauges)."""

    requests: int  # submitted, bad ones included
    finished: dict[str, int]  # finish reason -> sequences
    prompt_tokens: int  # prompt ids prefilled
    generated_tokens: int
    slots: int
    busy_slots: int  # gauge
    queue_length: int  # gauge: requests waiting for a slot
    steps: int
    step_tokens: int  # ids computed in steps (prefill + decode rows)
    last_step_tokens: int
    step_seconds: float  # time inside steps
    decode_steps: int = 0  # engine calls that decoded rows (a step, or a step in flight)
    decode_rows: int = 0  # rows they decoded: one id of a running sequence each

    @property
    def tokens_per_step(self) -> float:
        return self.step_tokens / self.steps if self.steps else 0.0


@attrs.define
class _Plan:
    decodes: list[Sequence]
    prefills: list[tuple[Sequence, int]]  # (sequence, ids in this chunk)

    @property
    def tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.prefills)


@attrs.define
class _Flight:
    """A step started on a pipelined engine: its plan and the engine's handles."""

    plan: _Plan
    decode: object | None  # the decode rows' handle
    prefills: list[tuple[Sequence, int, object]]  # (sequence, ids in the chunk, handle)
    seconds: float = 0.0  # spent starting it (and finishing it, once finished)

    @property
    def sequences(self) -> list[Sequence]:
        return self.plan.decodes + [seq for seq, _ in self.plan.prefills]


def _wants_logits(seqs: Iterable[Sequence]) -> bool:
    """Whether a step's rows need their logits: a pick other than greedy reads them."""
    return any(seq.pick is not greedy for seq in seqs)


class Scheduler:
    """Keeps a `SlotEngine`'s slots full: `submit` from any thread, `step` (or `run`, or
    the background thread of `start`) to make progress.  One scheduler per engine.

    `token_budget` bounds the ids computed in one step: every running sequence's decode
    row, then whole prefill chunks of the prompts being read, oldest request first, while
    they fit; one chunk always runs when a prompt waits for it, so decodes never starve a
    prompt (that step may exceed the budget by the chunk).  `pick` chooses each next id
    (greedy: the engine's argmax).

    On a `PipelinedSlotEngine` of depth P, up to P steps are in flight, each on its own
    sequences: a step takes its share of the sequences that are in no step (the oldest
    first, split evenly over the steps that may still start), and `step` starts one or
    finishes the oldest.  A sequence's slot is released only once no step holds it."""

    def __init__(
        self, engine: SlotEngine, *, token_budget: int = PREFILL_CHUNK, pick: Pick = greedy
    ):
        if token_budget < 1:
            raise CkeError(f"the per-step token budget must be at least 1, not {token_budget}")
        self.engine = engine
        self.token_budget = token_budget
        self.pick = pick
        self._lock = threading.Condition()  # waiting, running, free slots, counters
        self._step_lock = threading.Lock()  # one step at a time
        self._stepper: int | None = None  # the thread inside a step
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # in admission order
        self._free = list(range(engine.slots))
        self._next_id = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._counts = dict.fromkeys(
            ("requests", "prompt_tokens", "generated_tokens", "steps", "step_tokens"), 0
        )
        self._counts["last_step_tokens"] = 0
        self._counts["decode_steps"] = self._counts["decode_rows"] = 0
        self._step_seconds = 0.0
        self._finished = dict.fromkeys(FINISH_REASONS, 0)
        # a PipelinedSlotEngine's steps go through start/finish, even one at a time: the
        # rows' logits are asked for only when a pick reads them
        self._pipelined = all(
            hasattr(engine, a) for a in ("start_decode", "start_prefill", "finish")
        )
        self.depth = max(1, int(getattr(engine, "depth", 1))) if self._pipelined else 1
        self._flights: deque[_Flight] = deque()  # started, not finished, oldest first

    # -- requests ----------------------------------------------------------------------------
    def submit(
        self,
        ids,
        max_new_tokens: int,
        *,
        eos: Iterable[int] = (),
        stop: Iterable[Iterable[int]] = (),
        on_token: Callable[[int], None] | None = None,
        on_done: Callable[[Sequence], None] | None = None,
        pick: Pick | None = None,
    ) -> Sequence:
        """Queue a request; returns its `Sequence` at once.  A bad request (empty prompt,
        ids outside the vocabulary, a prompt that leaves no room in the context, a bad
        count, eos or stop) comes back already finished with reason "error" and a
        `CkeError`; nothing else notices.  `on_token(id)` and `on_done(seq)` are called from
        the stepping thread; an exception from `on_token` fails its sequence.  `pick`
        chooses this request's ids instead of the scheduler's `pick`."""
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._counts["requests"] += 1
        seq = Sequence(self, rid, max_new_tokens, on_token, on_done)
        seq.pick = pick or self.pick
        e = self.engine
        try:
            seq.prompt = check_batched_request(ids, max_new_tokens, e.vocab, e.context)
            seq.eos = frozenset(_ids(eos, "eos", e.vocab))
            seq.stop = _check_stop(stop, e.vocab)
        except CkeError as err:
            self._retire(seq, "error", err)
            return seq
        with self._lock:
            if self._closed:
                error = CkeError("the scheduler is stopped: it takes no more requests")
            elif max_new_tokens == 0:
                error = None
            else:
                self._waiting.append(seq)
                self._lock.notify_all()
                return seq
        self._retire(seq, "error" if error else "length", error)
        return seq

    def _cancel(self, seq: Sequence) -> None:
        with self._lock:
            if seq.done:
                return
            seq.cancel_requested = True
            queued = seq.slot is None and seq in self._waiting
            if queued:
                self._waiting.remove(seq)
        if queued:
            self._retire(seq, "cancelled")

    def _retire(self, seq: Sequence, reason: str, error: BaseException | None = None) -> None:
        """Finish `seq` (its slot, if any, is freed by the step that retires it)."""
        with self._lock:  # counted as its waiters wake: the metrics they read include it
            ended = seq._finish(reason, error)
            self._finished[reason] += ended
        if ended:
            seq._announce()

    # -- steps -------------------------------------------------------------------------------
    def step(self) -> bool:
        """One iteration: retire cancelled sequences, admit waiting ones into free slots,
        run one decode row per running sequence and prefill chunks under the budget, retire
        what finished.  Whether there was anything to run."""
        with self._step_lock:
            self._stepper = threading.get_ident()
            try:
                return self._step()
            finally:
                self._stepper = None

    def _step(self) -> bool:
        if self._pipelined:
            return self._step_pipelined()
        self._release_over()
        running = self._admit()
        if not running:
            return False
        t0 = time.perf_counter()
        plan = self._plan(running)
        self._run_decodes(plan.decodes)
        for seq, n in plan.prefills:
            self._run_prefill(seq, n)
        self._release_over()
        self._count_step(plan.tokens, time.perf_counter() - t0)
        return True

    def _count_step(self, tokens: int, seconds: float) -> None:
        with self._lock:
            self._counts["steps"] += 1
            self._counts["step_tokens"] += tokens
            self._counts["last_step_tokens"] = tokens
            self._step_seconds += seconds

    def run(self) -> None:
        """Step until no request waits or runs."""
        while self.step():
            pass

    def _admit(self) -> list[Sequence]:
        with self._lock:
            while self._free and self._waiting:
                seq = self._waiting.popleft()
                seq.slot = self._free.pop(0)
                self._running.append(seq)
            return list(self._running)

    def _release_over(self) -> None:
        """Free the slots of sequences that are done or asked to stop.  One asked to stop
        is counted "cancelled" as its slot is freed, under one lock: the metrics never
        show it both finished and holding its slot."""
        with self._lock:
            over = [s for s in self._running if (s.done or s.cancel_requested) and not s.in_flight]
        for seq in over:
            try:
                if seq.started:  # a slot never given the sequence has nothing to release
                    self.engine.release(seq.slot)
            except Exception as e:  # noqa: BLE001 - the slot stays usable; report it
                warnings.warn(f"releasing slot {seq.slot} raised {e!r}", stacklevel=2)
            with self._lock:
                self._running.remove(seq)
                self._free.append(seq.slot)
                self._free.sort()
                ended = seq._finish("cancelled")  # False for the finished ones
                self._finished["cancelled"] += ended
            if ended:
                seq._announce()

    def _plan(self, running: list[Sequence]) -> _Plan:
        reading = [s for s in running if s.prefilled < len(s.prompt)]
        plan = _Plan([s for s in running if s.prefilled == len(s.prompt)], [])
        room = self.token_budget - len(plan.decodes)
        for seq in reading:
            n = min(self.engine.max_prefill, len(seq.prompt) - seq.prefilled)
            if n > room and plan.prefills:
                break
            plan.prefills.append((seq, n))
            room -= n
        return plan

    def _run_decodes(self, seqs: list[Sequence]) -> None:
        if not seqs:
            return
        rows = [(s.slot, s.tokens[-1], len(s.prompt) + len(s.tokens) - 1) for s in seqs]
        self._count_decode(len(rows))
        try:
            out = self.engine.decode(rows)
            if len(out) != len(rows):
                raise CkeError(f"the engine answered {len(out)} rows of a {len(rows)}-row step")
        except Exception as e:  # noqa: BLE001 - fails this step's sequences, not the scheduler
            for seq in seqs:
                self._retire(seq, "error", e)
            return
        for seq, (argmax, logits) in zip(seqs, out, strict=True):
            self._take(seq, argmax, logits)

    def _count_decode(self, rows: int) -> None:
        with self._lock:
            self._counts["decode_steps"] += 1
            self._counts["decode_rows"] += rows

    def _run_prefill(self, seq: Sequence, n: int) -> None:
        start = seq.prefilled
        chunk = np.asarray(seq.prompt[start : start + n], np.int32)
        seq.started = True
        try:
            argmax, logits = self.engine.prefill(seq.slot, chunk, start)
        except Exception as e:  # noqa: BLE001 - fails this sequence only
            self._retire(seq, "error", e)
            return
        self._prefilled(seq, n, argmax, logits)

    def _prefilled(self, seq: Sequence, n: int, argmax: int, logits) -> None:
        """A prefill chunk of n ids is in `seq`'s slot: its last row gives the first id."""
        seq.prefilled += n
        with self._lock:
            self._counts["prompt_tokens"] += n
        if seq.prefilled == len(seq.prompt):
            self._take(seq, argmax, logits)

    # -- steps in flight (a PipelinedSlotEngine) --------------------------------------------
    def _step_pipelined(self) -> bool:
        """Start a step on sequences that are in none while fewer than `depth` fly; else
        finish the oldest.  Whether there was anything to do."""
        self._release_over()
        running = self._admit()
        ready = [s for s in running if not (s.in_flight or s.done or s.cancel_requested)]
        if ready and len(self._flights) < self.depth:
            share = -(-len(ready) // (self.depth - len(self._flights)))
            self._start_flight(self._plan(ready[:share]))
            return True
        if self._flights:
            self._finish_flight(self._flights.popleft())
            self._release_over()
            return True
        return False

    def _start_flight(self, plan: _Plan) -> None:
        t0 = time.perf_counter()
        flight = _Flight(plan, None, [])
        for seq in flight.sequences:
            seq.in_flight = True
        if plan.decodes:
            rows = [(s.slot, s.tokens[-1], len(s.prompt) + len(s.tokens) - 1) for s in plan.decodes]
            self._count_decode(len(rows))
            try:
                flight.decode = self.engine.start_decode(rows, _wants_logits(plan.decodes))
            except Exception as e:  # noqa: BLE001 - fails this step's sequences
                for seq in plan.decodes:
                    self._retire(seq, "error", e)
        for seq, n in plan.prefills:
            start = seq.prefilled
            chunk = np.asarray(seq.prompt[start : start + n], np.int32)
            seq.started = True
            try:
                handle = self.engine.start_prefill(seq.slot, chunk, start, _wants_logits([seq]))
            except Exception as e:  # noqa: BLE001 - fails this sequence only
                self._retire(seq, "error", e)
                continue
            flight.prefills.append((seq, n, handle))
        flight.seconds = time.perf_counter() - t0
        self._flights.append(flight)

    def _finish_flight(self, flight: _Flight) -> None:
        t0 = time.perf_counter()
        decodes = flight.plan.decodes
        if flight.decode is not None:
            try:
                out = self.engine.finish(flight.decode)
                if len(out) != len(decodes):
                    raise CkeError(
                        f"the engine answered {len(out)} rows of a {len(decodes)}-row step"
                    )
            except Exception as e:  # noqa: BLE001 - fails this step's sequences
                for seq in decodes:
                    self._retire(seq, "error", e)
            else:
                for seq, (argmax, logits) in zip(decodes, out, strict=True):
                    self._take(seq, argmax, logits)
        for seq, n, handle in flight.prefills:
            try:
                ((argmax, logits),) = self.engine.finish(handle)
            except Exception as e:  # noqa: BLE001 - fails this sequence only
                self._retire(seq, "error", e)
                continue
            self._prefilled(seq, n, argmax, logits)
        for seq in flight.sequences:
            seq.in_flight = False
        self._count_step(flight.plan.tokens, flight.seconds + time.perf_counter() - t0)

    def _drain_flights(self) -> None:
        """Finish every step in flight (their sequences take their last results)."""
        while self._flights:
            self._finish_flight(self._flights.popleft())

    def _take(self, seq: Sequence, argmax: int, logits: np.ndarray) -> None:
        """A row's result for `seq`: its next id, streamed, and the end if it is one."""
        if seq.cancel_requested:
            return  # retired at the step's end
        try:
            token = int(seq.pick(seq, argmax, logits))
            with self._lock:
                self._counts["generated_tokens"] += 1
            seq._append(token)
        except Exception as e:  # noqa: BLE001 - a failing pick or listener fails its sequence
            self._retire(seq, "error", e)
            return
        reason = seq._why_over(self.engine.context)
        if reason is not None:
            self._retire(seq, reason)

    # -- the background thread ---------------------------------------------------------------
    def start(self) -> Scheduler:
        """Step on a background thread whenever there is work, until `stop`."""
        with self._lock:
            if self._thread is not None:
                raise CkeError("the scheduler's thread is already running")
            if self._closed:
                raise CkeError("the scheduler is stopped")
            self._thread = threading.Thread(target=self._loop, name="ckeir-scheduler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or self._waiting or self._running)
                if self._closed:
                    return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a scheduler fault fails what runs, not the thread
                with self._lock:
                    running = list(self._running)
                for seq in running:
                    self._retire(seq, "error", e)
                    seq.in_flight = False  # the engine's steps in flight are given up
                self._flights.clear()
                self._release_over()

    def stop(self, timeout: float | None = None) -> None:
        """Stop cleanly: the step under way ends, the background thread (if any) leaves,
        every unfinished sequence ends "cancelled" and later requests are refused."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            thread, waiting = self._thread, list(self._waiting)
            self._waiting.clear()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        for seq in waiting:
            self._retire(seq, "cancelled")
        with self._lock:
            for seq in self._running:
                seq.cancel_requested = True
        if self._stepper == threading.get_ident():
            return  # called back from inside a step: the step's end frees the slots
        with self._step_lock:
            try:
                self._drain_flights()
            finally:
                self._release_over()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def generate_many(self, prompts: Iterable, max_new_tokens: int = 16, **options):
        """One id list per prompt, each what `generate` gives that prompt alone (one whose
        continuation would pass the context stops there).  Every prompt is checked before
        any is submitted; an engine failure raises the first failed prompt's error.  Steps
        here unless the background thread does.  `options`: see `submit`."""
        e = self.engine
        prompts = check_prompts(
            prompts, lambda ids: check_batched_request(ids, max_new_tokens, e.vocab, e.context)
        )
        seqs = [self.submit(ids, max_new_tokens, **options) for ids in prompts]
        if self._thread is None:
            self.run()
        return [seq.result() for seq in seqs]

    # -- counters ----------------------------------------------------------------------------
    def metrics(self) -> SchedulerMetrics:
        with self._lock:
            c = self._counts
            return SchedulerMetrics(
                requests=c["requests"],
                finished=dict(self._finished),
                prompt_tokens=c["prompt_tokens"],
                generated_tokens=c["generated_tokens"],
                slots=self.engine.slots,
                busy_slots=len(self._running),
                queue_length=len(self._waiting),
                steps=c["steps"],
                step_tokens=c["step_tokens"],
                last_step_tokens=c["last_step_tokens"],
                step_seconds=self._step_seconds,
                decode_steps=c["decode_steps"],
                decode_rows=c["decode_rows"],
            )


def generate_many(
    engine: SlotEngine,
    prompts: Iterable,
    max_new_tokens: int = 16,
    *,
    token_budget: int = PREFILL_CHUNK,
    **options,
) -> list[list[int]]:
    """Greedy continuations of several prompts over a `SlotEngine` no scheduler drives yet
    (else see `Scheduler.generate_many`): one id list per prompt, each what `generate`
    gives that prompt alone."""
    with Scheduler(engine, token_budget=token_budget) as scheduler:
        return scheduler.generate_many(prompts, max_new_tokens, **options)
