"""The barrier between dependent ops: `void @cke_barrier(ptr %state, i32 %nth)`.

A generation barrier: read the generation (acquire), count in (seq_cst add); the last of the
`nth` threads resets the count and bumps the generation (release), the others spin on it
with a pause hint, yielding the CPU after `YIELD_AFTER` spins so that more threads than
cores still make progress.  `state` is `BARRIER_STATE_BYTES` zeroed bytes, 64-byte aligned
(count in the first cache line, generation in the second); it is reusable across calls and
barriers as long as the same `nth` threads use it.
"""

from __future__ import annotations

import functools

import llvmlite.binding as llvm

from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel

BARRIER_STATE_BYTES = 128
BARRIER = "cke_barrier"
YIELD_AFTER = 4096


@functools.cache
def _is_x86() -> bool:
    return llvm.get_process_triple().split("-")[0] in ("x86_64", "i386", "i686")


def spin_hint(f: FunctionWriter) -> None:
    """A pause in a spin loop (x86 `pause`; nothing elsewhere)."""
    if _is_x86():
        f.intrinsic("void", "llvm.x86.sse2.pause", [])


def spin_until_changed(f: FunctionWriter, word: str, seen: str) -> None:
    """Spin until the i32 at `word` (acquire loads) differs from `seen`; yield when it lasts."""
    spins = f.var("i32", "0", "spins")
    head, wait, done = f.label("spin"), f.label("wait"), f.label("changed")
    f.br(head)
    f.start(head)
    now = f(f"load atomic i32, ptr {word} acquire, align 4", "now")
    f.cbr(f(f"icmp ne i32 {now}, {seen}"), done, wait)
    f.start(wait)
    spin_hint(f)
    n = f(f"add i32 {f.get(spins)}, 1")
    f.set(spins, n)
    with f.if_(f(f"icmp ugt i32 {n}, {YIELD_AFTER}")):
        f.declare("declare i32 @sched_yield()")
        f.call("i32", "sched_yield", [])
    f.br(head)
    f.start(done)


def barrier() -> Kernel:
    f = FunctionWriter(BARRIER, [("ptr", "%state"), ("i32", "%nth")])
    with f.if_(f("icmp sgt i32 %nth, 1")):
        gen_p = f.gep("%state", 64, "i8")
        gen = f(f"load atomic i32, ptr {gen_p} acquire, align 4", "gen")
        arrived = f("atomicrmw add ptr %state, i32 1 seq_cst, align 4", "arrived")
        last, wait, done = f.label("last"), f.label("others"), f.label("out")
        f.cbr(f(f"icmp eq i32 {arrived}, {f('sub i32 %nth, 1')}"), last, wait)
        f.start(last)
        f.op("store atomic i32 0, ptr %state monotonic, align 4")
        f(f"atomicrmw add ptr {gen_p}, i32 1 release, align 4")
        f.br(done)
        f.start(wait)
        spin_until_changed(f, gen_p, gen)
        f.br(done)
        f.start(done)
    return Kernel(name=BARRIER, args=("state",), ir=f.finish(), declares=frozenset(f.declares))
