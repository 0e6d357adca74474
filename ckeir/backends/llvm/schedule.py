"""How a native segment's threads share its ops: the one place that emits an op's kernel
call and the synchronization between dependent ops.

Every thread of the pool runs the segment's entry.  For each op, `Scheduler.call` emits the
kernel call for this thread's part of the op, and `Scheduler.sync` the wait that keeps a
dependent op from starting before every part of the one before it is done.

Kernels take `(i32 part, i32 parts)` in the `%tid, %nth` positions of the calling convention
(`kernels.common`) and do part `part` of `parts` of their op (`FunctionWriter.share`), so a
kernel does not know which thread runs which part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ckeir.backends.llvm import kernels as K
from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel


class Scheduler:
    """Emits one native entry's op calls and syncs.  `state` is the IR value of the
    entry's scheduling state (`K.BARRIER_STATE_BYTES` zeroed bytes the runtime gives each
    program in its `barrier` ctx slot)."""

    def __init__(self, f: FunctionWriter, state: str, kernels: dict[str, Kernel]):
        self.f, self.state, self.kernels = f, state, kernels

    def call(self, kernel: Kernel, args: list[tuple[str, str]]) -> None:
        """This thread's part of one op: `kernel(args..., part, parts)`."""
        self.kernels.setdefault(kernel.name, kernel)
        self.f.call("void", kernel.name, [*args, ("i32", "%tid"), ("i32", "%nth")])

    def sync(self) -> None:
        """Every part of the ops called so far is done before this thread goes on."""
        k = K.barrier()
        self.kernels.setdefault(k.name, k)
        self.f.call("void", k.name, [("ptr", self.state), ("i32", "%nth")])

    @contextlib.contextmanager
    def once(self) -> Iterator[None]:
        """IR emitted inside runs on one thread only (a small op with no parts)."""
        with self.f.if_(self.f("icmp eq i32 %tid, 0", "first")):
            yield
