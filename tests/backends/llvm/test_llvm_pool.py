"""The thread pool: every tid runs once per call, many calls in a row, failures re-raised
(never a hang), and a self-completing run that does not wait for a late worker (the
scheduled entries' own tests are in test_schedule.py).  No test bounds a
duration from above; idle workers are shown asleep by the CPU time they do not use."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from ckeir.backends.llvm import pool as pool_mod
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import module_ir
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


@pytest.fixture(scope="module")
def native():
    return compile_ir(module_ir([COUNT_IR]))


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_many_calls_run_every_tid_once(native, nth):
    buf = np.zeros(64, np.int64)
    with Pool(nth) as pool:
        for _ in range(500):
            pool.run(native.address("count"), buf.ctypes.data)
    assert list(buf[:nth]) == [500] * nth and not buf[nth:63].any()
    assert buf[63] == 500 * nth * nth


def test_a_self_completing_run_does_not_wait_for_a_late_worker(native):
    """`run(..., self_completing=True)` returns when thread 0 returns: a worker held before
    it enters the job has not run it yet; released, it runs that job late, and the jobs
    after it run on every thread."""
    buf = np.zeros(64, np.int64)
    with Pool(2) as pool:
        pool.hold(1)
        pool.run(native.address("count"), buf.ctypes.data, self_completing=True)
        assert list(buf[:2]) == [1, 0]
        pool.release()
        deadline = time.monotonic() + 60.0
        while buf[1] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert list(buf[:2]) == [1, 1]
        pool.run(native.address("count"), buf.ctypes.data)  # waits for every thread
        assert list(buf[:2]) == [2, 2]
        with pytest.raises(BackendError, match="Python callable"):
            pool.run(lambda ctx, tid, nth: None, self_completing=True)


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


@pytest.mark.parametrize("nth,width", [(2, 1), (3, 1), (3, 2)])
def test_a_narrow_run_takes_only_its_width_of_threads(native, nth, width):
    """`run(width=w)` runs tids 0..w-1, each seeing nth = w; a run of width 1 is a call on
    the caller's thread that publishes no job; the full width runs again afterwards."""
    buf = np.zeros(64, np.int64)
    with Pool(nth) as pool:
        pool.run(native.address("count"), buf.ctypes.data)
        jobs = pool.jobs()
        for _ in range(300):
            pool.run(native.address("count"), buf.ctypes.data, width=width)
        assert pool.jobs() - jobs == (0 if width == 1 else 300)
        assert list(buf[:nth]) == [301] * width + [1] * (nth - width)
        assert buf[63] == nth * nth + 300 * width * width
        pool.run(native.address("count"), buf.ctypes.data)
        assert list(buf[:nth]) == [302] * width + [2] * (nth - width)
        for bad in (0, nth + 1):
            with pytest.raises(BackendError, match=f"takes 1 to {nth} threads"):
                pool.run(native.address("count"), buf.ctypes.data, width=bad)


def test_width_1_runs_leave_sleeping_workers_asleep(native):
    """Runs of width 1 do not wake a worker: past its spin, it uses no CPU while they go."""
    buf = np.zeros(64, np.int64)
    with Pool(2) as pool:
        pool.run(native.address("count"), buf.ctypes.data)
        time.sleep(0.05)  # the worker is parked in a futex
        cpu0 = time.thread_time(), time.process_time()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            pool.run(native.address("count"), buf.ctypes.data, width=1)
        # the process's CPU time beyond this thread's is the worker's: ~0
        other = (time.process_time() - cpu0[1]) - (time.thread_time() - cpu0[0])
        assert other < 0.05
        assert buf[1] == 1
