"""How the threads of a native entry share its ops: parts claimed one at a time, and the wait
for an op's last part.  `schedule.Scheduler` emits the calls; this module holds the protocol.

Each op is split into `parts`; every thread loops claiming the next part (`@cke_claim`),
runs the kernel on it and counts it done (`@cke_done`); the op is over when every *part* is
done (`@cke_barrier` waits for that), whichever threads did them.  A thread the OS took off
its CPU delays only a part it holds: the others take the rest, and when it comes back it
finds the op's parts all taken and moves on.

The state (`BARRIER_STATE_BYTES` zeroed bytes, 64-byte aligned, one block per program) holds:

- `RUN` (i64): the run number (high half) and the id of the entry running it (low half),
  and beside it `WIDTH` (i32): how many threads the run has (its `nth`).  Thread 0 — the
  pool's caller — starts each run of an entry (`@cke_begin`); another thread joins the run
  it finds if it is a run of its own entry, as wide as its own job, that it has not joined
  yet (`SEEN`), waiting a few microseconds for thread 0 to start it; else its job is stale
  (its entry is over) and it leaves.  The width check keeps a worker late for a run of one
  width out of a later run of another (`Pool.run(width=)`): it would cut the ops into other
  parts.  A run of width 1 is joined by nobody.
- `OP` (i64): the op in progress as (sequence 40 bits, parts claimed 12, parts done 12).
  An op's sequence is (run, index of the op in its entry), so a thread that is late — it
  still holds the sequence of an op that is over, or of a run that is over — finds a later
  sequence in the word and can neither claim nor count anything: claims are compare-and-
  swaps on the whole word, and a part is counted done only by the thread that claimed it,
  while the op cannot end.  The first thread to claim a part of the next op opens it
  (the op before it is over: that thread waited for it).
- `SLEEPERS` (i32): threads asleep on the low half of `OP` (the part count changes there),
  woken by the thread that finishes the op's last part (`wait.BARRIER`'s policy: spin,
  offer the CPU, then sleep).
- `SEEN` (i64 per thread): the last run each thread joined.

The functions stay out of line (FunctionWriter's `noinline`): inlined into an entry of
hundreds of ops, their loops made LLVM's optimization superlinear (400 ops: 34 s, not 1 s).

A thread whose job is stale gets run -1 from `@cke_begin`: its claims and waits return at
once (sequences are negative).
"""

from __future__ import annotations

import zlib

from ckeir.backends.llvm import wait
from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel

RUN_AT, WIDTH_AT, OP_AT, SLEEPERS_AT, SEEN_AT = 0, 8, 64, 128, 192
SEEN_SLOTS = 64  # threads beyond it share slots: at worst one joins a run it cannot help
BARRIER_STATE_BYTES = SEEN_AT + 8 * SEEN_SLOTS

PART_BITS = 12  # claimed and done counts: at most MAX_PARTS parts per op
MAX_PARTS = (1 << PART_BITS) - 1
OP_BITS = 12  # ops per entry
MAX_OPS = (1 << OP_BITS) - 1
SEQ_BITS = 40  # (run, op) in the OP word; runs wrap after 2**28, compared modulo 2**40
SEQ_SHIFT = 2 * PART_BITS
COUNT_MASK = MAX_PARTS

BARRIER, CLAIM, DONE, BEGIN = "cke_barrier", "cke_claim", "cke_done", "cke_begin"


def entry_id(symbol: str) -> int:
    """A nonzero 32-bit tag of an entry, for the RUN word."""
    return zlib.crc32(symbol.encode()) or 1


def op_sequence(f: FunctionWriter, run: str, index: int) -> str:
    """The i64 sequence of op `index` (1..MAX_OPS) of the run `run` (an i64 from begin)."""
    return f(f"or i64 {f(f'shl i64 {run}, {OP_BITS}')}, {index}", "seq")


def _op_word(f: FunctionWriter) -> str:
    return f.gep("%state", OP_AT, "i8")


def _ahead(f: FunctionWriter, word: str, seq: str) -> str:
    """i64: how far the op in `word` is past `seq` (negative: not open yet), modulo 2**40."""
    diff = f(f"sub i64 {f(f'lshr i64 {word}, {SEQ_SHIFT}')}, {seq}")
    pad = 64 - SEQ_BITS
    return f(f"ashr i64 {f(f'shl i64 {diff}, {pad}')}, {pad}", "ahead")


def claim() -> Kernel:
    """`i32 @cke_claim(ptr state, i64 seq, i32 parts)`: the index of a part of op `seq` no
    thread has yet, taken; -1 when there is none (all taken, or the op is over)."""
    f = FunctionWriter(CLAIM, [("ptr", "%state"), ("i64", "%seq"), ("i32", "%parts")], ret="i32")
    op = _op_word(f)
    head, fresh, open_, try_, none = (f.label(x) for x in ("head", "fresh", "open", "try", "none"))
    word = f.var("i64", "0", "word")
    got, new = f.var("i64", "0", "got"), f.var("i64", "0", "new")
    load = f.label("load")
    f.cbr(f("icmp slt i64 %seq, 0", "stale"), none, load)
    f.start(load)
    f.set(word, f(f"load atomic i64, ptr {op} acquire, align 8"))
    f.br(head)
    f.start(head)
    w = f.get(word)
    ahead = _ahead(f, w, "%seq")
    f.cbr(f(f"icmp sgt i64 {ahead}, 0"), none, fresh)
    f.start(fresh)
    # not open yet: open it with part 0 taken
    f.set(got, "0")
    f.set(new, f(f"or i64 {f(f'shl i64 %seq, {SEQ_SHIFT}')}, {1 << PART_BITS}"))
    f.cbr(f(f"icmp slt i64 {ahead}, 0"), try_, open_)
    f.start(open_)
    taken = f(f"and i64 {f(f'lshr i64 {w}, {PART_BITS}')}, {COUNT_MASK}", "taken")
    f.set(got, taken)
    f.set(new, f(f"add i64 {w}, {1 << PART_BITS}"))
    f.cbr(f(f"icmp sge i64 {taken}, {f('zext i32 %parts to i64')}"), none, try_)
    f.start(try_)
    pair = f(f"cmpxchg ptr {op}, i64 {w}, i64 {f.get(new)} acq_rel acquire, align 8", "cas")
    f.set(word, f(f"extractvalue {{ i64, i1 }} {pair}, 0"))
    won = f(f"extractvalue {{ i64, i1 }} {pair}, 1")
    mine = f.label("mine")
    f.cbr(won, mine, head)
    f.start(mine)
    f.op(f"ret i32 {f(f'trunc i64 {f.get(got)} to i32')}")
    f.start(none)
    f.op("ret i32 -1")
    return Kernel(name=CLAIM, args=("state",), ir=f.finish(), declares=frozenset(f.declares))


def done() -> Kernel:
    """`void @cke_done(ptr state, i32 parts)`: a part this thread claimed is done; the thread
    finishing the op's last part wakes the threads asleep in `@cke_barrier`."""
    f = FunctionWriter(DONE, [("ptr", "%state"), ("i32", "%parts")])
    op = _op_word(f)
    old = f(f"atomicrmw add ptr {op}, i64 1 seq_cst, align 8", "old")
    count = f(f"add i64 {f(f'and i64 {old}, {COUNT_MASK}')}, 1")
    with f.if_(f(f"icmp eq i64 {count}, {f('zext i32 %parts to i64')}", "last")):
        wait.wake_sleepers(
            f, op, f.gep("%state", SLEEPERS_AT, "i8"), shared=False, count=wait.WAKE_ALL
        )
    return Kernel(name=DONE, args=("state",), ir=f.finish(), declares=frozenset(f.declares))


def barrier() -> Kernel:
    """`void @cke_barrier(ptr state, i64 seq, i32 parts)`: wait until every part of op `seq`
    is done (`wait.BARRIER`; asleep on the low half of OP, which the last part changes)."""
    f = FunctionWriter(BARRIER, [("ptr", "%state"), ("i64", "%seq"), ("i32", "%parts")])
    op = _op_word(f)
    parts = f("zext i32 %parts to i64")

    stale = f("icmp slt i64 %seq, 0", "stale")  # a thread whose job is over waits for nothing

    def over() -> str:
        w = f(f"load atomic i64, ptr {op} acquire, align 8", "word")
        ahead = _ahead(f, w, "%seq")
        all_done = f(f"icmp eq i64 {f(f'and i64 {w}, {COUNT_MASK}')}, {parts}")
        here = f(f"and i1 {f(f'icmp eq i64 {ahead}, 0')}, {all_done}")
        passed = f(f"or i1 {f(f'icmp sgt i64 {ahead}, 0')}, {here}")
        return f(f"or i1 {passed}, {stale}", "over")

    budget = wait.BARRIER
    wait.wait_until(
        f,
        over,
        str(wait.ns(budget.spin_s)),
        str(wait.ns(budget.yield_after_s)),
        wait.Sleep(op, f.gep("%state", SLEEPERS_AT, "i8"), False, str(wait.ns(budget.nap_s))),
    )
    return Kernel(name=BARRIER, args=("state",), ir=f.finish(), declares=frozenset(f.declares))


def begin() -> Kernel:
    """`i64 @cke_begin(ptr state, i32 tid, i32 entry, i32 nth)`: the run this thread takes
    part in (the first argument of `op_sequence`), or -1 when it has none (its job is
    stale).

    Thread 0 starts a new run of `entry` on `nth` threads.  Another thread joins the run in
    RUN if it is a run of `entry` on `nth` threads it has not joined; otherwise thread 0
    has not started this job's run yet (it does so nanoseconds after publishing the job),
    so it waits for RUN to change, for `wait.RUN_START` at most, spinning only: a stale
    thread must not sleep on a run nobody will start.  (A thread that reads RUN, then a
    WIDTH thread 0 already wrote for the next run, may join a run that is over: it finds
    every part of it taken.)"""
    f = FunctionWriter(
        BEGIN,
        [("ptr", "%state"), ("i32", "%tid"), ("i32", "%tag"), ("i32", "%nth")],
        ret="i64",
    )
    run_p = f.gep("%state", RUN_AT, "i8")
    width_p = f.gep("%state", WIDTH_AT, "i8")
    entry = f("zext i32 %tag to i64")
    first, other = f.label("first"), f.label("other")
    f.cbr(f("icmp eq i32 %tid, 0"), first, other)
    f.start(first)
    old = f(f"load atomic i64, ptr {run_p} monotonic, align 8")  # only thread 0 writes it
    run = f(f"add i64 {f(f'lshr i64 {old}, 32')}, 1", "run")
    run = f(f"and i64 {run}, {(1 << 32) - 1}")
    tagged = f(f"or i64 {f(f'shl i64 {run}, 32')}, {entry}")
    f.op(f"store atomic i32 %nth, ptr {width_p} monotonic, align 4")
    f.op(f"store atomic i64 {tagged}, ptr {run_p} seq_cst, align 8")  # releases WIDTH too
    f.op(f"ret i64 {run}")
    f.start(other)
    slot = f(f"urem i64 {f('zext i32 %tid to i64')}, {SEEN_SLOTS}")
    seen_p = f.gep(f.gep("%state", SEEN_AT, "i8"), slot, "i64")
    seen = f.load("i64", seen_p, 8)
    now = f.var("i64", "0", "now")

    def joinable() -> str:
        w = f(f"load atomic i64, ptr {run_p} acquire, align 8", "run")
        f.set(now, w)
        mine = f(f"icmp eq i64 {f(f'and i64 {w}, {(1 << 32) - 1}')}, {entry}")
        wide = f(f"load atomic i32, ptr {width_p} monotonic, align 4", "wide")
        mine = f(f"and i1 {mine}, {f(f'icmp eq i32 {wide}, %nth')}")
        return f(f"and i1 {mine}, {f(f'icmp ne i64 {w}, {seen}')}", "joinable")

    budget = wait.RUN_START
    ok = wait.wait_until(
        f, joinable, str(wait.ns(budget.spin_s)), str(wait.ns(budget.yield_after_s))
    )
    join, stale = f.label("join"), f.label("stale")
    f.cbr(ok, join, stale)
    f.start(join)
    w = f.get(now)
    f.store("i64", w, seen_p, 8)
    f.op(f"ret i64 {f(f'lshr i64 {w}, 32')}")
    f.start(stale)
    f.op("ret i64 -1")
    return Kernel(name=BEGIN, args=("state",), ir=f.finish(), declares=frozenset(f.declares))


def protocol() -> list[Kernel]:
    """Every function the scheduled entries call."""
    return [begin(), claim(), done(), barrier()]
