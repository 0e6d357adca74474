"""How a ckeir thread or rank waits for another: spin, offer the CPU, then sleep.

Every wait in ckeir — a pool worker waiting for a job, the pool's caller waiting for its
workers, threads meeting at the barrier between ops, a rank waiting for a message over
shared memory or MPI — follows this one policy, with a `Budget` named for the kind of wait:

1. spin: re-check the condition with a pause hint in between, for `spin_s` (a peer that is
   running answers within microseconds, and a system call or a wake-up costs more);
2. offer the CPU: past `yield_after_s` of spinning, every clock check also calls
   `sched_yield`, so that a peer descheduled on this CPU runs at once;
3. sleep: on a futex word (the one the peer changes), for at most `nap_s`, then re-check
   what no wake-up reports (a thread that died, a rank whose process is gone).

When the waiters outnumber the CPUs (`Budget.crowded`), spinning steals the CPU a peer
needs: the spin is shorter and the CPU is offered after `CROWDED_YIELD_AFTER_S`.

The IR side (`wait_until`, `futex_wait`, `futex_wake`, `spin_hint`) writes the policy into
JIT-compiled code; the Python side (`poll`, `sleep_until`) is for waits driven from Python.
The futex system call's number and operations are defined here and nowhere else.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from collections.abc import Callable

import attrs
import llvmlite.binding as llvm

from ckeir.backends.llvm.host import usable_cpus
from ckeir.backends.llvm.kernels.common import FunctionWriter

# ---- the policy -------------------------------------------------------------------------------

CROWDED_YIELD_AFTER_S = 5e-6  # waiters outnumber CPUs: offer the CPU almost at once
CLOCK_EVERY = 64  # pause hints between two clock reads: keeps the spin loop tight
DEADLINE_SPIN_S = 300e-6  # a wait for a moment sleeps until this close to it, then spins
# (a sleep overshoots by up to ~100 µs; spinning the rest meets the moment to a µs)


@attrs.frozen
class Budget:
    """How long one kind of wait spins, when it offers the CPU, how long one sleep lasts."""

    name: str
    spin_s: float  # spin this long before sleeping
    yield_after_s: float  # while spinning, offer the CPU after this long
    nap_s: float  # one sleep lasts at most this long before the waiter re-checks liveness
    crowded_spin_s: float  # the spin when the waiters outnumber the CPUs

    def crowded(self) -> Budget:
        """This budget for waiters that outnumber the CPUs."""
        return attrs.evolve(
            self,
            spin_s=self.crowded_spin_s,
            yield_after_s=min(self.yield_after_s, CROWDED_YIELD_AFTER_S),
        )

    def for_waiters(self, waiters: int, cpus: int | None = None) -> Budget:
        """This budget, crowded when `waiters` threads or ranks share fewer CPUs."""
        return self.crowded() if waiters > (cpus or usable_cpus()) else self


# A pool worker waiting for the next job: calls of one decode step come microseconds apart,
# so it spins through such gaps; it sleeps between requests (a futex wake-up, ~30-100 µs).
POOL_JOB = Budget("pool-job", spin_s=400e-6, yield_after_s=50e-6, nap_s=1.0, crowded_spin_s=20e-6)
# The pool's caller waiting for its workers: it re-checks the `failed` word between naps.
POOL_DONE = attrs.evolve(POOL_JOB, name="pool-done", nap_s=10e-3)
# Threads meeting between two ops: a balanced op brings them within microseconds; a longer
# wait means a peer lost its CPU, which it gets back sooner if the waiters sleep.
BARRIER = Budget("barrier", spin_s=250e-6, yield_after_s=50e-6, nap_s=1.0, crowded_spin_s=20e-6)
# A thread joining the run of an entry thread 0 is starting (nanoseconds after it published
# the job): spin only, since a thread whose job is stale waits for a run nobody starts.
RUN_START = Budget("run-start", spin_s=50e-6, yield_after_s=5e-6, nap_s=0.0, crowded_spin_s=20e-6)
# A rank waiting for a message over shared memory; it re-checks its peers between naps.
MESSAGE = Budget("message", spin_s=100e-6, yield_after_s=5e-6, nap_s=10e-3, crowded_spin_s=20e-6)
# ... over a shaped link: a wake-up (~20-50 µs) would add to the simulated hop time, so it
# spins long; but it offers its CPU as early as MESSAGE does.  Ranks that are not pinned
# share CPUs whenever the OS puts them together (pipeline stages take turns, so it often
# does), and a waiter that kept its CPU for 1 ms before offering it held the one its peer
# needed: SmolLM2's 2-stage pipeline with both ranks on one CPU measured 1.18-1.34 ms per
# activation hop over the spec's 50 µs link that way, 0.16-0.30 ms offering it after 5 µs,
# 0.10-0.16 ms on CPUs of their own (benchmarks/pipeline.py).
SHAPED_LINK = Budget(
    "shaped-link", spin_s=10e-3, yield_after_s=5e-6, nap_s=10e-3, crowded_spin_s=10e-3
)
# An MPI request, over any link: nothing rings a bell when it completes, so a sleeping
# poller notices it only at its next nap: it spins through the usual wait for a pipeline
# stage, offering the CPU early (as MPICH's own wait does every so many polls: a later
# offer, as SHAPED_LINK makes, delayed shaped MPI hops by ~1 ms on a busy machine), and
# naps briefly after that.
MPI_REQUEST = Budget(
    "mpi-request", spin_s=10e-3, yield_after_s=5e-6, nap_s=50e-6, crowded_spin_s=20e-6
)

BUDGETS = (POOL_JOB, POOL_DONE, BARRIER, RUN_START, MESSAGE, SHAPED_LINK, MPI_REQUEST)


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


# ---- the futex table --------------------------------------------------------------------------

# futex(2) system call numbers per machine (Linux); elsewhere waiters yield instead of sleeping.
SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(
    platform.machine().lower()
)
HAVE_FUTEX = sys.platform.startswith("linux") and SYS_FUTEX is not None
FUTEX_WAIT, FUTEX_WAKE = 0, 1
FUTEX_PRIVATE_FLAG = 128  # the word is not in memory shared with another process
WAKE_ALL = 2**31 - 1


def _futex_op(op: int, shared: bool) -> int:
    return op if shared else op | FUTEX_PRIVATE_FLAG


# ---- the policy in IR -------------------------------------------------------------------------


@functools.cache
def _is_x86() -> bool:
    return llvm.get_process_triple().split("-")[0] in ("x86_64", "i386", "i686")


def spin_hint(f: FunctionWriter) -> None:
    """A pause in a spin loop (x86 `pause`; nothing elsewhere)."""
    if _is_x86():
        f.intrinsic("void", "llvm.x86.sse2.pause", [])


def sched_yield(f: FunctionWriter) -> None:
    f.declare("declare i32 @sched_yield()")
    f.call("i32", "sched_yield", [])


def now_ns(f: FunctionWriter) -> str:
    """CLOCK_MONOTONIC in ns (the clock of time.monotonic_ns / perf_counter_ns on Linux)."""
    f.declare("declare i32 @clock_gettime(i32, ptr)")
    ts = f.var("{ i64, i64 }", None, "ts")
    f.call("i32", "clock_gettime", [("i32", "1"), ("ptr", ts.ptr)])
    sec = f.load("i64", ts.ptr, 8)
    nsec = f.load("i64", f.gep(ts.ptr, 8, "i8"), 8)
    return f(f"add i64 {f(f'mul i64 {sec}, 1000000000')}, {nsec}", "now")


def futex_wait(f: FunctionWriter, word: str, expected: str, timeout_ns: str, shared: bool) -> None:
    """Sleep while the i32 at `word` holds `expected`, at most `timeout_ns` (an i64 value);
    without futexes, offer the CPU once (the caller re-checks)."""
    if not HAVE_FUTEX:
        sched_yield(f)
        return
    ts = f.var("{ i64, i64 }", None, "ts")
    f.store("i64", f(f"sdiv i64 {timeout_ns}, 1000000000"), ts.ptr, 8)
    f.store("i64", f(f"srem i64 {timeout_ns}, 1000000000"), f.gep(ts.ptr, 8, "i8"), 8)
    f.declare("declare i64 @syscall(i64, ...)")
    op = _futex_op(FUTEX_WAIT, shared)
    f(
        f"call i64 (i64, ...) @syscall(i64 {SYS_FUTEX}, ptr {word}, i64 {op},"
        f" i64 {f(f'zext i32 {expected} to i64')}, ptr {ts.ptr}, ptr null, i64 0)"
    )


def futex_wake(f: FunctionWriter, word: str, count: int, shared: bool) -> None:
    """Wake up to `count` sleepers on `word`."""
    if HAVE_FUTEX:
        f.declare("declare i64 @syscall(i64, ...)")
        op = _futex_op(FUTEX_WAKE, shared)
        f(
            f"call i64 (i64, ...) @syscall(i64 {SYS_FUTEX}, ptr {word}, i64 {op},"
            f" i64 {count}, ptr null, ptr null, i64 0)"
        )


@attrs.frozen
class Sleep:
    """Where a waiter sleeps: the futex `word` its peer changes, and the i32 count of
    sleepers the peer reads after changing it (a wake system call only when someone
    sleeps).  The protocol: waiter = add sleepers, re-check (seq_cst), sleep on the value
    seen; peer = change the word (seq_cst), read sleepers, wake if any (`wake_sleepers`)."""

    word: str
    sleepers: str
    shared: bool  # the word is in memory shared between processes
    nap_ns: str  # i64: longest sleep before the wait re-checks
    once: bool = False  # return after one sleep (the caller checks liveness) or sleep again


def wake_sleepers(f: FunctionWriter, word: str, sleepers: str, shared: bool, count: int) -> None:
    """The peer's half of `Sleep`'s protocol, after it changed `word` (seq_cst)."""
    asleep = f(f"load atomic i32, ptr {sleepers} seq_cst, align 4", "sleepers")
    with f.if_(f(f"icmp ne i32 {asleep}, 0")):
        futex_wake(f, word, count, shared)


def wait_until(
    f: FunctionWriter,
    ready: Callable[[], str],
    spin_ns: str,
    yield_after_ns: str,
    sleep: Sleep | None = None,
) -> str:
    """Wait until `ready()` (emits IR, returns an i1) holds, as the module docstring says:
    spin `spin_ns`, offering the CPU after `yield_after_ns`, then sleep as `sleep` says (or
    give up: no `sleep`, or a nap of 0).  Returns the last `ready()` (i1).  The first check
    reads no clock."""
    ok = f.var("i1", "false", "ready")
    spin, tick, clock, check, courtesy, give, spun, out = (
        f.label(x) for x in ("spin", "tick", "clock", "check", "courtesy", "yield", "spun", "out")
    )
    now0 = ready()
    f.set(ok, now0)
    f.cbr(f(f"or i1 {now0}, {f(f'icmp sle i64 {spin_ns}, 0')}"), spun, spin)
    f.start(spin)
    t0 = now_ns(f)
    deadline = f(f"add i64 {t0}, {spin_ns}", "deadline")
    yield_at = f(f"add i64 {t0}, {yield_after_ns}", "yield_at")
    n = f.var("i32", "0", "n")
    f.br(tick)
    f.start(tick)
    spin_hint(f)
    got = ready()
    f.set(ok, got)
    k = f(f"add i32 {f.get(n)}, 1")
    f.set(n, k)
    f.cbr(got, out, clock)
    f.start(clock)
    f.cbr(f(f"icmp eq i32 {f(f'and i32 {k}, {CLOCK_EVERY - 1}')}, 0"), check, tick)
    f.start(check)
    now = now_ns(f)
    f.cbr(f(f"icmp sge i64 {now}, {deadline}"), spun, courtesy)
    f.start(courtesy)
    f.cbr(f(f"icmp sge i64 {now}, {yield_at}"), give, tick)
    f.start(give)
    sched_yield(f)
    f.br(tick)
    f.start(spun)
    if sleep is not None:
        _sleep_until_ready(f, ready, ok, sleep, out)
    f.br(out)
    f.start(out)
    return f.get(ok)


def _sleep_until_ready(f: FunctionWriter, ready, ok, sleep: Sleep, out: str) -> None:
    nap, asleep, withdraw = f.label("nap"), f.label("asleep"), f.label("withdraw")
    f.cbr(f(f"or i1 {f.get(ok)}, {f(f'icmp sle i64 {sleep.nap_ns}, 0')}"), out, nap)
    f.start(nap)
    f(f"atomicrmw add ptr {sleep.sleepers}, i32 1 seq_cst, align 4")
    seen = f(f"load atomic i32, ptr {sleep.word} seq_cst, align 4", "seen")
    again = ready()  # after the announcement: a change from here on wakes the futex
    f.set(ok, again)
    f.cbr(again, withdraw, asleep)
    f.start(asleep)
    futex_wait(f, sleep.word, seen, sleep.nap_ns, sleep.shared)
    f.br(withdraw)
    f.start(withdraw)
    f(f"atomicrmw sub ptr {sleep.sleepers}, i32 1 seq_cst, align 4")
    after = ready()
    f.set(ok, after)
    if sleep.once:
        f.br(out)
    else:
        f.cbr(after, out, nap)
    f.start(f.label("unreachable"))


def wait_for_time(
    f: FunctionWriter,
    due_ns: str,
    word: str,
    shared: bool,
    abandon: Callable[[], str] | None = None,
) -> None:
    """Return once CLOCK_MONOTONIC reaches `due_ns` (an i64 value), to about a microsecond:
    asleep on the futex `word` (any change of it wakes the waiter early, which then goes
    back to sleep) until `DEADLINE_SPIN_S` before the moment, then spinning; or as soon as
    `abandon()` (emits IR, returns an i1) holds, checked at every wake-up."""
    head, nap, pause, out = (f.label(x) for x in ("due_head", "due_nap", "due_pause", "due_out"))
    f.br(head)
    f.start(head)
    if abandon is not None:
        go_on = f.label("due_go_on")
        f.cbr(abandon(), out, go_on)
        f.start(go_on)
    now = now_ns(f)
    left = f(f"sub i64 {due_ns}, {now}", "left")
    f.cbr(f(f"icmp sle i64 {left}, 0"), out, pause)
    f.start(pause)
    asleep = f(f"sub i64 {left}, {ns(DEADLINE_SPIN_S)}", "asleep")
    spin = f.label("due_spin")
    f.cbr(f(f"icmp sgt i64 {asleep}, 0"), nap, spin)
    f.start(spin)
    spin_hint(f)
    f.br(head)
    f.start(nap)
    seen = f(f"load atomic i32, ptr {word} seq_cst, align 4", "seen")
    futex_wait(f, word, seen, asleep, shared)
    f.br(head)
    f.start(out)


# ---- the policy in Python ---------------------------------------------------------------------


def poll(ready: Callable[[], bool], budget: Budget) -> None:
    """Call `ready()` until it returns true: spinning for `budget.spin_s` (offering the CPU
    after `budget.yield_after_s`), then every `budget.nap_s` — for waits that nothing
    wakes (an MPI request).  `ready` raises to abandon the wait."""
    if ready():
        return
    t0 = time.perf_counter()
    spin_end, yield_at = t0 + budget.spin_s, t0 + budget.yield_after_s
    while not ready():
        now = time.perf_counter()
        if now >= spin_end:
            time.sleep(budget.nap_s)
        elif now >= yield_at:
            os.sched_yield()


def sleep_until(t: float) -> None:
    """Return at time.perf_counter() == t, to about a microsecond: sleep until
    `DEADLINE_SPIN_S` before it, then spin."""
    left = t - time.perf_counter() - DEADLINE_SPIN_S
    if left > 0:
        time.sleep(left)
    while time.perf_counter() < t:
        pass
