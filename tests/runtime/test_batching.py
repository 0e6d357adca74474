"""The continuous-batching scheduler over a fake slot engine whose next id is a function of
the slot's whole history: what each request gets alone is known, and the engine checks
every call against what a slot may be asked (positions in order, whole aligned chunks,
nothing past the context, a slot reused only once released)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckeir.errors import CkeError
from ckeir.runtime.batching import OneSequenceSlots, Scheduler, generate_many


def next_id(history: list[int], vocab: int) -> int:
    h = 17
    for t in history:
        h = (h * 1_000_003 + t + 1) % 2_147_483_647
    return h % vocab


def alone(prompt, max_new, vocab, context, eos=(), stop=()):
    """What one request gets on an engine of its own: (ids, finish reason)."""
    history, out = list(prompt), []
    while True:
        out.append(next_id(history, vocab))
        if out[-1] in eos or any(tuple(out[-len(s) :]) == tuple(s) for s in stop):
            return out, "stop"
        if len(out) == max_new or len(prompt) + len(out) == context:
            return out, "length"
        history.append(out[-1])


def one_hot(token: int, vocab: int) -> np.ndarray:
    logits = np.zeros(vocab, np.float32)
    logits[token] = 1.0
    return logits


class FakeSlots:
    """A `SlotEngine` keeping each slot's ids by position; `violations` lists every call a
    scheduler should never make; `steps` the calls of each step (filled by `Scheduler`'s
    caller through `new_step`); `fail` ids make a call that carries them raise."""

    def __init__(self, slots=2, context=32, max_prefill=4, vocab=97, fail=()):
        self.slots, self.context, self.max_prefill, self.vocab = slots, context, max_prefill, vocab
        self.cache = {s: [] for s in range(slots)}
        self.free = set(range(slots))  # slots that may start a sequence at position 0
        self.violations: list[str] = []
        self.calls: list[tuple] = []
        self.fail = set(fail)
        self.scheduler: Scheduler | None = None

    def _check_admission(self) -> None:
        # inside a step, no request waits while a slot is free
        if self.scheduler is not None:
            m = self.scheduler.metrics()
            if m.busy_slots < m.slots and m.queue_length:
                self.violations.append(f"{m.queue_length} waiting beside a free slot")

    def prefill(self, slot, ids, pos):
        self.calls.append(("prefill", slot, len(ids), pos))
        self._check_admission()
        ids = [int(i) for i in ids]
        if pos == 0:
            if slot not in self.free:
                self.violations.append(f"slot {slot} restarted before its release")
            self.free.discard(slot)
            self.cache[slot] = []
        cache = self.cache[slot]
        if pos != len(cache):
            self.violations.append(f"slot {slot}: prefill at {pos}, cache holds {len(cache)}")
        if not 1 <= len(ids) <= self.max_prefill or pos % self.max_prefill:
            self.violations.append(f"slot {slot}: chunk of {len(ids)} at {pos}")
        if pos + len(ids) > self.context:
            self.violations.append(f"slot {slot}: prefill past the context")
        if self.fail & set(ids):
            raise RuntimeError(f"engine failure on slot {slot}")
        cache.extend(ids)
        token = next_id(cache, self.vocab)
        return token, one_hot(token, self.vocab)

    def decode(self, rows):
        self.calls.append(("decode", tuple(rows)))
        self._check_admission()
        if len({slot for slot, _, _ in rows}) != len(rows):
            self.violations.append(f"one slot twice in a step: {rows}")
        if self.fail & {token for _, token, _ in rows}:
            raise RuntimeError("engine failure in a decode step")
        out = []
        for slot, token, pos in rows:
            cache = self.cache[slot]
            if slot in self.free or pos != len(cache) or pos >= self.context:
                self.violations.append(f"slot {slot}: decode at {pos}, cache {len(cache)}")
            cache.append(token)
            t = next_id(cache, self.vocab)
            out.append((t, one_hot(t, self.vocab)))
        return out

    def release(self, slot):
        self.calls.append(("release", slot))
        if slot in self.free:
            self.violations.append(f"slot {slot} released twice")
        self.free.add(slot)


def scheduler_over(engine: FakeSlots, **options) -> Scheduler:
    engine.scheduler = Scheduler(engine, **options)
    return engine.scheduler


# -- the results --------------------------------------------------------------------------------


def test_more_prompts_than_slots_each_get_what_they_get_alone():
    eng = FakeSlots(slots=2, context=40, max_prefill=4)
    prompts = [[1, 2, 3], list(range(10, 21)), [5], list(range(30, 39)), [7, 7]]
    got = generate_many(eng, prompts, max_new_tokens=6)
    assert got == [alone(p, 6, eng.vocab, eng.context)[0] for p in prompts]
    assert not eng.violations
    # five sequences went through two slots, each released once it was done
    assert sum(c[0] == "release" for c in eng.calls) == 5
    # the 11-id prompt was read in slot 1 as generate reads it: 4 ids at 0, 4 at 4, 3 at 8
    chunks = [c[2:] for c in eng.calls if c[0] == "prefill" and c[1] == 1][:3]
    assert chunks == [(4, 0), (4, 4), (3, 8)]


def test_a_requests_own_pick_chooses_its_ids_and_no_other_requests():
    eng = FakeSlots(slots=2, context=40)
    seen = []

    def plus_one(seq, argmax, logits):  # a request's own choice, told which request it serves
        seen.append(seq.id)
        return (argmax + 1) % eng.vocab

    s = scheduler_over(eng)
    mine = s.submit([1, 2, 3], 5, pick=plus_one)
    other = s.submit([4, 5], 5)
    s.run()
    history, want = [1, 2, 3], []
    for _ in range(5):
        want.append((next_id(history, eng.vocab) + 1) % eng.vocab)
        history.append(want[-1])
    assert mine.result() == want
    assert other.result() == alone([4, 5], 5, eng.vocab, eng.context)[0]
    assert set(seen) == {mine.id} and len(seen) == 5
    assert not eng.violations


def test_decodes_of_several_sequences_share_one_step():
    eng = FakeSlots(slots=3)
    generate_many(eng, [[1], [2], [3]], max_new_tokens=4)
    decodes = [c[1] for c in eng.calls if c[0] == "decode"]
    assert [len(rows) for rows in decodes] == [3, 3, 3]


def test_a_sequence_that_fills_its_slot_ends_with_length_and_writes_nothing_past_it():
    eng = FakeSlots(slots=2, context=12, max_prefill=4)
    s = scheduler_over(eng)
    long = s.submit(list(range(1, 10)), max_new_tokens=100)
    short = s.submit([3, 4], max_new_tokens=2)
    s.run()
    assert long.finish_reason == "length" and len(long.prompt) + len(long.tokens) == 12
    assert long.tokens == alone(long.prompt, 100, eng.vocab, 12)[0]
    assert short.finish_reason == "length" and len(short.tokens) == 2
    assert not eng.violations  # among them: no position at or past the context


def test_eos_and_stop_sequences_end_a_sequence_with_stop():
    eng = FakeSlots(slots=2, vocab=11, context=64)
    free_run, _ = alone([1, 2], 30, eng.vocab, eng.context)
    s = scheduler_over(eng)
    by_eos = s.submit([1, 2], 30, eos=[free_run[4]])
    by_stop = s.submit([1, 2], 30, stop=[[99 % 11, 98 % 11, 97 % 11], free_run[5:7]])
    s.run()
    first_eos = free_run.index(free_run[4])
    assert by_eos.finish_reason == "stop" and by_eos.tokens == free_run[: first_eos + 1]
    assert by_eos.stopped_by == (free_run[4],)
    assert by_stop.finish_reason == "stop"
    assert tuple(by_stop.tokens[-2:]) == by_stop.stopped_by == tuple(free_run[5:7])


def test_zero_new_tokens_runs_nothing():
    eng = FakeSlots()
    s = scheduler_over(eng)
    seq = s.submit([1, 2, 3], 0)
    assert seq.done and seq.finish_reason == "length" and seq.tokens == []
    assert not s.step() and eng.calls == []


def test_more_new_tokens_than_the_context_holds_stop_at_the_context():
    eng = FakeSlots(context=8)
    assert generate_many(eng, [[1, 2, 3]], 50) == [alone([1, 2, 3], 50, eng.vocab, 8)[0]]
    assert len(generate_many(eng, [[1, 2, 3]], 50)[0]) == 5


# -- bad input stays with its sequence ----------------------------------------------------------

BAD = [
    ([], 4, "the prompt is empty"),
    ([1, 97], 4, "token id 97 is not in the model's vocabulary of 97"),
    ([1, -1], 4, "token id -1"),
    (["a"], 4, "token ids are integers"),
    (list(range(1, 33)), 4, "exceed the model's context of 32"),
    (list(range(1, 40)), 0, "exceed the model's context of 32"),
    ([1, 2], -1, "max_new_tokens must be between 0"),
    ([1, 2], 2.5, "max_new_tokens must be between 0"),
]


@pytest.mark.parametrize(("ids", "n", "message"), BAD)
def test_a_bad_request_fails_alone(ids, n, message):
    eng = FakeSlots()
    s = scheduler_over(eng)
    good = s.submit([1, 2, 3], 5)
    bad = s.submit(ids, n)
    assert bad.done and bad.finish_reason == "error" and isinstance(bad.error, CkeError)
    assert message in bad.error.message
    with pytest.raises(CkeError, match="error"):
        bad.result()
    s.run()
    assert good.result() == alone([1, 2, 3], 5, eng.vocab, eng.context)[0]
    assert s.metrics().finished == {"length": 1, "stop": 0, "cancelled": 0, "error": 1}
    assert not eng.violations


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"eos": [500]}, "token id 500"),
        ({"eos": "x"}, "eos is a list of token ids"),
        ({"stop": [[]]}, "a stop sequence is empty"),
        ({"stop": [5]}, "a stop sequence is a list of token ids"),
        ({"stop": 5}, "stop is a list of token id sequences"),
    ],
)
def test_bad_options_fail_their_request(options, message):
    s = scheduler_over(FakeSlots())
    seq = s.submit([1, 2], 4, **options)
    assert seq.finish_reason == "error" and message in seq.error.message


def test_generate_many_refuses_a_bad_prompt_before_any_work():
    eng = FakeSlots()
    with pytest.raises(CkeError, match=r"prompt 1: token id 97 is not in the model's vocab"):
        generate_many(eng, [[1, 2], [3, 97]], 4)
    assert eng.calls == []


def test_an_engine_failure_fails_that_steps_sequences_and_the_scheduler_goes_on():
    eng = FakeSlots(slots=3, fail={66})
    s = scheduler_over(eng)
    doomed = s.submit([1, 66, 2], 5)  # its prefill raises
    fine = s.submit([4, 5], 5)
    s.run()
    assert doomed.finish_reason == "error" and "engine failure" in str(doomed.error)
    with pytest.raises(RuntimeError):
        doomed.result()
    assert fine.result() == alone([4, 5], 5, eng.vocab, eng.context)[0]
    # a failing decode step fails every row of it; the next requests run as ever
    eng.fail = {alone([8], 5, eng.vocab, eng.context)[0][0]}
    a, b = s.submit([8], 5), s.submit([9], 5)
    s.run()
    assert a.finish_reason == b.finish_reason == "error"
    eng.fail = set()
    again = s.submit([8], 5)
    s.run()
    assert again.result() == alone([8], 5, eng.vocab, eng.context)[0]
    assert eng.free == {0, 1, 2} and not eng.violations


def test_a_failing_listener_fails_its_sequence_only():
    eng = FakeSlots(slots=2)
    s = scheduler_over(eng)

    def boom(token):
        raise ValueError("listener")

    bad = s.submit([1], 5, on_token=boom)
    good = s.submit([2], 5)
    s.run()
    assert bad.finish_reason == "error" and isinstance(bad.error, ValueError)
    assert len(bad.tokens) == 1  # the id it was told of, then nothing
    assert good.finish_reason == "length" and len(good.tokens) == 5


# -- cancellation, streaming, threads --------------------------------------------------------


def test_cancel_frees_the_slot_at_the_next_step_and_a_waiting_one_at_once():
    eng = FakeSlots(slots=1)
    s = scheduler_over(eng)
    running, waiting, next_one = s.submit([1], 20), s.submit([2], 20), s.submit([3], 3)
    s.step()
    s.step()
    waiting.cancel()
    assert waiting.finish_reason == "cancelled" and waiting.tokens == []
    running.cancel()
    s.step()  # the boundary: the slot goes to the next request at once
    assert running.finish_reason == "cancelled"
    assert running.tokens == alone([1], 20, eng.vocab, eng.context)[0][: len(running.tokens)]
    assert ("release", 0) in eng.calls and ("prefill", 0, 1, 0) == eng.calls[-1]
    s.run()
    assert next_one.result() == alone([3], 3, eng.vocab, eng.context)[0]
    assert s.metrics().finished["cancelled"] == 2 and not eng.violations


def test_a_sequence_cancelled_by_its_listener_mid_step_leaves_its_slot_by_the_steps_end():
    eng = FakeSlots(slots=2)
    s = scheduler_over(eng)
    box = []

    def second_is_enough(token):
        if len(box[0].tokens) == 2:
            box[0].cancel()

    box.append(s.submit([1, 2], 10, on_token=second_is_enough))
    other = s.submit([3], 4)
    while not box[0].done:
        s.step()
    assert box[0].finish_reason == "cancelled" and len(box[0].tokens) == 2
    assert eng.calls[-1] == ("release", 0)  # freed by the step that saw the cancel
    s.run()
    assert other.result() == alone([3], 4, eng.vocab, eng.context)[0]


def test_stop_from_a_listener_inside_a_step_does_not_deadlock():
    eng = FakeSlots(slots=2)
    s = scheduler_over(eng)
    first = s.submit([1], 2, on_done=lambda seq: s.stop())
    second = s.submit([2], 10)
    s.run()
    assert first.finish_reason == "length" and second.finish_reason == "cancelled"
    assert eng.free == {0, 1}


def test_generate_many_on_a_scheduler_its_thread_drives():
    eng = FakeSlots(slots=2)
    with Scheduler(eng).start() as s:
        prompts = [[1], [2, 3], [4, 5, 6]]
        assert s.generate_many(prompts, 5) == [alone(p, 5, eng.vocab, 32)[0] for p in prompts]
        with pytest.raises(CkeError, match="prompt 0: the prompt is empty"):
            s.generate_many([[]], 5)


def test_streams_and_background_thread_with_requests_from_many_threads():
    eng = FakeSlots(slots=3, context=64, max_prefill=4)
    s = Scheduler(eng).start()
    prompts = [list(range(1 + i, 4 + 2 * i)) for i in range(8)]
    streamed: dict[int, list[int]] = {}
    done = []

    def client(i):
        seq = s.submit(prompts[i], 7, on_done=done.append)
        streamed[i] = list(seq)  # blocks as the ids come

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    s.stop(5)
    assert streamed == {i: alone(p, 7, eng.vocab, 64)[0] for i, p in enumerate(prompts)}
    assert len(done) == 8 and all(d.finish_reason == "length" for d in done)
    m = s.metrics()
    assert (m.requests, m.generated_tokens, m.busy_slots, m.queue_length) == (8, 56, 0, 0)
    assert m.prompt_tokens == sum(map(len, prompts)) and m.tokens_per_step > 1
    assert not eng.violations


def test_asyncio_clients_stream_through_the_callbacks():
    eng = FakeSlots(slots=2)
    prompts = [[1], [2, 3], [4, 5, 6], [7]]

    async def client(s, prompt):
        loop, ids = asyncio.get_running_loop(), asyncio.Queue()

        def put(item):
            loop.call_soon_threadsafe(ids.put_nowait, item)

        seq = s.submit(prompt, 6, on_token=put, on_done=lambda seq: put(None))
        out = []
        while (token := await ids.get()) is not None:
            out.append(token)
        return out, seq.finish_reason

    async def main():
        with Scheduler(eng).start() as s:
            return await asyncio.gather(*(client(s, p) for p in prompts))

    got = asyncio.run(main())
    assert got == [(alone(p, 6, eng.vocab, 32)[0], "length") for p in prompts]


def test_submits_and_cancels_racing_the_background_thread():
    eng = FakeSlots(slots=3, context=48, max_prefill=3)
    s = Scheduler(eng, token_budget=5).start()
    seqs: list = []

    def client(k):
        rng = np.random.default_rng(k)
        for _ in range(15):
            seq = s.submit(rng.integers(0, 97, rng.integers(1, 12)).tolist(), 6)
            seqs.append(seq)
            if rng.random() < 0.4:
                seq.cancel()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(q.wait(10) for q in seqs)
    s.stop(5)
    assert not eng.violations and eng.free == {0, 1, 2}
    for q in seqs:
        want = alone(q.prompt, 6, eng.vocab, 48)[0]
        assert q.tokens == (want if q.finish_reason == "length" else want[: len(q.tokens)])
    m = s.metrics()
    assert m.requests == 60 and sum(m.finished.values()) == 60
    assert m.finished["length"] + m.finished["cancelled"] == 60


def test_stop_cancels_what_is_unfinished_and_refuses_new_requests():
    eng = FakeSlots(slots=1)
    s = scheduler_over(eng)
    a, b = s.submit([1], 10), s.submit([2], 10)
    s.step()
    s.stop()
    assert a.finish_reason == b.finish_reason == "cancelled"
    assert eng.free == {0}
    late = s.submit([3], 2)
    assert late.finish_reason == "error" and "stopped" in late.error.message


# -- invariants under any arrival, budget and cancellation ----------------------------------

request = st.tuples(
    st.integers(0, 6),  # the step it arrives before
    st.lists(st.integers(0, 30), min_size=1, max_size=14),  # prompt
    st.integers(0, 9),  # max new tokens
    st.sampled_from([(), (3,), (5, 7)]),  # eos
    st.one_of(st.none(), st.integers(0, 12)),  # cancelled before that step
)


@settings(max_examples=150, deadline=None)
@given(
    slots=st.integers(1, 4),
    budget=st.integers(1, 12),
    max_prefill=st.integers(1, 6),
    context=st.integers(15, 24),
    requests=st.lists(request, min_size=1, max_size=9),
    fail=st.sampled_from([(), (29,)]),  # calls that carry id 29 raise
)
def test_scheduling_invariants(slots, budget, max_prefill, context, requests, fail):
    vocab = 31
    eng = FakeSlots(slots, context, max_prefill, vocab, fail)
    s = scheduler_over(eng, token_budget=budget)
    subs = []  # (sequence, its request), in the order they were submitted
    for step in range(200):
        for req in requests:
            if req[0] == step:
                subs.append((s.submit(req[1], req[2], eos=req[3]), req))
        for seq, req in subs:
            if req[4] == step:
                seq.cancel()
        seqs = [q for q, _ in subs]
        live = [q for q in seqs if not q.done and not q.cancel_requested]
        decoding = {q.slot for q in live if q.slot is not None and q.prefilled == len(q.prompt)}
        first = len(eng.calls)
        if not s.step() and step > 6:
            break
        work = [c for c in eng.calls[first:] if c[0] != "release"]
        decoded = sum(len(c[1]) for c in work if c[0] == "decode")
        chunks = [c[2] for c in work if c[0] == "prefill"]
        # the budget: decodes and chunks, exceeded only by one chunk when decodes fill it
        assert decoded + sum(chunks) <= max(budget, decoded + (chunks[0] if chunks else 0))
        # a slot appears at most once per step
        slots_used = [c[1] for c in work if c[0] == "prefill"]
        slots_used += [r[0] for c in work if c[0] == "decode" for r in c[1]]
        assert len(slots_used) == len(set(slots_used))
        # every sequence with a token to feed got its row, and a step with live sequences
        # did some work (a prompt always gets a chunk)
        assert decoding <= {r[0] for c in work if c[0] == "decode" for r in c[1]}
        assert bool(work) == bool(live)
        # finished sequences left their slots by the step's end
        assert s.metrics().busy_slots == sum(1 for q in seqs if q.slot is not None and not q.done)
    assert all(q.done for q, _ in subs) and eng.free == set(range(slots))
    assert not eng.violations
    # first come, first served: sequences reached a slot in the order they were submitted
    started = [q.id for q, _ in subs if q.prefilled]
    assert started == sorted(started)
    for q, (_, prompt, n, eos, _) in subs:
        if q.finish_reason == "error" and not isinstance(q.error, RuntimeError):
            assert len(prompt) >= context  # refused at submit
            continue
        want, why = alone(prompt, n, vocab, context, eos) if n else ([], "length")
        if q.finish_reason == "error":  # its step failed: it, or one beside it, carried 29
            assert fail and q.tokens == want[: len(q.tokens)]
        elif q.finish_reason == "cancelled":
            assert q.tokens == want[: len(q.tokens)]
        else:
            assert (q.tokens, q.finish_reason) == (want, why)


# -- the adapter over one-sequence engines ----------------------------------------------------


class OneSeq:
    """A `generate.Engine` holding one sequence."""

    def __init__(self, context=16, max_prefill=4, vocab=97):
        self.context, self.max_prefill, self.vocab = context, max_prefill, vocab
        self.cache: list[int] = []
        self.resets = self.closed = 0

    def prefill(self, ids, pos):
        self.cache[pos:] = [int(i) for i in ids]
        t = next_id(self.cache, self.vocab)
        return t, one_hot(t, self.vocab)

    def decode(self, token, pos):
        return self.prefill([token], pos)

    def reset(self):
        self.resets += 1

    def close(self):
        self.closed += 1


def test_one_sequence_slots_gives_each_slot_its_own_engine():
    engines = [OneSeq(), OneSeq(), OneSeq()]
    slots = OneSequenceSlots(engines, vocab=97)
    assert (slots.slots, slots.context, slots.max_prefill) == (3, 16, 4)
    prompts = [[1, 2, 3, 4, 5, 6], [7], [8, 9], [10, 11, 12], [13]]
    got = generate_many(slots, prompts, 5)
    assert got == [alone(p, 5, 97, 16)[0] for p in prompts]
    assert all(e.resets >= 1 for e in engines)  # each started a sequence, as generate does
    slots.close()
    assert [e.closed for e in engines] == [1, 1, 1]


def test_one_sequence_slots_refuses_engines_of_different_shapes():
    with pytest.raises(CkeError, match="the slots' engines differ"):
        OneSequenceSlots([OneSeq(context=16), OneSeq(context=32)], vocab=97)
    with pytest.raises(CkeError, match="at least one engine"):
        OneSequenceSlots([], vocab=97)
