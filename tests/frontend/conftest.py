"""`bounded`: run a frontend call in a forked child with a time and memory limit.

A hostile spec used to hang in C code (`Fraction(10) ** 999999999`) or read `/dev/zero`
until memory ran out; neither can be interrupted by a signal handler, so the call runs in
a child that the test kills when its time is up and that cannot take more than
`MEMORY` bytes more than its parent held.  The outcome comes back as a small picklable record.
"""

import os
import pickle
import resource
import select
import signal
import time

import attrs
import pytest

from ckeir.errors import CkeError, SourceLoc
from ckeir.frontend.parser import _lark

MEMORY = 2 << 30  # far above what parsing any spec needs: the child's room beyond its parent's


def _address_space() -> int:
    """This process's mapped bytes (VmSize): a forked child starts with all of them."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@attrs.frozen
class Outcome:
    """What a call did: returned ("ok"), raised a CkeError ("cke"), raised something else
    ("other"), ran out of time ("hang") or died ("crash")."""

    kind: str
    message: str = ""  # the error's message, or the repr of what the call returned
    loc: SourceLoc | None = None
    text: str = ""  # the error as the CLI prints it
    seconds: float = 0.0

    def where(self) -> str:
        """The located line from the caret on."""
        return self.loc.source_line[self.loc.col - 1 :]


def run_bounded(fn, *args, seconds: float = 30.0) -> Outcome:
    _lark()  # build the parser once, before forking
    start = time.monotonic()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            limit = _address_space() + MEMORY  # a pytest process that grew keeps its room
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                out = ("ok", repr(fn(*args))[:2000], None, "")
            except CkeError as err:
                out = ("cke", err.message, err.loc, err.format())
            except BaseException as err:  # noqa: BLE001  (what the test must see)
                out = ("other", f"{type(err).__name__}: {err}"[:2000], None, "")
            os.write(write_end, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], seconds)
        data = b""
        if ready:
            while chunk := os.read(read_end, 1 << 16):
                data += chunk
    finally:
        os.close(read_end)
        if not data:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    took = time.monotonic() - start
    if not data:
        return Outcome("hang" if not ready else "crash", seconds=took)
    kind, message, loc, text = pickle.loads(data)
    return Outcome(kind, message, loc, text, took)


@pytest.fixture(scope="session")
def bounded():
    return run_bounded
