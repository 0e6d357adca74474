"""Ops shared out in parts claimed by whichever thread comes (`schedule.Scheduler`): every
part of every op runs exactly once, dependent ops see each other's results, thread 0 alone
finishes a job a worker is late for, and a late worker finds nothing left to do.  The
entries here are built by the Scheduler as lower-llvm builds a program's, around a test
kernel that counts what it runs in native counter arrays."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import BARRIER_STATE_BYTES, module_ir
from ckeir.backends.llvm.kernels.common import FunctionWriter, finish_kernel, kernel_writer
from ckeir.backends.llvm.pool import Pool
from ckeir.backends.llvm.schedule import Scheduler

OPS, SLOTS = 12, 16  # ops in the test entry; values each op computes (one per part)
MAX_THREADS = 8
BACKSTOP_S = 60.0  # how long a test waits for what should happen before it fails

# ctx layout (i64 words)
STATE = 0
IN = BARRIER_STATE_BYTES // 8  # SLOTS inputs, written before each run
BUF = IN + SLOTS  # OPS x SLOTS: op j's values
PARTS = BUF + OPS * SLOTS  # OPS x SLOTS: how many times op j's part p ran
BY_THREAD = PARTS + OPS * SLOTS  # MAX_THREADS: parts each thread ran
ENTERED = BY_THREAD + MAX_THREADS  # MAX_THREADS: entries each thread made
ONCE = ENTERED + MAX_THREADS  # runs of the `once` block
DELAY = ONCE + 1  # OPS x SLOTS: spin iterations of op j's part p
WORDS = DELAY + OPS * SLOTS


def step_kernel():
    """Part p of op j: out[p] = 1 + Σ prev (every slot of the op before), after spinning
    delay[j][p] iterations; counts the part in parts[j][p] and in by_thread[thread]."""
    f = kernel_writer("step_test", 4)  # prev, out, parts row, ctx; n = thread, pos = op
    p = f("sext i32 %tid to i64", "p")
    delay = f.gep("%a3", f.add(DELAY, f.add(f.mul("%pos", SLOTS), p)), "i64")
    with f.loop(0, f.load("i64", delay, 8)):
        f("atomicrmw add ptr %a3, i64 0 monotonic, align 8")  # a spin the compiler keeps
    total = f.var("i64", "1", "total")
    with f.loop(0, SLOTS) as i:
        v = f(f"load atomic i64, ptr {f.gep('%a0', i, 'i64')} monotonic, align 8")
        f.set(total, f.add(f.get(total), v))
    with f.loop(p, SLOTS, f.i64("%nth")) as i:
        f.op(f"store atomic i64 {f.get(total)}, ptr {f.gep('%a1', i, 'i64')} monotonic, align 8")
    f(f"atomicrmw add ptr {f.gep('%a2', p, 'i64')}, i64 1 monotonic, align 8")
    by = f.gep("%a3", f.add(BY_THREAD, "%n"), "i64")
    f(f"atomicrmw add ptr {by}, i64 1 monotonic, align 8")
    return finish_kernel(f, ("prev", "out", "parts", "ctx"))


def entry_ir(parts: int) -> str:
    """`@steps(ctx, tid, nth)`: OPS dependent ops of `parts` parts each, then a `once`
    block; each thread counts its entry first."""
    f = FunctionWriter("steps", [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")], linkage="")
    kernels: dict = {}
    schedule = Scheduler(f, "%ctx", kernels)
    tid = f.i64("%tid")
    f(f"atomicrmw add ptr {f.gep('%ctx', f.add(ENTERED, tid), 'i64')}, i64 1 monotonic, align 8")
    step = step_kernel()
    for j in range(OPS):
        prev = f.gep("%ctx", IN if j == 0 else BUF + (j - 1) * SLOTS, "i64")
        out = f.gep("%ctx", BUF + j * SLOTS, "i64")
        counts = f.gep("%ctx", PARTS + j * SLOTS, "i64")
        args = [("ptr", prev), ("ptr", out), ("ptr", counts), ("ptr", "%ctx")]
        schedule.call(step, [*args, ("i64", tid), ("i64", str(j))], parts=str(parts))
        schedule.sync()
    with schedule.once():
        f(f"atomicrmw add ptr {f.gep('%ctx', ONCE, 'i64')}, i64 1 monotonic, align 8")
    return module_ir([*kernels.values(), f.finish()])


def expected(inputs: np.ndarray) -> np.ndarray:
    out, prev = [], inputs
    for _ in range(OPS):
        prev = np.full(SLOTS, 1 + int(prev.sum()), np.int64)
        out.append(prev)
    return np.stack(out)


class Steps:
    """A compiled test entry and its ctx."""

    def __init__(self, parts: int):
        self.parts = parts
        self.module = compile_ir(entry_ir(parts))
        self.entry = self.module.address("steps")
        raw = np.zeros(WORDS + 8, np.int64)
        skip = (-raw.ctypes.data % 64) // 8
        self.ctx = raw[skip : skip + WORDS]

    def run(self, pool: Pool, inputs, **kw) -> None:
        self.ctx[IN : IN + SLOTS] = inputs
        pool.run(self.entry, self.ctx.ctypes.data, **kw)

    def values(self) -> np.ndarray:
        return self.ctx[BUF : BUF + OPS * SLOTS].reshape(OPS, SLOTS)

    def parts_ran(self) -> np.ndarray:
        return self.ctx[PARTS : PARTS + OPS * SLOTS].reshape(OPS, SLOTS)[:, : self.parts]

    def by_thread(self) -> np.ndarray:
        return self.ctx[BY_THREAD : BY_THREAD + MAX_THREADS]

    def entered(self) -> np.ndarray:
        return self.ctx[ENTERED : ENTERED + MAX_THREADS]


@pytest.fixture(scope="module")
def steps():
    return {parts: Steps(parts) for parts in (1, 4, 16)}


def wait_for(cond) -> None:
    deadline = time.monotonic() + BACKSTOP_S
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert cond()


@pytest.mark.parametrize("nth", [1, 2, 3])
@pytest.mark.parametrize("parts", [1, 4, 16])
def test_every_part_runs_once_and_dependent_ops_see_each_other(steps, nth, parts):
    s = steps[parts]
    s.ctx[PARTS : ONCE + 1] = 0
    rng = np.random.default_rng(nth * 100 + parts)
    runs = 50
    with Pool(nth) as pool:
        for _ in range(runs):
            inputs = rng.integers(0, 1000, SLOTS)
            s.run(pool, inputs, self_completing=True)
            assert (s.values() == expected(inputs)).all()
    split = 1 if nth == 1 else parts  # one thread runs each op whole
    assert (s.parts_ran()[:, :split] == runs).all() and not s.parts_ran()[:, split:].any()
    assert s.by_thread()[:nth].sum() == runs * OPS * split and not s.by_thread()[nth:].any()
    assert s.ctx[ONCE] == runs


def test_thread_0_finishes_the_job_a_late_worker_has_not_started(steps):
    """Worker 1 is held before it enters its job: `run` returns all the same, thread 0 ran
    every part and the results are right; released, the worker enters the job that is over,
    finds nothing left to do, and the next job is shared and right."""
    s = steps[4]
    s.ctx[PARTS : ONCE + 1] = 0
    with Pool(2) as pool:
        pool.run(s.entry, s.ctx.ctypes.data)  # both threads started, and done: run waited
        s.ctx[PARTS:DELAY] = 0
        pool.hold(1)
        inputs = np.arange(SLOTS)
        s.run(pool, inputs, self_completing=True)
        assert (s.values() == expected(inputs)).all()
        assert list(s.by_thread()[:2]) == [OPS * 4, 0]
        assert list(s.entered()[:2]) == [1, 0]
        pool.release()
        wait_for(lambda: s.entered()[1] == 1)  # the late worker ran the entry ...
        time.sleep(0.01)
        assert s.by_thread()[1] == 0  # ... and took no part of it
        assert (s.parts_ran() == 1).all() and s.ctx[ONCE] == 1
        for _ in range(200):  # and the jobs after it are whole and right
            inputs = np.arange(SLOTS) * 3 + 1
            s.run(pool, inputs, self_completing=True)
            assert (s.values() == expected(inputs)).all()
        assert (s.parts_ran() == 201).all()


def test_a_worker_two_jobs_late_takes_nothing_from_either(steps):
    """Held across two jobs of two different entries, worker 1 enters the first one's
    entry after both are over: no part of either runs twice."""
    a, b = steps[4], steps[16]
    for s in (a, b):
        s.ctx[PARTS:DELAY] = 0
    with Pool(2) as pool:
        pool.hold(1)
        a.run(pool, np.ones(SLOTS, np.int64), self_completing=True)
        b.run(pool, np.ones(SLOTS, np.int64) * 2, self_completing=True)
        pool.release()
        wait_for(lambda: a.entered()[1] + b.entered()[1] >= 1)
        a.run(pool, np.ones(SLOTS, np.int64) * 5, self_completing=True)
        assert (a.values() == expected(np.ones(SLOTS, np.int64) * 5)).all()
        assert (b.values() == expected(np.ones(SLOTS, np.int64) * 2)).all()
        assert (a.parts_ran() == 2).all() and (b.parts_ran() == 1).all()
        assert b.by_thread()[1] == 0


@pytest.mark.parametrize("nth", [2, 3])
def test_back_to_back_jobs_with_random_delays_are_exact(steps, nth):
    """Thousands of jobs, parts of random lengths (some far longer than others), and with
    3 threads on this machine's CPUs the OS takes threads off their CPU at random: every
    result exact, every part run once."""
    s = steps[4]
    s.ctx[PARTS:WORDS] = 0
    rng = np.random.default_rng(nth)
    delays = rng.integers(0, 50, OPS * SLOTS)
    delays[rng.random(OPS * SLOTS) < 0.05] = 20000  # a part now and then takes much longer
    s.ctx[DELAY:WORDS] = delays
    runs = 2000
    with Pool(nth) as pool:
        for i in range(runs):
            inputs = rng.integers(0, 1 << 20, SLOTS)
            s.run(pool, inputs, self_completing=True)
            if i % 7 == 0:
                time.sleep(rng.random() * 1e-4)
            assert (s.values() == expected(inputs)).all(), f"job {i}"
    assert (s.parts_ran() == runs).all()
    assert s.by_thread()[:nth].sum() == runs * OPS * 4
    assert s.ctx[ONCE] == runs


def test_a_pool_that_waits_for_every_thread_runs_the_same_entry(steps):
    """Without self_completing, `run` waits for every worker: the same results."""
    s = steps[4]
    s.ctx[PARTS : ONCE + 1] = 0
    with Pool(2) as pool:
        for k in range(100):
            inputs = np.full(SLOTS, k)
            s.run(pool, inputs)
            assert (s.values() == expected(inputs)).all()
        assert list(s.entered()[:2]) == [100, 100]
    assert (s.parts_ran() == 100).all()


def parts_probe_entry(name: str) -> str:
    """`@probe(ctx, tid, nth)`: one op of kernel `name`, whose parts each store the part
    count they were given at ctx[IN + part]; the op's row count is ctx word BUF."""
    f = kernel_writer(name, 1)
    f.op(f"store i64 {f.i64('%nth')}, ptr {f.gep('%a0', f.i64('%tid'), 'i64')}, align 8")
    probe = finish_kernel(f, ("ctx",))
    e = FunctionWriter("probe", [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")], linkage="")
    kernels: dict = {}
    schedule = Scheduler(e, "%ctx", kernels)
    rows = e.load("i64", e.gep("%ctx", BUF, "i64"), 8)
    schedule.call(probe, [("ptr", e.gep("%ctx", IN, "i64")), ("i64", rows), ("i64", "0")])
    return module_ir([*kernels.values(), e.finish()])


@pytest.mark.parametrize("rows", [1, 4, 128])
def test_an_int8_matmul_of_several_rows_is_one_part_per_thread(rows):
    """Each part of an int8 matmul quantizes every activation row of the call: one row
    gets PARTS_PER_THREAD parts a thread, several rows one part a thread (more would
    repeat that work); a float matmul gets PARTS_PER_THREAD a thread at any row count."""
    from ckeir.backends.llvm.schedule import PARTS_PER_THREAD

    for name, int8 in (("qmatmul_probe", True), ("matmul_probe", False)):
        module = compile_ir(parts_probe_entry(name))
        raw = np.zeros(WORDS + 8, np.int64)
        ctx = raw[(-raw.ctypes.data % 64) // 8 :][:WORDS]
        ctx[BUF] = rows
        with Pool(2) as pool:
            pool.run(module.address("probe"), ctx.ctypes.data)
        want = 2 if int8 and rows > 1 else 2 * PARTS_PER_THREAD
        assert list(ctx[IN : IN + want]) == [want] * want, name
        assert not ctx[IN + want : IN + SLOTS].any(), name


def test_runs_of_any_width_in_any_order_are_exact(steps):
    """A 3-thread pool whose runs take 1, 2 or 3 threads at random (as `WidthPolicy`
    chooses them): every result exact, every part run once (a worker late for a run of
    one width never joins a run of another)."""
    s = steps[4]
    s.ctx[PARTS:WORDS] = 0
    rng = np.random.default_rng(5)
    runs, by_width = 600, {1: 0, 2: 0, 3: 0}
    with Pool(3) as pool:
        for i in range(runs):
            width = int(rng.integers(1, 4))
            by_width[width] += 1
            inputs = rng.integers(0, 1 << 20, SLOTS)
            s.run(pool, inputs, self_completing=True, width=width)
            assert (s.values() == expected(inputs)).all(), f"run {i} at width {width}"
    # width 1 runs each op whole, in one part; wider runs split it in 4
    assert (s.parts_ran()[:, 0] == runs).all()
    assert (s.parts_ran()[:, 1:] == runs - by_width[1]).all()
    assert s.ctx[ONCE] == runs


def test_a_worker_late_for_a_wide_run_stays_out_of_a_narrower_one(steps):
    """Worker 2 is held out of a run of width 3, then released while thread 0 and worker 1
    are inside a long run of width 2 of the same entry: it must not join that run (it would
    cut the ops by its own width); it finds its job stale and takes nothing."""
    s = steps[4]
    s.ctx[PARTS:WORDS] = 0
    with Pool(3) as pool:
        pool.run(s.entry, s.ctx.ctypes.data)  # every thread started
        s.ctx[PARTS:WORDS] = 0
        pool.hold(2)
        s.run(pool, np.ones(SLOTS, np.int64), self_completing=True, width=3)
        wait_for(pool.holding)  # worker 2 took that job and waits at the hold
        assert s.by_thread()[2] == 0
        s.ctx[DELAY:WORDS] = 50_000_000  # every part spins a while: the run lasts
        timer = threading.Timer(0.01, pool.release)  # released while the next run goes on
        timer.start()
        inputs = np.arange(SLOTS)
        t0 = time.perf_counter()
        s.run(pool, inputs, self_completing=True, width=2)
        timer.join()
        assert time.perf_counter() - t0 > 0.01  # (else the test proves nothing: not a bound)
        wait_for(lambda: s.entered()[2] == 1)  # the late worker ran its entry ...
        assert (s.values() == expected(inputs)).all()
        assert s.by_thread()[2] == 0  # ... and took no part of the narrower run
        assert (s.parts_ran() == 2).all()
