"""The scheduler's metrics as a /metrics reader sees them while a cancelled sequence leaves:
its slot is still busy and it is not yet counted finished, or its slot is free and it is
counted "cancelled" — never both at once."""

from test_batching import FakeSlots, scheduler_over


def test_a_cancelled_sequence_is_counted_once_its_slot_is_free():
    eng = FakeSlots(slots=1)
    s = scheduler_over(eng)
    seen = []

    def look(when: str) -> None:
        m = s.metrics()
        seen.append((when, m.busy_slots, m.finished["cancelled"]))

    release = eng.release

    def watched_release(slot: int) -> None:
        look("release")
        release(slot)

    eng.release = watched_release
    seq = s.submit([1], 20, on_done=lambda _seq: look("done"))
    s.step()
    s.step()
    seq.cancel()
    look("asked")
    s.step()
    look("after")
    assert seq.finish_reason == "cancelled" and len(seq.tokens) == 2
    assert seen == [("asked", 1, 0), ("release", 1, 0), ("done", 0, 1), ("after", 0, 1)]
    assert not eng.violations
