"""The thread pool: every tid runs once per call, many calls in a row, failures re-raised
(never a hang), and the kernels' barrier keeping threads in lock step.  No test bounds a
duration from above; idle workers are shown asleep by the CPU time they do not use."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from ckeir.backends.llvm import pool as pool_mod
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import BARRIER_STATE_BYTES, barrier, module_ir
from ckeir.backends.llvm.pool import Pool, measure_overhead
from ckeir.errors import BackendError

# Each call: out[tid] += 1 and out[63] += nth (atomically), for checking coverage and counts.
COUNT_IR = """
define void @count(ptr %ctx, i32 %tid, i32 %nth) {
  %t = sext i32 %tid to i64
  %p = getelementptr i64, ptr %ctx, i64 %t
  %v = load i64, ptr %p
  %v1 = add i64 %v, 1
  store i64 %v1, ptr %p
  %q = getelementptr i64, ptr %ctx, i64 63
  %n = sext i32 %nth to i64
  %old = atomicrmw add ptr %q, i64 %n seq_cst
  ret void
}
"""

# Rounds of: write my slot = round, barrier, check every slot == round, barrier.
LOCKSTEP_IR = """
define void @lockstep(ptr %ctx, i32 %tid, i32 %nth) {
entry:
  %state = getelementptr i8, ptr %ctx, i64 0
  %slots = getelementptr i8, ptr %ctx, i64 128
  %errors = getelementptr i8, ptr %ctx, i64 1024
  %t = sext i32 %tid to i64
  %mine = getelementptr i64, ptr %slots, i64 %t
  %n = sext i32 %nth to i64
  br label %round
round:
  %i = phi i64 [ 0, %entry ], [ %i1, %checked ]
  %bad = phi i64 [ 0, %entry ], [ %bad2, %checked ]
  store atomic i64 %i, ptr %mine monotonic, align 8
  call void @cke_barrier(ptr %state, i32 %nth)
  br label %check
check:
  %j = phi i64 [ 0, %round ], [ %j1, %check ]
  %bad1 = phi i64 [ %bad, %round ], [ %bad2, %check ]
  %pj = getelementptr i64, ptr %slots, i64 %j
  %vj = load atomic i64, ptr %pj monotonic, align 8
  %ne = icmp ne i64 %vj, %i
  %inc = zext i1 %ne to i64
  %bad2 = add i64 %bad1, %inc
  %j1 = add i64 %j, 1
  %more = icmp slt i64 %j1, %n
  br i1 %more, label %check, label %checked
checked:
  call void @cke_barrier(ptr %state, i32 %nth)
  %i1 = add i64 %i, 1
  %again = icmp slt i64 %i1, 1000
  br i1 %again, label %round, label %done
done:
  %pe = getelementptr i64, ptr %errors, i64 %t
  store i64 %bad2, ptr %pe
  ret void
}
"""


@pytest.fixture(scope="module")
def native():
    return compile_ir(module_ir([barrier(), COUNT_IR, LOCKSTEP_IR]))


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_many_calls_run_every_tid_once(native, nth):
    buf = np.zeros(64, np.int64)
    with Pool(nth) as pool:
        for _ in range(500):
            pool.run(native.address("count"), buf.ctypes.data)
    assert list(buf[:nth]) == [500] * nth and not buf[nth:63].any()
    assert buf[63] == 500 * nth * nth


@pytest.mark.parametrize("nth", [2, 3])
def test_barrier_keeps_threads_in_lock_step(native, nth):
    raw = np.zeros(1024 // 8 + 64 + 8, np.int64)  # barrier state, slots, per-thread error counts
    skip = (-raw.ctypes.data % 64) // 8
    ctx = raw[skip : skip + 1024 // 8 + 64]  # 64-byte aligned, as the barrier requires
    assert ctx.ctypes.data % 64 == 0 and BARRIER_STATE_BYTES <= 128
    with Pool(nth) as pool:
        for _ in range(2):
            pool.run(native.address("lockstep"), ctx.ctypes.data)
    assert not ctx[128:].any()


def test_python_callable_sees_tids_and_exceptions_reraise():
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def record(ctx, tid, nth):
        with lock:
            seen.append((tid, nth))

    def fail_in_worker(ctx, tid, nth):
        if tid == 1:
            raise ValueError("boom")

    with Pool(2) as pool:
        pool.run(record)
        assert sorted(seen) == [(0, 2), (1, 2)]
        with pytest.raises(BackendError, match="thread 1 of 2 raised ValueError") as info:
            pool.run(fail_in_worker)
        assert isinstance(info.value.__cause__, ValueError)
        # both threads raise; whichever records first is reported
        with pytest.raises(BackendError, match=r"thread [01] of 2 raised ZeroDivisionError"):
            pool.run(lambda ctx, tid, nth: 1 / (tid - tid))
        pool.run(record)  # still usable after an exception
        assert len(seen) == 4


def test_dead_worker_raises_instead_of_hanging(monkeypatch):
    def enter(self, tid):  # a worker thread that dies before it can run anything
        self.fail(tid, RuntimeError("worker could not start"))

    monkeypatch.setattr(pool_mod._Shared, "enter", enter)
    pool = Pool(3)
    with pytest.raises(BackendError, match="worker could not start"):
        pool.run(lambda ctx, tid, nth: None)  # a hang here would be the bug
    with pytest.raises(BackendError, match="unusable"):
        pool.run(lambda ctx, tid, nth: None)
    pool.close()


def test_closed_pool_refuses_work():
    pool = Pool(2)
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        pool.run(lambda ctx, tid, nth: None)
    with pytest.raises(BackendError):
        Pool(0)


def test_idle_workers_sleep(native):
    buf = np.zeros(64, np.int64)
    with Pool(2) as pool:
        pool.run(native.address("count"), buf.ctypes.data)
        time.sleep(0.05)  # well past the spin window: the worker is parked in a futex
        cpu0 = time.process_time()
        time.sleep(0.2)
        assert time.process_time() - cpu0 < 0.1
        pool.run(native.address("count"), buf.ctypes.data)  # and wakes up for the next call
    assert list(buf[:2]) == [2, 2]


def test_measure_overhead():
    """Seconds per call, for benchmarks to compare (no bound here: a busy machine makes
    anything slower)."""
    assert 0 < measure_overhead(2, calls=200) < math.inf
