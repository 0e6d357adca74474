"""The one wait policy (`backends/llvm/wait.py`): every wait site takes its budget and its
futex calls from it, and waiters that outlast their spin sleep instead of burning a CPU."""

from __future__ import annotations

import ctypes
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ckeir
from ckeir.backends.llvm import pool as pool_mod
from ckeir.backends.llvm import wait
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import BARRIER_STATE_BYTES, barrier, module_ir, sync
from ckeir.backends.llvm.pool import Pool
from ckeir.runtime.transport import shm_native

PACKAGE = Path(ckeir.__file__).parent
BACKSTOP_S = 60.0  # how long a test waits for what should happen before it fails
# Every module that waits for another thread or rank.
WAIT_SITES = [
    "backends/llvm/pool.py",
    "backends/llvm/kernels/sync.py",
    "runtime/transport/shm_native.py",
    "runtime/transport/local.py",
    "runtime/transport/mpi.py",
]


def source(rel: str) -> str:
    return (PACKAGE / rel).read_text()


# ---- one definition ----------------------------------------------------------------------------


@pytest.mark.parametrize("rel", WAIT_SITES)
def test_wait_sites_do_not_retype_the_policy(rel):
    """No wait site spins, yields, sleeps or calls futex by itself, nor names a number of
    its own for how long: those come from `wait`."""
    text = source(rel)
    calls = ("sse2.pause", "@sched_yield", "os.sched_yield", "@syscall", "Waitany", "Mprobe")
    for own in calls:
        assert own not in text, f"{rel} waits by itself ({own})"
    retyped = re.findall(r"^(\w*(?:SPIN|YIELD|POLL|NAP|SLEEP|FUTEX)\w*)\s*=\s*[\d.]", text, re.M)
    assert retyped == [], f"{rel} defines its own wait constants {retyped}"
    assert "from ckeir.backends.llvm import wait" in text


def test_one_futex_table():
    """The futex system call's number and operations are spelled out once in ckeir."""
    holders = [
        str(p.relative_to(PACKAGE))
        for p in sorted(PACKAGE.rglob("*.py"))
        if re.search(r"\"x86_64\":\s*202|FUTEX_WAIT\w*\s*=|FUTEX_WAKE\w*\s*=", p.read_text())
    ]
    assert holders == ["backends/llvm/wait.py"]


def futex_calls(ir: str) -> list[tuple[int, int]]:
    """(system call number, futex operation) of every `syscall` call in `ir`."""
    calls = re.findall(r"@syscall\(i64 (\d+), ptr [^,]+, i64 (\d+),", ir)
    return [(int(n), int(op)) for n, op in calls]


@pytest.mark.skipif(not wait.HAVE_FUTEX, reason="no futex on this system")
def test_generated_code_calls_the_table():
    """The pool and the barrier sleep on private futexes, the shared-memory transport on
    process-shared ones, all with the table's numbers."""
    private = {wait.FUTEX_WAIT | wait.FUTEX_PRIVATE_FLAG, wait.FUTEX_WAKE | wait.FUTEX_PRIVATE_FLAG}
    for ir in (pool_mod._native_ir(), module_ir(sync.protocol())):
        calls = futex_calls(ir)
        assert calls and {op for _, op in calls} == private
        assert {n for n, _ in calls} == {wait.SYS_FUTEX}
    calls = futex_calls(shm_native.native_ir(4096))
    assert {op for _, op in calls} == {wait.FUTEX_WAIT, wait.FUTEX_WAKE}
    assert {n for n, _ in calls} == {wait.SYS_FUTEX}


def test_the_barrier_takes_its_budget_from_the_policy(monkeypatch):
    before = barrier().text
    monkeypatch.setattr(wait, "BARRIER", wait.Budget("barrier", 123e-6, 45e-6, 0.5, 6e-6))
    after = barrier().text
    for seconds in (123e-6, 45e-6, 0.5):
        literal = re.compile(rf"\bi64 {wait.ns(seconds)}\b|, {wait.ns(seconds)}\b")
        assert literal.search(after) and not literal.search(before), seconds


def test_crowded_budgets():
    """More waiters than CPUs: a shorter spin, and the CPU offered at once."""
    for budget in wait.BUDGETS:
        crowded = budget.for_waiters(3, cpus=2)
        assert crowded.spin_s == budget.crowded_spin_s <= budget.spin_s
        assert crowded.yield_after_s <= wait.CROWDED_YIELD_AFTER_S
        assert crowded.nap_s == budget.nap_s
        assert budget.for_waiters(2, cpus=2) == budget


@pytest.mark.parametrize("nth", [1, 2, 3, 9])
def test_the_pool_stores_the_budget_its_threads_wait_by(nth):
    """What the pool's native waits read from the control block: POOL_JOB's spin, crowded
    when the pool's threads outnumber the host's CPUs."""
    with Pool(nth) as pool:
        ctl = pool._shared.ctl
        spin = ctypes.c_int64.from_address(ctl + pool_mod.SPIN_NS).value
        yield_after = ctypes.c_int64.from_address(ctl + pool_mod.YIELD_NS).value
    want = wait.POOL_JOB.for_waiters(nth, pool_mod.detect_host().cores)
    assert (spin, yield_after) == (wait.ns(want.spin_s), wait.ns(want.yield_after_s))


# ---- waiters sleep -----------------------------------------------------------------------------


def test_a_thread_waiting_for_an_op_sleeps():
    """A thread waiting for the last part of an op spins for the barrier's budget, then
    sleeps: the thread holding the part sees it counted among the sleepers (the word it
    reads, when it counts the part done, to wake them), and the waiter gets through."""
    cm = compile_ir(module_ir(sync.protocol()).replace("define internal ", "define "))
    fn = ctypes.CFUNCTYPE
    claim = fn(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32)(
        cm.address(sync.CLAIM)
    )
    done = fn(None, ctypes.c_void_p, ctypes.c_int32)(cm.address(sync.DONE))
    barrier = fn(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32)(cm.address(sync.BARRIER))
    raw = np.zeros(BARRIER_STATE_BYTES // 8 + 8, np.int64)
    state = raw.ctypes.data + (-raw.ctypes.data % 64)
    sleepers = ctypes.c_int32.from_address(state + sync.SLEEPERS_AT)
    seq = 1 << sync.OP_BITS | 1  # op 1 of run 1
    assert claim(state, seq, 1) == 0 and claim(state, seq, 1) == -1  # one part, taken
    seen = []

    def finish_late() -> None:
        deadline = time.monotonic() + BACKSTOP_S
        while not sleepers.value and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(sleepers.value)
        done(state, 1)

    t = threading.Thread(target=finish_late)
    t.start()
    barrier(state, seq, 1)  # ctypes releases the GIL: the thread above runs meanwhile
    t.join()
    assert seen == [1]
    assert sleepers.value == 0
    assert claim(state, seq, 1) == -1  # the op is over
    assert claim(state, seq + 1, 1) == 0  # the next one opens


def test_poll_spins_then_naps():
    """A Python-driven wait (an MPI request): ready() at once costs one call; a long wait
    is a spin, then one call per nap."""
    calls = []

    def ready_after(t_end):
        def ready():
            calls.append(time.perf_counter())
            return time.perf_counter() >= t_end

        return ready

    budget = wait.Budget("test", spin_s=0.0, yield_after_s=0.0, nap_s=0.02, crowded_spin_s=0.0)
    wait.poll(ready_after(0.0), budget)
    assert len(calls) == 1
    calls.clear()
    wait.poll(ready_after(time.perf_counter() + 0.2), budget)
    assert 2 <= len(calls) <= 0.2 / 0.02 + 3  # a call per nap of at least nap_s, after two
