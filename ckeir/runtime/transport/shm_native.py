"""Native helpers of the shared-memory transport: chunk send/recv with atomics, doorbells.
The channel protocol itself (layout, publish, consume, ring) is defined once in
`backends.llvm.kernels.collective`, which a program's native entry also speaks.

A *channel* carries messages from one rank to another through `SLOTS` slots of
`slot_bytes` each.  Two counters, each on its own cache line, order everything:

    seq  chunks the sender has published   (written by the sender only)
    ack  chunks the receiver has consumed  (written by the receiver only)

Chunk `k` lives in slot `k % SLOTS`.  The sender may fill a slot once `ack > seq - SLOTS`
(acquire), writes the header and the bytes, then stores `seq + 1` (seq_cst); the receiver
waits for `seq > ack` (acquire), checks the header against what it expects, copies out, and
stores `ack + 1`.  Counters are i32 and compared modulo 2**32.

Every rank has a *doorbell* (an i32 counter plus a sleepers count on one cache line).
Whoever may have unblocked a rank rings its bell: the sender when the channel was empty
before its publish, the receiver when it was full before its consume.  A rank with nothing to
do reads its bell, re-checks its work, and then waits for the bell to change as every ckeir
wait does (`backends.llvm.wait`): spinning for `spin_ns`, offering the CPU after the yield
setting of the process, then asleep on a (process-shared) futex for at most `timeout_ns`, so
that the Python side regains control to check that its peers are alive.  The bell protocol
is the policy's: ringer = add bell (seq_cst), read sleepers; sleeper = add sleepers, re-read
bell (seq_cst), futex-wait on the value it saw.

Python calls one native function per chunk: round trips stay in the microseconds.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import attrs

from ckeir.backends.llvm import wait
from ckeir.backends.llvm.jit import CompiledModule, compile_ir
from ckeir.backends.llvm.kernels.collective import (
    BELL_SLEEPERS,
    CH_ACK,
    CH_DATA,
    CH_HDR,
    CH_SEQ,
    HDR_BYTES,
    HDR_TAG,
    HDR_TOTAL,
    SLOTS,
    consume,
    header_is,
    publish,
    reached,
    ring,
    slot,
    write_header,
)
from ckeir.backends.llvm.kernels.common import FunctionWriter

__all__ = ["CH_ACK", "CH_HDR", "HDR_BYTES", "HDR_TAG", "HDR_TOTAL", "SLOTS", "native", "native_ir"]

# Return codes of send/recv.
DONE, NOT_READY, MISMATCH = 0, 1, 2

# While spinning, offer the CPU (sched_yield) after this long: a process-wide setting (see
# `Native.set_yield_after`), from the wait budget the transport chose.
YIELD_AFTER = "cke_shm_yield_after_ns"
YIELD_AFTER_DEFAULT_NS = wait.ns(wait.MESSAGE.yield_after_s)


def channel_bytes(slot_bytes: int) -> int:
    """Bytes of one channel with slots of `slot_bytes` (page multiple)."""
    return CH_DATA + SLOTS * slot_bytes


# ---- IR pieces ---------------------------------------------------------------------------------


def _extern(name: str, params: list[tuple[str, str]], ret: str = "void") -> FunctionWriter:
    return FunctionWriter(name, params, ret=ret, linkage="", attributes="nounwind")


def _spin_until_reached(f: FunctionWriter, word: str, target: str, spin_ns: str) -> str:
    """Spin for at most `spin_ns` until the counter reaches `target`; the i1 outcome."""
    return wait.wait_until(f, lambda: reached(f, word, target), spin_ns, _yield_after(f))


def _yield_after(f: FunctionWriter) -> str:
    return f(f"load i64, ptr @{YIELD_AFTER}, align 8", "yield_after")


def _set_yield_ir() -> FunctionWriter:
    """`void cke_shm_set_yield_after(i64 ns)`."""
    f = _extern("cke_shm_set_yield_after", [("i64", "%ns")])
    f.op(f"store i64 %ns, ptr @{YIELD_AFTER}, align 8")
    return f


def _send_ir(slot_bytes: int) -> FunctionWriter:
    """`i32 cke_shm_send(ptr ch, ptr src, i64 n, i64 total, i32 tag, i64 spin_ns, ptr bell,
    i32 publish)`: copy one chunk into the next slot once one is free (spinning at most
    spin_ns); publish it (and ring the receiver's bell) unless `publish` is 0, in which case
    `cke_shm_publish` does it later.  DONE or NOT_READY."""
    f = _extern(
        "cke_shm_send",
        [
            ("ptr", "%ch"),
            ("ptr", "%src"),
            ("i64", "%n"),
            ("i64", "%total"),
            ("i32", "%tag"),
            ("i64", "%spin_ns"),
            ("ptr", "%bell"),
            ("i32", "%publish"),
        ],
        "i32",
    )
    seq = f(f"load atomic i32, ptr {f.gep('%ch', CH_SEQ, 'i8')} monotonic, align 4", "seq")
    free_at = f(f"sub i32 {seq}, {SLOTS - 1}")
    ok = _spin_until_reached(f, f.gep("%ch", CH_ACK, "i8"), free_at, "%spin_ns")
    with f.if_(f(f"xor i1 {ok}, true")):
        f.op(f"ret i32 {NOT_READY}")
        f.start(f.label("dead"))
    hdr, data = slot(f, "%ch", seq, slot_bytes)
    write_header(f, hdr, "%tag", "%n", "%total")
    f.memcpy(data, "%src", "%n")
    with f.if_(f("icmp ne i32 %publish, 0")):
        publish(f, "%ch", "%bell")
    f.op(f"ret i32 {DONE}")
    return f


def _publish_ir() -> FunctionWriter:
    """`void cke_shm_publish(ptr ch, ptr bell)`: make the chunk copied by a
    `cke_shm_send(..., publish=0)` visible."""
    f = _extern("cke_shm_publish", [("ptr", "%ch"), ("ptr", "%bell")])
    publish(f, "%ch", "%bell")
    return f


def _publish_at_ir() -> FunctionWriter:
    """`void cke_shm_publish_at(ptr ch, ptr bell, i64 due_ns)`: spin until CLOCK_MONOTONIC
    reaches due_ns, then publish — a shaped link's delivery time, met to well under a µs
    (the caller sleeps through all but the last ~PUBLISH_SPIN_S)."""
    f = _extern("cke_shm_publish_at", [("ptr", "%ch"), ("ptr", "%bell"), ("i64", "%due_ns")])
    head, pause, go = f.label("head"), f.label("pause"), f.label("go")
    f.br(head)
    f.start(head)
    f.cbr(f(f"icmp sge i64 {wait.now_ns(f)}, %due_ns"), go, pause)
    f.start(pause)
    wait.spin_hint(f)
    f.br(head)
    f.start(go)
    publish(f, "%ch", "%bell")
    return f


def _recv_ir(slot_bytes: int) -> FunctionWriter:
    """`i32 cke_shm_recv(ptr ch, ptr dst, i64 n, i64 total, i32 tag, i64 spin_ns, ptr bell)`:
    wait (spinning at most spin_ns) for the next chunk; if its header says (tag, n, total),
    copy it out, consume it and ring the sender's bell if it was blocked.  DONE, NOT_READY,
    or MISMATCH (the chunk is left in place for the caller to describe)."""
    f = _extern(
        "cke_shm_recv",
        [
            ("ptr", "%ch"),
            ("ptr", "%dst"),
            ("i64", "%n"),
            ("i64", "%total"),
            ("i32", "%tag"),
            ("i64", "%spin_ns"),
            ("ptr", "%bell"),
        ],
        "i32",
    )
    ack = f(f"load atomic i32, ptr {f.gep('%ch', CH_ACK, 'i8')} monotonic, align 4", "ack")
    ok = _spin_until_reached(f, f.gep("%ch", CH_SEQ, "i8"), f(f"add i32 {ack}, 1"), "%spin_ns")
    with f.if_(f(f"xor i1 {ok}, true")):
        f.op(f"ret i32 {NOT_READY}")
        f.start(f.label("dead"))
    hdr, data = slot(f, "%ch", ack, slot_bytes)
    with f.if_(f(f"xor i1 {header_is(f, hdr, '%tag', '%n', '%total')}, true")):
        f.op(f"ret i32 {MISMATCH}")
        f.start(f.label("dead"))
    f.memcpy("%dst", data, "%n")
    consume(f, "%ch", ack, "%bell")
    f.op(f"ret i32 {DONE}")
    return f


def _wait_ir() -> FunctionWriter:
    """`i32 cke_shm_wait(ptr bell, i32 seen, i64 spin_ns, i64 timeout_ns)`: wait until the
    bell differs from `seen` — spin for spin_ns, then sleep for at most timeout_ns; return
    the bell's value (still `seen` on a time-out)."""
    f = _extern(
        "cke_shm_wait",
        [("ptr", "%bell"), ("i32", "%seen"), ("i64", "%spin_ns"), ("i64", "%timeout_ns")],
        "i32",
    )
    sleep = wait.Sleep(
        "%bell", f.gep("%bell", BELL_SLEEPERS, "i8"), shared=True, nap_ns="%timeout_ns", once=True
    )

    def rung() -> str:
        return reached(f, "%bell", f("add i32 %seen, 1"))

    wait.wait_until(f, rung, "%spin_ns", _yield_after(f), sleep)
    f.op(f"ret i32 {f('load atomic i32, ptr %bell acquire, align 4')}")
    return f


def _ring_ir() -> FunctionWriter:
    """`void cke_shm_ring(ptr bell)`: wake a rank so that it re-checks the world state."""
    f = _extern("cke_shm_ring", [("ptr", "%bell")])
    ring(f, "%bell")
    return f


def _word_irs() -> list[FunctionWriter]:
    """Atomic i32 load (acquire), store (release) and compare-and-swap (seq_cst; returns
    the old value) for the world's state words."""
    load = _extern("cke_shm_load", [("ptr", "%p")], "i32")
    load.op(f"ret i32 {load('load atomic i32, ptr %p acquire, align 4')}")
    store = _extern("cke_shm_store", [("ptr", "%p"), ("i32", "%v")])
    store.op("store atomic i32 %v, ptr %p release, align 4")
    cas = _extern("cke_shm_cas", [("ptr", "%p"), ("i32", "%old"), ("i32", "%new")], "i32")
    pair = cas("cmpxchg ptr %p, i32 %old, i32 %new seq_cst seq_cst, align 4", "pair")
    cas.op(f"ret i32 {cas(f'extractvalue {{ i32, i1 }} {pair}, 0')}")
    return [load, store, cas]


def native_ir(slot_bytes: int) -> str:
    """The whole helper module for channels with `slot_bytes`-byte slots."""
    writers = [
        _send_ir(slot_bytes),
        _publish_ir(),
        _publish_at_ir(),
        _recv_ir(slot_bytes),
        _wait_ir(),
        _ring_ir(),
        *_word_irs(),
    ]
    writers.append(_set_yield_ir())
    declares = sorted({d for w in writers for d in w.declares})
    global_ = f"@{YIELD_AFTER} = internal global i64 {YIELD_AFTER_DEFAULT_NS}, align 8"
    return "\n".join([*declares, global_, *(w.finish() for w in writers)])


# ---- Python side -------------------------------------------------------------------------------

_p, _i32, _i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64


@attrs.frozen
class Native:
    """The compiled helpers as ctypes callables (GIL released during each call)."""

    module: CompiledModule
    send: Callable[..., int]  # (ch, src, n, total, tag, spin_ns, bell, publish) -> code
    publish: Callable[..., int]  # (ch, bell)
    publish_at: Callable[..., int]  # (ch, bell, due_ns)
    recv: Callable[..., int]  # (ch, dst, n, total, tag, spin_ns, bell) -> code
    wait: Callable[..., int]  # (bell, seen, spin_ns, timeout_ns) -> bell value
    ring: Callable[..., int]  # (bell)
    load: Callable[..., int]  # (word) -> value
    store: Callable[..., int]  # (word, value)
    cas: Callable[..., int]  # (word, old, new) -> previous value
    set_yield_after: Callable[..., int]  # (ns): spins yield the CPU after this long


@functools.cache
def native(slot_bytes: int) -> Native:
    cm = compile_ir(native_ir(slot_bytes))

    def fn(name: str, ret, *args):
        return ctypes.CFUNCTYPE(ret, *args)(cm.address(name))

    return Native(
        module=cm,
        send=fn("cke_shm_send", _i32, _p, _p, _i64, _i64, _i32, _i64, _p, _i32),
        publish=fn("cke_shm_publish", None, _p, _p),
        publish_at=fn("cke_shm_publish_at", None, _p, _p, _i64),
        recv=fn("cke_shm_recv", _i32, _p, _p, _i64, _i64, _i32, _i64, _p),
        wait=fn("cke_shm_wait", _i32, _p, _i32, _i64, _i64),
        ring=fn("cke_shm_ring", None, _p),
        load=fn("cke_shm_load", _i32, _p),
        store=fn("cke_shm_store", None, _p, _i32),
        cas=fn("cke_shm_cas", _i32, _p, _i32, _i32),
        set_yield_after=fn("cke_shm_set_yield_after", None, _i64),
    )
