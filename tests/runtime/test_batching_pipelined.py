"""The continuous-batching scheduler over a fake pipelined slot engine (`depth` steps in
flight, finished in the order they started): several steps fly at once, each on sequences of
its own, and every guarantee of the one-step scheduler holds (each request's ids what it gets
alone, a failure stays with its step, cancel and stop free slots only once no step holds
them)."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_batching import FakeSlots, alone

from ckeir.errors import CkeError
from ckeir.runtime.batching import Scheduler, generate_many


class FakePipeline(FakeSlots):
    """`FakeSlots` as a `PipelinedSlotEngine`: a step computes when it starts, its results
    wait for `finish`.  `violations` also lists a slot in two steps in flight, a step
    finished out of order, a release of a slot a step holds; `most_in_flight` and `overlapped` (steps started while another flew) tell what
    the scheduler did."""

    def __init__(self, depth=2, **options):
        super().__init__(**options)
        self.depth = depth
        self.flying: deque[tuple[int, set[int], list]] = deque()
        self.most_in_flight = self.overlapped = 0
        self.logits_asked: list[bool] = []
        self._n = 0

    def _start(self, slots: set[int], compute, logits: bool):
        busy = set().union(*(f[1] for f in self.flying))
        if busy & slots:
            self.violations.append(f"slots {sorted(busy & slots)} in two steps in flight")
        self.overlapped += bool(self.flying)
        self._n += 1
        entry = (self._n, slots, [])
        self.flying.append(entry)
        self.most_in_flight = max(self.most_in_flight, len(self.flying))
        self.logits_asked.append(logits)
        try:
            entry[2].extend(compute())
        except Exception:
            self.flying.pop()
            raise
        if not logits:
            entry[2][:] = [(t, None) for t, _ in entry[2]]
        return entry[0]

    def start_decode(self, rows, logits=False):
        return self._start({r[0] for r in rows}, lambda: self.decode(rows), logits)

    def start_prefill(self, slot, ids, pos, logits=False):
        return self._start({slot}, lambda: [self.prefill(slot, ids, pos)], logits)

    def finish(self, handle):
        n, _slots, out = self.flying.popleft()
        if n != handle:
            self.violations.append(f"step {handle} finished before step {n}")
        return out

    def release(self, slot):
        if any(slot in f[1] for f in self.flying):
            self.violations.append(f"slot {slot} released while a step holds it")
        super().release(slot)


def test_four_sequences_fly_as_two_steps_of_two_rows_each_and_get_what_they_get_alone():
    eng = FakePipeline(depth=2, slots=4, context=40)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]
    got = generate_many(eng, prompts, max_new_tokens=6)
    assert got == [alone(p, 6, eng.vocab, eng.context)[0] for p in prompts]
    assert not eng.violations
    assert eng.most_in_flight >= 2 and eng.overlapped > 5
    decodes = [len(c[1]) for c in eng.calls if c[0] == "decode"]
    assert decodes and max(decodes) == 2  # each step takes half the sequences
    assert not any(eng.logits_asked)  # greedy: no logits travel


def test_one_sequence_never_flies_twice():
    eng = FakePipeline(depth=3, slots=4)
    assert generate_many(eng, [[1, 2]], 5) == [alone([1, 2], 5, eng.vocab, eng.context)[0]]
    assert eng.most_in_flight == 1 and eng.overlapped == 0 and not eng.violations


def test_a_pick_that_reads_logits_gets_them_and_greedy_rows_do_not_ask():
    eng = FakePipeline(depth=2, slots=2, context=40)
    s = Scheduler(eng)
    seen = []

    def sampled(seq, argmax, logits):
        seen.append(logits is not None and int(logits.argmax()) == argmax)
        return argmax

    mine = s.submit([1, 2, 3], 4, pick=sampled)
    other = s.submit([4, 5], 4)
    s.run()
    assert seen == [True] * 4
    assert mine.result() == alone([1, 2, 3], 4, eng.vocab, 40)[0]
    assert other.result() == alone([4, 5], 4, eng.vocab, 40)[0]
    assert True in eng.logits_asked and False in eng.logits_asked


def test_a_failing_step_fails_its_sequences_and_the_others_fly_on():
    eng = FakePipeline(depth=2, slots=4, context=40, fail=(29,))
    s = Scheduler(eng)
    bad = s.submit([1, 29], 4)
    good = [s.submit(p, 6) for p in ([3, 4], [5], [6, 7, 8])]
    s.run()
    assert bad.finish_reason == "error" and "engine failure" in str(bad.error)
    for seq in good:
        assert seq.finish_reason == "length", seq.error
        assert seq.tokens == alone(seq.prompt, 6, eng.vocab, 40)[0]
    assert not eng.violations and eng.free == set(range(4))


def test_cancel_of_a_sequence_in_flight_frees_its_slot_once_its_step_is_finished():
    eng = FakePipeline(depth=2, slots=2, context=40)
    s = Scheduler(eng)
    a, b = s.submit([1, 2], 20), s.submit([3], 20)
    for _ in range(4):
        s.step()
    assert a.in_flight or b.in_flight
    flying = a if a.in_flight else b
    flying.cancel()
    waiting = s.submit([9, 9], 3)
    s.run()
    assert flying.finish_reason == "cancelled"
    assert waiting.result() == alone([9, 9], 3, eng.vocab, 40)[0]
    assert not eng.violations  # among them: no release of a slot a step held


def test_stop_finishes_the_steps_in_flight_and_cancels_the_rest():
    eng = FakePipeline(depth=2, slots=4, context=40)
    s = Scheduler(eng)
    seqs = [s.submit([i + 1], 30) for i in range(4)]
    for _ in range(6):
        s.step()
    assert eng.flying
    s.stop()
    assert not eng.flying and eng.free == set(range(4)) and not eng.violations
    assert all(q.finish_reason == "cancelled" for q in seqs)
    with pytest.raises(CkeError, match="stopped"):
        s.submit([1], 1).result()


def test_a_synchronous_engine_keeps_one_step_at_a_time():
    eng = FakeSlots(slots=2)
    assert Scheduler(eng).depth == 1
    assert Scheduler(FakePipeline(depth=3, slots=2)).depth == 3


def test_a_pipelined_engine_of_depth_1_still_asks_for_logits_only_when_read():
    eng = FakePipeline(depth=1, slots=2, context=40)
    assert generate_many(eng, [[1, 2], [3]], 5) == [
        alone(p, 5, eng.vocab, 40)[0] for p in ([1, 2], [3])
    ]
    assert eng.logits_asked and not any(eng.logits_asked) and not eng.violations


request = st.tuples(
    st.integers(0, 6),  # the step it arrives before
    st.lists(st.integers(0, 30), min_size=1, max_size=12),  # prompt
    st.integers(0, 9),  # max new tokens
    st.one_of(st.none(), st.integers(0, 14)),  # cancelled before that step
)


@settings(max_examples=120, deadline=None)
@given(
    depth=st.integers(2, 4),
    slots=st.integers(1, 5),
    budget=st.integers(1, 10),
    max_prefill=st.integers(1, 5),
    requests=st.lists(request, min_size=1, max_size=8),
    fail=st.sampled_from([(), (29,)]),
)
def test_pipelined_scheduling_invariants(depth, slots, budget, max_prefill, requests, fail):
    vocab, context = 31, 20
    eng = FakePipeline(
        depth, slots=slots, context=context, max_prefill=max_prefill, vocab=vocab, fail=fail
    )
    s = Scheduler(eng, token_budget=budget)
    subs = []
    for step in range(400):
        for req in requests:
            if req[0] == step:
                subs.append((s.submit(req[1], req[2]), req))
        for seq, req in subs:
            if req[3] == step:
                seq.cancel()
        if not s.step() and step > 6:
            break
    assert all(q.done for q, _ in subs) and eng.free == set(range(slots))
    assert not eng.flying and not eng.violations
    for q, (_, prompt, n, _) in subs:
        if q.finish_reason == "error" and not isinstance(q.error, RuntimeError):
            assert len(prompt) >= context  # refused at submit
            continue
        want, why = alone(prompt, n, vocab, context) if n else ([], "length")
        if q.finish_reason in ("error", "cancelled"):
            assert q.tokens == want[: len(q.tokens)]
        else:
            assert (q.tokens, q.finish_reason) == (want, why)
