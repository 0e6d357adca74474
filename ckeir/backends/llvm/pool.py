"""A persistent pool of threads running one native entry `void fn(ptr ctx, i32 tid, i32 nth)`.

`pool.run(fn, ctx)` runs fn on `nth` threads: the calling thread is tid 0, workers 1..nth-1
persist across calls.  Dispatch and waiting are JIT-compiled (`_native_ir`), so one `run`
is a single ctypes call that releases the GIL and returns when every thread is done:

- the caller publishes fn/ctx, bumps a generation word (seq_cst) and runs its own share;
- each worker, parked inside one long ctypes call, waits for the generation to change as
  every ckeir wait does (`wait.POOL_JOB`: spin ≈ 0.4 ms, offering the CPU after 50 µs, then
  sleep on a futex); the caller makes the futex wake system call only when some worker is
  asleep;
- the caller waits the same way (`wait.POOL_DONE`) until every worker has counted itself
  done.

A run may take fewer threads than the pool has (`run(..., width=w)`: threads 0..w-1, and fn
sees `nth` = w); a run of width 1 is a plain call on the caller's thread, with no job
published.  `width.WidthPolicy` chooses the width of an engine's runs from measured time.

Failures never hang the caller: an exception raised by a Python callable run on the pool
is caught in its thread and re-raised by `run` as a `BackendError`; a worker thread that
dies sets a `failed` word that the caller's wait checks (it sleeps in naps of 10 ms),
and `run` raises.

Per-call overhead of an empty native fn (`measure_overhead`; Zen 4 VM, 2 cores, Python
3.11): ≈ 0.5-0.65 µs with 1 thread and ≈ 0.65 µs with 2 while the worker spins (calls less
than ~0.5 ms apart); 30-100 µs when the worker had gone to sleep (futex wake-up); tens of
µs or more whenever another process holds the worker's core (it waits for a time slice).
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
import weakref
from collections.abc import Callable

from ckeir.backends.llvm import wait
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import CompiledModule, compile_ir
from ckeir.backends.llvm.kernels.common import FunctionWriter
from ckeir.errors import BackendError

ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)

# Control block offsets: the words threads contend on each get a cache line.
GEN, DONE, SLEEPERS, CALLER_SLEEPS, HOLD, HOLD_SLEEPERS = 0, 64, 128, 192, 256, 260
# WIDTH: the job's width; threads 0..width-1 run it, the others leave it alone
FN, CTX, MODE, WIDTH, SHUTDOWN, FAILED, SPIN_NS, YIELD_NS = 320, 328, 336, 340, 344, 348, 352, 360
CTL_BYTES = 384
WAIT_ALL, SELF_COMPLETING = 0, 1  # MODE: does the caller wait for every worker?


# ---- native side ------------------------------------------------------------------------------


class _Ctl:
    """Typed access to the control block fields from IR."""

    def __init__(self, f: FunctionWriter):
        self.f = f

    def ptr(self, offset: int) -> str:
        return self.f.gep("%ctl", offset, "i8")

    def load(self, offset: int, order: str = "acquire", ty: str = "i32") -> str:
        align = 8 if ty != "i32" else 4
        return self.f(f"load atomic {ty}, ptr {self.ptr(offset)} {order}, align {align}", "w")

    def store(self, offset: int, value: str, order: str = "seq_cst", ty: str = "i32") -> None:
        align = 8 if ty != "i32" else 4
        self.f.op(f"store atomic {ty} {value}, ptr {self.ptr(offset)} {order}, align {align}")

    def add(self, offset: int, delta: int) -> None:
        self.f(f"atomicrmw add ptr {self.ptr(offset)}, i32 {delta} seq_cst, align 4")

    def wait(self, ready: Callable[[], str], word: int, sleepers: int, budget: wait.Budget) -> None:
        """Wait until `ready()` as every ckeir wait does: spin and yield as the pool's
        budget stored in the control block says (crowded or not), then sleep on `word`
        in naps of `budget.nap_s`, announcing the sleep on `sleepers`."""
        f = self.f
        spin_ns = f.load("i64", self.ptr(SPIN_NS), 8)
        yield_ns = f.load("i64", self.ptr(YIELD_NS), 8)
        nap = str(wait.ns(budget.nap_s))
        sleep = wait.Sleep(self.ptr(word), self.ptr(sleepers), shared=False, nap_ns=nap)
        wait.wait_until(f, ready, spin_ns, yield_ns, sleep)

    def wake(self, word: int, sleepers: int, count: int) -> None:
        wait.wake_sleepers(self.f, self.ptr(word), self.ptr(sleepers), False, count)


def _worker_ir() -> FunctionWriter:
    """`void cke_pool_worker(ptr ctl, i32 tid)`: wait for a job, run it, repeat until
    shutdown.  A job narrower than the pool (WIDTH <= tid) is not this worker's: it skips it.

    GEN is a sequence lock over the job (FN, CTX, MODE, WIDTH): odd while the caller writes it,
    the job's even number once published.  A worker reads the job between two reads of GEN
    and takes it only if both are the same even number, so one that wakes up jobs late
    takes the latest job whole, never one job's fn with another's ctx.  It counts itself
    in DONE (tagged with the job's number) only for a job whose caller waits for it."""
    f = FunctionWriter(
        "cke_pool_worker", [("ptr", "%ctl"), ("i32", "%tid")], linkage="", attributes="nounwind"
    )
    c = _Ctl(f)
    seen = f.var("i32", "0", "seen")
    head, read, check, mine, held, run, count, out = (
        f.label(x) for x in ("head", "read", "check", "mine", "held", "run", "count", "out")
    )
    f.br(head)
    f.start(head)

    def published() -> str:
        g = c.load(GEN)
        fresh = f(f"icmp ne i32 {g}, {f.get(seen)}")
        even = f(f"icmp eq i32 {f(f'and i32 {g}, 1')}, 0")
        return f(f"and i1 {fresh}, {even}")

    c.wait(published, GEN, SLEEPERS, wait.POOL_JOB)
    job = c.load(GEN)
    f.cbr(f(f"icmp ne i32 {c.load(SHUTDOWN)}, 0"), out, read)
    f.start(read)
    fn = f(f"inttoptr i64 {c.load(FN, 'monotonic', 'i64')} to ptr", "fn")
    ctx = f(f"inttoptr i64 {c.load(CTX, 'monotonic', 'i64')} to ptr", "ctx")
    mode = c.load(MODE, "monotonic")
    width = c.load(WIDTH, "monotonic")
    f.op("fence acquire")
    odd = f(f"icmp ne i32 {f(f'and i32 {job}, 1')}, 0")
    moved = f(f"icmp ne i32 {c.load(GEN, 'monotonic')}, {job}")
    torn = f(f"or i1 {odd}, {moved}")
    f.cbr(torn, head, check)  # the caller was writing a newer job: read it again
    f.start(check)
    f.set(seen, job)
    f.cbr(f(f"icmp slt i32 %tid, {width}"), mine, head)  # beyond the job's width: not ours
    f.start(mine)
    f.cbr(f(f"icmp eq i32 {c.load(HOLD)}, %tid"), held, run)
    f.start(held)  # a test holds this worker back before it enters its job
    c.wait(lambda: f(f"icmp ne i32 {c.load(HOLD)}, %tid"), HOLD, HOLD_SLEEPERS, wait.POOL_DONE)
    f.cbr(f(f"icmp ne i32 {c.load(SHUTDOWN)}, 0"), out, run)
    f.start(run)
    f.op(f"call void {fn}(ptr {ctx}, i32 %tid, i32 {width})")
    f.cbr(f(f"icmp eq i32 {mode}, {WAIT_ALL}"), count, head)
    f.start(count)
    _count_done(f, c, job)
    f.br(head)
    f.start(out)
    return f


def _count_done(f: FunctionWriter, c: _Ctl, job: str) -> None:
    """DONE += 1 if DONE is still job `job`'s count (it always is: its caller waits), then
    wake the caller if it sleeps."""
    done = c.ptr(DONE)
    word = f.var("i64", f(f"load atomic i64, ptr {done} acquire, align 8"), "done")
    head, bump, out = f.label("tally"), f.label("bump"), f.label("tallied")
    f.br(head)
    f.start(head)
    w = f.get(word)
    ours = f(f"icmp eq i64 {f(f'lshr i64 {w}, 32')}, {f(f'zext i32 {job} to i64')}")
    f.cbr(ours, bump, out)
    f.start(bump)
    pair = f(f"cmpxchg ptr {done}, i64 {w}, i64 {f(f'add i64 {w}, 1')} seq_cst seq_cst, align 8")
    f.set(word, f(f"extractvalue {{ i64, i1 }} {pair}, 0"))
    f.cbr(f(f"extractvalue {{ i64, i1 }} {pair}, 1"), out, head)
    f.start(out)
    c.wake(DONE, CALLER_SLEEPS, 1)


def _run_ir() -> FunctionWriter:
    """`i32 cke_pool_run(ptr ctl, ptr fn, ptr ctx, i32 mode, i32 width)`: run fn on threads
    0..width-1 — publish the job, run tid 0, wait for the workers unless the job is
    SELF_COMPLETING — and return the FAILED word (0 = every thread that had to finish did).
    A job of width 1 is a plain call of fn on this thread: nothing is published, and the
    workers sleep on (or spin out their budget and then sleep)."""
    f = FunctionWriter(
        "cke_pool_run",
        [("ptr", "%ctl"), ("ptr", "%fn"), ("ptr", "%ctx"), ("i32", "%mode"), ("i32", "%width")],
        ret="i32",
        linkage="",
        attributes="nounwind",
    )
    c = _Ctl(f)
    alone, publish, out = f.label("alone"), f.label("publish"), f.label("out")
    f.cbr(f("icmp sle i32 %width, 1"), alone, publish)
    f.start(alone)
    f.op("call void %fn(ptr %ctx, i32 0, i32 1)")
    f.br(out)
    f.start(publish)
    g = c.load(GEN, "monotonic")  # only the caller writes GEN
    c.store(GEN, f(f"add i32 {g}, 1"), "monotonic")  # odd: the job is being written
    f.op("fence release")
    c.store(FN, f("ptrtoint ptr %fn to i64"), "monotonic", "i64")
    c.store(CTX, f("ptrtoint ptr %ctx to i64"), "monotonic", "i64")
    c.store(MODE, "%mode", "monotonic")
    c.store(WIDTH, "%width", "monotonic")
    job = f(f"add i32 {g}, 2", "job")
    c.store(DONE, f(f"shl i64 {f(f'zext i32 {job} to i64')}, 32"), "monotonic", "i64")
    c.store(GEN, job)  # seq_cst: publishes the job, and orders against SLEEPERS below
    c.wake(GEN, SLEEPERS, wait.WAKE_ALL)
    f.op("call void %fn(ptr %ctx, i32 0, i32 %width)")
    waits = f.label("waits")
    f.cbr(f(f"icmp eq i32 %mode, {WAIT_ALL}"), waits, out)
    f.start(waits)
    workers = f(f"zext i32 {f('sub i32 %width, 1')} to i64")
    tag = f(f"shl i64 {f(f'zext i32 {job} to i64')}, 32")
    want = f(f"or i64 {tag}, {workers}")

    def finished() -> str:  # every worker done, or one of them failed
        done = f(f"icmp eq i64 {c.load(DONE, ty='i64')}, {want}")
        return f(f"or i1 {done}, {f(f'icmp ne i32 {c.load(FAILED)}, 0')}")

    c.wait(finished, DONE, CALLER_SLEEPS, wait.POOL_DONE)
    f.br(out)
    f.start(out)
    f.op(f"ret i32 {c.load(FAILED)}")
    return f


def _stop_ir() -> FunctionWriter:
    """`void cke_pool_stop(ptr ctl)`: ask the workers to leave their loop, wake sleepers."""
    f = FunctionWriter("cke_pool_stop", [("ptr", "%ctl")], linkage="", attributes="nounwind")
    c = _Ctl(f)
    c.store(SHUTDOWN, "1")
    c.store(HOLD, "0")
    c.add(GEN, 2)  # stays even: a published (empty) job
    wait.futex_wake(f, c.ptr(GEN), wait.WAKE_ALL, shared=False)
    wait.futex_wake(f, c.ptr(HOLD), wait.WAKE_ALL, shared=False)
    return f


def _native_ir() -> str:
    writers = [_worker_ir(), _run_ir(), _stop_ir()]
    declares = sorted({d for w in writers for d in w.declares})
    return "\n".join([*declares, *(w.finish() for w in writers)])


@functools.cache
def _native(host: HostCPU) -> tuple[CompiledModule, Callable, Callable, Callable]:
    cm = compile_ir(_native_ir(), host)
    worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32)(cm.address("cke_pool_worker"))
    run = ctypes.CFUNCTYPE(
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int32,
        ctypes.c_int32,
    )(cm.address("cke_pool_run"))
    stop = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(cm.address("cke_pool_stop"))
    return cm, worker, run, stop


# ---- Python side ------------------------------------------------------------------------------


class _Shared:
    """What the worker threads hold (not the Pool itself, so an unclosed Pool is collected)."""

    def __init__(self, nth: int, host: HostCPU):
        self.buf = ctypes.create_string_buffer(CTL_BYTES + 64)
        self.ctl = (ctypes.addressof(self.buf) + 63) // 64 * 64
        # one spin for both waits (POOL_DONE differs from POOL_JOB only in its naps)
        budget = wait.POOL_JOB.for_waiters(nth, host.cores)
        ctypes.c_int64.from_address(self.ctl + SPIN_NS).value = wait.ns(budget.spin_s)
        ctypes.c_int64.from_address(self.ctl + YIELD_NS).value = wait.ns(budget.yield_after_s)
        self.module, self.worker, self.run, self.stop = _native(host)
        self.errors: list[tuple[int, BaseException]] = []
        self.lock = threading.Lock()
        self.native_ids: dict[int, int] = {}  # worker tid -> the kernel's thread id

    def fail(self, tid: int, exc: BaseException) -> None:
        with self.lock:
            self.errors.append((tid, exc))
        ctypes.c_int32.from_address(self.ctl + FAILED).value = 1

    def enter(self, tid: int) -> None:
        self.native_ids[tid] = threading.get_native_id()
        try:
            self.worker(self.ctl, tid)
        except BaseException as e:  # noqa: BLE001 - reported to the caller by run()
            self.fail(tid, e)


def _shutdown(shared: _Shared, threads: list[threading.Thread]) -> None:
    shared.stop(shared.ctl)
    for t in threads:
        t.join(timeout=5.0)


class Pool:
    """`nth` threads (the caller + nth-1 persistent workers) running native entries.

    One `run` at a time: the pool is driven by a single Python thread (the one whose calls
    become tid 0)."""

    def __init__(self, nth: int, host: HostCPU | None = None):
        if nth < 1:
            raise BackendError(f"a thread pool needs at least 1 thread, got {nth}")
        self.nth = nth
        self._shared = _Shared(nth, host or detect_host())
        self._threads = [
            threading.Thread(
                target=self._shared.enter, args=(tid,), name=f"ckeir-pool-{tid}", daemon=True
            )
            for tid in range(1, nth)
        ]
        for t in self._threads:
            t.start()
        self._closer = weakref.finalize(self, _shutdown, self._shared, self._threads)
        self._broken: str | None = None

    def run(
        self,
        fn: int | Callable[[int, int, int], None],
        ctx: int = 0,
        *,
        self_completing: bool = False,
        width: int | None = None,
    ) -> None:
        """Run `fn(ctx, tid, width)` on threads 0..width-1 (default: every thread); return
        when all are done.

        `fn` is the address of a native entry, or a Python callable (run through a ctypes
        trampoline; its exceptions are re-raised here).  `self_completing`: fn is an entry
        whose ops are shared out in parts (`schedule.Scheduler`), so the job is done when
        thread 0 returns from it, and `run` returns then, without waiting for a worker
        that has not even started (it will find nothing left to do).  `width` 1 calls fn
        on this thread and publishes nothing (`width.WidthPolicy` chooses it per run)."""
        if not self._closer.alive:
            raise BackendError("this thread pool is closed")
        if self._broken:
            raise BackendError(f"this thread pool is unusable: {self._broken}")
        width = self.nth if width is None else width
        if not 1 <= width <= self.nth:
            raise BackendError(f"a run of this pool takes 1 to {self.nth} threads, not {width}")
        keep = None
        if callable(fn):
            if self_completing:  # a late worker would call a trampoline already freed
                raise BackendError("a Python callable cannot be run self-completing")
            keep = ENTRY(self._trampoline(fn))
            fn = ctypes.cast(keep, ctypes.c_void_p).value
        mode = SELF_COMPLETING if self_completing else WAIT_ALL
        failed = self._shared.run(self._shared.ctl, fn, ctx, mode, width)
        del keep
        if failed or self._shared.errors:
            self._raise(bool(failed))

    def jobs(self) -> int:
        """Jobs published to the workers so far (a run of width 1 publishes none)."""
        return ctypes.c_uint32.from_address(self._shared.ctl + GEN).value // 2

    def hold(self, tid: int) -> None:
        """For tests: keep worker `tid` from entering the next job it takes until `release`
        (a worker the OS is slow to run)."""
        ctypes.c_int32.from_address(self._shared.ctl + HOLD).value = tid

    def holding(self) -> bool:
        """For tests: whether the worker `hold` names took a job and waits (asleep) at the
        hold."""
        return ctypes.c_int32.from_address(self._shared.ctl + HOLD_SLEEPERS).value > 0

    def release(self) -> None:
        ctypes.c_int32.from_address(self._shared.ctl + HOLD).value = 0

    def thread_ids(self) -> dict[int, int]:
        """tid -> the Linux thread id of every thread that runs this pool's jobs (tid 0 is
        the thread that calls `run`: the one asking, here)."""
        for t in self._threads:  # each worker records its id as it starts
            while (
                t.is_alive()
                and t.name
                and int(t.name.rsplit("-", 1)[1]) not in (self._shared.native_ids)
            ):
                time.sleep(1e-4)
        return {0: threading.get_native_id(), **self._shared.native_ids}

    def _trampoline(
        self, fn: Callable[[int, int, int], None]
    ) -> Callable[[int | None, int, int], None]:
        shared = self._shared

        def call(ctx: int | None, tid: int, nth: int) -> None:
            try:
                fn(ctx or 0, tid, nth)
            except BaseException as e:  # noqa: BLE001 - re-raised by run()
                with shared.lock:
                    shared.errors.append((tid, e))

        return call

    def _raise(self, worker_died: bool) -> None:
        with self._shared.lock:
            errors, self._shared.errors[:] = list(self._shared.errors), []
        tid, exc = errors[0] if errors else (-1, None)
        if worker_died:
            self._broken = f"worker thread {tid} failed: {exc!r}"
            raise BackendError(self._broken) from exc
        raise BackendError(f"thread {tid} of {self.nth} raised {exc!r}") from exc

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure_overhead(nth: int, calls: int = 20000, host: HostCPU | None = None) -> float:
    """Seconds per `run` of an empty native entry (back-to-back calls)."""
    cm = compile_ir("define void @nop(ptr %c, i32 %t, i32 %n) {\n  ret void\n}\n", host)
    nop = cm.address("nop")
    with Pool(nth, host) as pool:
        for _ in range(100):
            pool.run(nop)
        t0 = time.perf_counter()
        for _ in range(calls):
            pool.run(nop)
        return (time.perf_counter() - t0) / calls
