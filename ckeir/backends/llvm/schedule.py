"""How a native segment's threads share its ops: the one place that emits an op's kernel
call and the synchronization between dependent ops.

Every thread of the pool runs the segment's entry.  Each op is split into parts
(`Scheduler.parts`): a few per thread for an op with much work, one for a small op.  Every
thread loops claiming the op's next part and running the kernel on it; the op is over when
every part is done, whoever did them (`kernels.sync` holds the protocol).  A thread the OS
took off its CPU delays only a part it holds: the others take the rest, and a thread that
comes back late finds the op's parts all taken and moves on.  When thread 0 returns from
the entry, every part of every op is done, so the pool's caller need not wait for the other
threads (`Pool.run(..., self_completing=True)`).

Kernels take `(i32 part, i32 parts)` in the `%tid, %nth` positions of the calling convention
(`kernels.common`) and do part `part` of `parts` of their op (`FunctionWriter.share`), so a
kernel does not know which thread runs which part: it must be correct when any thread runs
any part, in any order, several parts on one thread or parts on different threads at once.

`Scheduler(f, state, kernels)` starts the entry's run (`@cke_begin`) where it is created: it
must come before the entry reads anything from its ctx that changes between runs (the row
count, the position), so that a thread never joins a run with values read for another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ckeir.backends.llvm.kernels import sync
from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel
from ckeir.errors import BackendError

PARTS_PER_THREAD = (
    4  # parts of a large op per thread: a late thread holds up a quarter of its share
)
ROWS_PER_PART = 4  # a row-wise op (norm, rope, add, ...) gets a part per this many rows
# Kernels whose work does not shrink with the rows of the call (weights or keys are
# streamed for any row count): always PARTS_PER_THREAD parts per thread.
STREAMING = ("matmul_", "qmatmul_", "attention_f32_", "attention_parts_")
# Kernels whose every part quantizes the call's activations (int8 dot products).
QUANTIZING = ("qmatmul_",)
# Kernels that do all their work in part 0.
WHOLE = ("argmax_",)


class Scheduler:
    """Emits one native entry's op calls and syncs.  `state` is the IR value of the
    entry's scheduling state (`K.BARRIER_STATE_BYTES` zeroed bytes the runtime gives each
    program in its `barrier` ctx slot)."""

    def __init__(self, f: FunctionWriter, state: str, kernels: dict[str, Kernel]):
        self.f, self.state, self.kernels = f, state, kernels
        for k in sync.protocol():
            kernels.setdefault(k.name, k)
        self.ops = 0
        tag = sync.entry_id(f.name)
        # -1 when this thread's job is over (thread 0 did it): every claim and wait of the
        # entry then returns at once
        self.run = f.call(
            "i64",
            sync.BEGIN,
            [("ptr", state), ("i32", "%tid"), ("i32", str(tag)), ("i32", "%nth")],
        )

    def call(self, kernel: Kernel, args: list[tuple[str, str]], parts: str | None = None) -> None:
        """One op: this thread claims parts of it and runs `kernel(args..., part, parts)`
        on each until none is left, then waits until every part is done.  `parts` (an i32
        value) overrides `Scheduler.parts`."""
        self.kernels.setdefault(kernel.name, kernel)
        f = self.f
        seq, parts = self._next_op(), parts or self.parts(kernel, args)
        solo, head, body, out, over = (
            f.label(x) for x in ("solo", "claim", "part", "claimed", "over")
        )
        f.cbr(f("icmp eq i32 %nth, 1", "alone"), solo, head)
        f.start(solo)  # one thread: the whole op in one part, nobody to share with
        f.call("void", kernel.name, [*args, ("i32", "0"), ("i32", "1")])
        f.br(over)
        f.start(head)
        part = f.call("i32", sync.CLAIM, [("ptr", self.state), ("i64", seq), ("i32", parts)])
        f.cbr(f(f"icmp slt i32 {part}, 0"), out, body)
        f.start(body)
        f.call("void", kernel.name, [*args, ("i32", part), ("i32", parts)])
        f.call("void", sync.DONE, [("ptr", self.state), ("i32", parts)])
        f.br(head)
        f.start(out)
        self._wait(seq, parts)
        f.br(over)
        f.start(over)

    def sync(self) -> None:
        """Every part of the ops called so far is done before this thread goes on: `call`
        and `once` return only then, so there is nothing left to wait for."""

    @contextlib.contextmanager
    def once(self) -> Iterator[None]:
        """IR emitted inside runs on one thread only (a small op of one part)."""
        f = self.f
        seq = self._next_op()
        labels = ("solo", "claim", "once", "count", "wait", "over")
        solo, head, body, count, wait, out = (f.label(x) for x in labels)
        alone = f("icmp eq i32 %nth, 1", "alone")
        f.cbr(alone, solo, head)
        f.start(head)
        part = f.call("i32", sync.CLAIM, [("ptr", self.state), ("i64", seq), ("i32", "1")])
        f.cbr(f(f"icmp sge i32 {part}, 0", "first"), body, wait)
        f.start(solo)  # one thread: nothing to claim, nobody to tell
        f.br(body)
        f.start(body)
        yield
        f.cbr(alone, out, count)
        f.start(count)
        f.call("void", sync.DONE, [("ptr", self.state), ("i32", "1")])
        f.br(wait)
        f.start(wait)
        self._wait(seq, "1")
        f.br(out)
        f.start(out)

    def parts(self, kernel: Kernel, args: list[tuple[str, str]]) -> str:
        """How many parts the op is split into (an i32 value): PARTS_PER_THREAD per thread
        for a kernel that streams weights or keys, one per ROWS_PER_PART rows (at most as
        many) for a row-wise one, one for a kernel that works in part 0 alone.  The row
        count is the calling convention's `%n` argument (the second to last)."""
        f = self.f
        if kernel.name.startswith(WHOLE):
            return "1"
        most = f.mul(f.i64("%nth"), PARTS_PER_THREAD)
        if kernel.name.startswith(QUANTIZING):
            # every part quantizes all the call's activation rows: with several rows that
            # work would repeat in each part, so such a call gets one part per thread
            one_row = f(f"icmp sle i64 {args[-2][1]}, 1", "one_row")
            most = f(f"select i1 {one_row}, i64 {most}, i64 {f.i64('%nth')}")
        if not kernel.name.startswith(STREAMING):
            rows = f(f"sdiv i64 {f.add(args[-2][1], ROWS_PER_PART - 1)}, {ROWS_PER_PART}")
            most = f.min(rows, most)
        most = f.min(
            f(f"select i1 {f(f'icmp slt i64 {most}, 1')}, i64 1, i64 {most}"), sync.MAX_PARTS
        )
        return f(f"trunc i64 {most} to i32", "parts")

    def _next_op(self) -> str:
        self.ops += 1
        if self.ops > sync.MAX_OPS:
            raise BackendError(f"lower-llvm: more than {sync.MAX_OPS} ops in @{self.f.name}")
        return sync.op_sequence(self.f, self.run, self.ops)

    def _wait(self, seq: str, parts: str) -> None:
        self.f.call("void", sync.BARRIER, [("ptr", self.state), ("i64", seq), ("i32", parts)])
