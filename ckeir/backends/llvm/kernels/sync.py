"""The barrier between dependent ops: `void @cke_barrier(ptr %state, i32 %nth)`.

A generation barrier: read the generation (acquire), count in (seq_cst add); the last of the
`nth` threads resets the count, bumps the generation and wakes the threads that went to
sleep; the others wait for the generation to change as every ckeir wait does
(`wait.BARRIER`: spin, offer the CPU, then sleep on the generation with a futex — a peer
that lost its CPU gets one back sooner).  `state` is `BARRIER_STATE_BYTES` zeroed bytes,
64-byte aligned (the count in the first cache line; the generation and its sleepers in the
second); it is reusable across calls and barriers as long as the same `nth` threads use it.
"""

from __future__ import annotations

from ckeir.backends.llvm import wait
from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel

BARRIER_STATE_BYTES = 128
BARRIER = "cke_barrier"
GENERATION_AT, SLEEPERS_AT = 64, 68  # byte offsets in the state (the count is at 0)


def barrier() -> Kernel:
    f = FunctionWriter(BARRIER, [("ptr", "%state"), ("i32", "%nth")])
    with f.if_(f("icmp sgt i32 %nth, 1")):
        gen_p = f.gep("%state", GENERATION_AT, "i8")
        sleepers = f.gep("%state", SLEEPERS_AT, "i8")
        gen = f(f"load atomic i32, ptr {gen_p} acquire, align 4", "gen")
        arrived = f("atomicrmw add ptr %state, i32 1 seq_cst, align 4", "arrived")
        last, others, done = f.label("last"), f.label("others"), f.label("out")
        f.cbr(f(f"icmp eq i32 {arrived}, {f('sub i32 %nth, 1')}"), last, others)
        f.start(last)
        f.op("store atomic i32 0, ptr %state monotonic, align 4")
        f(f"atomicrmw add ptr {gen_p}, i32 1 seq_cst, align 4")
        wait.wake_sleepers(f, gen_p, sleepers, shared=False, count=wait.WAKE_ALL)
        f.br(done)
        f.start(others)
        budget = wait.BARRIER
        wait.wait_until(
            f,
            lambda: f(f"icmp ne i32 {f(f'load atomic i32, ptr {gen_p} acquire, align 4')}, {gen}"),
            str(wait.ns(budget.spin_s)),
            str(wait.ns(budget.yield_after_s)),
            wait.Sleep(gen_p, sleepers, shared=False, nap_ns=str(wait.ns(budget.nap_s))),
        )
        f.br(done)
        f.start(done)
    return Kernel(name=BARRIER, args=("state",), ir=f.finish(), declares=frozenset(f.declares))
