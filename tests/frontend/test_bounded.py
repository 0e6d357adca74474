"""`run_bounded`'s memory limit is the child's room beyond what its parent held: a pytest
process that grew (a one-process run of the whole suite reached 3.4 GB) still gives a
bounded call its 2 GiB, and a call that takes more than that is still stopped."""

from __future__ import annotations

import mmap

MEMORY = 2 << 30  # the child's room (tests/frontend/conftest.py)


def test_a_large_parent_leaves_the_child_its_room(bounded):
    held = mmap.mmap(-1, 3 << 30)  # address space the fork inherits, never touched
    try:
        out = bounded(lambda: len(bytearray(100 << 20)))
    finally:
        held.close()
    assert (out.kind, out.message) == ("ok", str(100 << 20))


def test_a_call_that_takes_more_than_its_room_is_stopped(bounded):
    out = bounded(lambda: len(bytearray(MEMORY + (256 << 20))))
    assert out.kind == "other" and out.message.startswith("MemoryError")
