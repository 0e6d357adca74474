"""Seeing (and reaping) the processes a run leaves behind.

A process whose parent dies is re-parented to its nearest *subreaper* ancestor, else to
PID 1 — which, in a container, may never reap it: a zombie ("defunct") for good, or a live
process nobody watches.  Inside `adopting()` this process is the subreaper: whatever the
code under test leaves behind becomes our child.  `Adoption.leftovers()` reaps the dead ones and
names the live ones (a leak: the test fails), killing them so that none outlives the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> int:
    return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


@contextlib.contextmanager
def adopting() -> Iterator[Adoption]:
    """Make this process the subreaper of its descendants for the block."""
    if not sys.platform.startswith("linux") or _prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        pytest.skip("needs Linux's PR_SET_CHILD_SUBREAPER")
    adoption = Adoption(set(children()))
    try:
        yield adoption
    finally:
        adoption.leftovers(wait=0)  # never leave an adopted process behind
        _prctl(PR_SET_CHILD_SUBREAPER, 0)


def children() -> dict[int, tuple[str, str]]:
    """This process's children: pid -> (state letter, command name)."""
    out = {}
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        if int(fields[1]) == me:
            out[int(stat.parent.name)] = (fields[0], head.partition("(")[2])
    return out


@attrs.frozen
class Adoption:
    before: set[int]  # children this process had already (e.g. multiprocessing's helpers)

    def leftovers(self, wait: float = 30.0) -> list[str]:
        """Reap every new child that has ended; give the live ones up to `wait` seconds to
        end (a kill takes a moment, longer on a busy machine: a backstop, not a bound on
        how fast they go), then kill them.  Returns 'pid (name)' of each that was still
        alive after `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            new = {p: c for p, c in children().items() if p not in self.before}
            for pid, (state, _) in new.items():
                if state in ("Z", "X"):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
            alive = {p: c for p, c in new.items() if c[0] not in ("Z", "X")}
            if not alive or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        return [f"{pid} ({name})" for pid, (_, name) in sorted(alive.items())]
