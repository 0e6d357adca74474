"""Messages between local ranks from JIT-compiled code: the shared-memory channel protocol, and
the helpers a program's native entry calls to run `dist.allreduce` / `dist.allgather` inside
one native call per token.

**Channels.**  A channel carries messages from one rank to another through `SLOTS` slots.
Two counters, each on its own cache line, order everything:

    seq  chunks the sender has published   (written by the sender only)
    ack  chunks the receiver has consumed  (written by the receiver only)

Chunk `k` lives in slot `k % SLOTS`.  The sender may fill a slot once `ack > seq - SLOTS`
(acquire), writes the header (tag, chunk bytes, message bytes) and the bytes, then stores
`seq + 1` (seq_cst) and rings the receiver's doorbell if the channel was empty; the receiver
waits for `seq > ack` (acquire), checks the header, reads the bytes, stores `ack + 1` and
rings the sender's bell if the channel was full.  Counters are i32, compared modulo 2**32.
A *doorbell* is an i32 counter and a count of its sleepers on one cache line: a rank with
nothing to do sleeps on its own bell (`wait.Sleep`).  The local transport
(`runtime.transport.shm_native`) speaks the same protocol over the same channels, so a
message sent here is received there and the other way round, in one order.

**Collectives in a native entry.**  The runtime gives a program a *comm block* (ctx slot
`comm`, i64 words, layout below): where the world's failure word, this rank's bell and each
peer's channels, bell and state word are; the wait budget; the tags; where to record each
collective's times and bytes; and a status word.  An allreduce over group g is one message of
the whole buffer to every other member (one chunk: the runtime takes this path only when it
fits a slot), then the sum in group order `((x[g0] + x[g1]) + x[g2]) ...` read straight from
the peers' slots, so every member gets the same bits as the transport's own allreduce.  An
allgather sends the member's slice padded to the widest (what the IR states) and copies the
members' slices out of the slots in group order.  Over a simulated link (`--simulate-links`:
the comm block gives each peer's latency and picoseconds per byte) a send publishes its
message only when the link would have delivered it, from the collective's start, as the
transport's own sends over a shaped link do: a run over simulated links keeps its one native
call per token.

A wait also ends when the world has failed (the launcher, a watchdog or a failing rank set
the failure word and rang every bell) or when the peer has finished or failed: the helper
then sets the status word and every later helper does nothing, so the entry runs to its end
at once and the runtime raises, naming the failure.  The helpers are single-threaded (the
entry calls them inside `Scheduler.once`); the sums and copies are ordinary kernels split in
parts.
"""

from __future__ import annotations

from ckeir.backends.llvm import wait
from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel

SLOTS = 2  # slots per channel: the sender fills one while the receiver drains the other

# Channel layout (bytes from the channel's start).
CH_SEQ, CH_ACK, CH_HDR = 0, 64, 128
HDR_BYTES = 64  # per slot: tag i32 @0, chunk bytes i64 @8, message bytes i64 @16
HDR_TAG, HDR_NBYTES, HDR_TOTAL = 0, 8, 16
CH_DATA = 4096  # slot data, page aligned (CH_HDR + SLOTS * HDR_BYTES fits before it)

# Doorbell layout (bytes from the bell's start): the counter and how many sleep on it.
BELL, BELL_SLEEPERS = 0, 4
BELL_BYTES = 64

assert CH_HDR + SLOTS * HDR_BYTES <= CH_DATA

# ---- the comm block (i64 words) ------------------------------------------------------------

(
    C_STATUS,  # 0 while every collective went well, else one of the codes below
    C_STEP,  # the collective (index in the program's communication steps) that failed
    C_PEER,  # ... and the peer it waited for
    C_FAILED,  # address of the world's failure word (i32, non-zero once failed)
    C_BELL,  # address of this rank's doorbell
    C_SLOT_BYTES,  # bytes of one channel slot
    C_SPIN_NS,  # the wait budget: spin this long,
    C_YIELD_NS,  # offering the CPU after this long,
    C_NAP_NS,  # then sleep on the bell at most this long between checks
    C_TAG_ALLREDUCE,  # the tags the transport's collectives use
    C_TAG_ALLGATHER,
    C_RECORDS,  # address of the records: per step [t0 ns, t1 ns, bytes per message, received]
) = range(12)
C_PEERS = 16  # then per rank p: [channel to p, channel from p, p's bell, p's state word,
# the simulated link to p: its latency in ns (NO_LINK: not shaped) and ps per byte]
PEER_WORDS = 6
P_OUT, P_IN, P_BELL, P_STATE, P_LINK_NS, P_LINK_PS = range(PEER_WORDS)
NO_LINK = -1
RECORD_WORDS = 4
R_T0, R_T1, R_SENT, R_RECEIVED = range(RECORD_WORDS)


def comm_words(world: int) -> int:
    """Words of the comm block of a world of `world` ranks."""
    return C_PEERS + PEER_WORDS * world


# Status codes.
OK, WORLD_FAILED, PEER_ENDED, MISMATCH = 0, 1, 2, 3
# A peer's state word (the local transport's rank states) at or past this: it will send
# nothing more (finished, or failed).
PEER_DONE_STATE = 2


# ---- the channel protocol in IR ---------------------------------------------------------------


def reached(f: FunctionWriter, word: str, target: str, order: str = "acquire") -> str:
    """i1: the i32 counter at `word` has reached `target` (modulo 2**32)."""
    v = f(f"load atomic i32, ptr {word} {order}, align 4", "cnt")
    return f(f"icmp sge i32 {f(f'sub i32 {v}, {target}')}, 0", "reached")


def ring(f: FunctionWriter, bell: str) -> None:
    """Bump the doorbell and wake its sleepers, if any (one system call only then)."""
    f(f"atomicrmw add ptr {bell}, i32 1 seq_cst, align 4")
    wait.wake_sleepers(f, bell, f.gep(bell, BELL_SLEEPERS, "i8"), True, wait.WAKE_ALL)


def slot(f: FunctionWriter, ch: str, counter: str, slot_bytes: str | int) -> tuple[str, str]:
    """(header, data) pointers of the slot that chunk number `counter` uses."""
    idx = f(f"zext i32 {f(f'and i32 {counter}, {SLOTS - 1}')} to i64", "slot")
    hdr = f.gep(ch, f.add(CH_HDR, f.mul(idx, HDR_BYTES)), "i8")
    data = f.gep(ch, f.add(CH_DATA, f.mul(idx, slot_bytes)), "i8")
    return hdr, data


def write_header(f: FunctionWriter, hdr: str, tag: str, n: str, total: str) -> None:
    f.store("i32", tag, f.gep(hdr, HDR_TAG, "i8"))
    f.store("i64", n, f.gep(hdr, HDR_NBYTES, "i8"), 8)
    f.store("i64", total, f.gep(hdr, HDR_TOTAL, "i8"), 8)


def header_is(f: FunctionWriter, hdr: str, tag: str, n: str, total: str) -> str:
    """i1: the slot's header says (tag, n, total)."""
    same_tag = f(f"icmp eq i32 {f.load('i32', f.gep(hdr, HDR_TAG, 'i8'))}, {tag}")
    same_n = f(f"icmp eq i64 {f.load('i64', f.gep(hdr, HDR_NBYTES, 'i8'), 8)}, {n}")
    same_total = f(f"icmp eq i64 {f.load('i64', f.gep(hdr, HDR_TOTAL, 'i8'), 8)}, {total}")
    return f(f"and i1 {same_tag}, {f(f'and i1 {same_n}, {same_total}')}")


def publish(f: FunctionWriter, ch: str, bell: str) -> None:
    """Make the chunk just written visible; ring the receiver's `bell` if it had drained the
    channel (only then can it be waiting for this one)."""
    seq_p = f.gep(ch, CH_SEQ, "i8")
    seq = f(f"load atomic i32, ptr {seq_p} monotonic, align 4", "seq")
    f.op(f"store atomic i32 {f(f'add i32 {seq}, 1')}, ptr {seq_p} seq_cst, align 4")
    ack = f(f"load atomic i32, ptr {f.gep(ch, CH_ACK, 'i8')} seq_cst, align 4", "ack")
    with f.if_(f(f"icmp eq i32 {ack}, {seq}")):
        ring(f, bell)


def consume(f: FunctionWriter, ch: str, ack: str, bell: str) -> None:
    """Hand the slot of chunk `ack` back; ring the sender's `bell` if every slot was full
    (only then can it be waiting for one)."""
    ack_p = f.gep(ch, CH_ACK, "i8")
    f.op(f"store atomic i32 {f(f'add i32 {ack}, 1')}, ptr {ack_p} seq_cst, align 4")
    seq = f(f"load atomic i32, ptr {f.gep(ch, CH_SEQ, 'i8')} seq_cst, align 4", "seq")
    with f.if_(f(f"icmp eq i32 {f(f'sub i32 {seq}, {ack}')}, {SLOTS}")):
        ring(f, bell)


# ---- the comm block in IR ---------------------------------------------------------------------


def _word(f: FunctionWriter, comm: str, index: str | int, ty: str = "i64") -> str:
    return f.load(ty, f.gep(comm, index, "i64"), 8)


def _peer(f: FunctionWriter, comm: str, peer: str, field: int, ty: str = "ptr") -> str:
    at = f.add(C_PEERS + field, f.mul(peer, PEER_WORDS))
    return _word(f, comm, at, ty)


def _record(f: FunctionWriter, comm: str, step: str, field: int) -> str:
    """Pointer to word `field` of step `step`'s record."""
    return f.gep(_word(f, comm, C_RECORDS, "ptr"), f.add(f.mul(step, RECORD_WORDS), field), "i64")


def _fail(f: FunctionWriter, comm: str, code: int | str, step: str, peer: str) -> None:
    f.store("i64", str(code), f.gep(comm, C_STATUS, "i64"), 8)
    f.store("i64", step, f.gep(comm, C_STEP, "i64"), 8)
    f.store("i64", peer, f.gep(comm, C_PEER, "i64"), 8)


def _helper(name: str, params: list[tuple[str, str]], ret: str = "void") -> FunctionWriter:
    return FunctionWriter(name, [("ptr", "%comm"), *params], ret=ret)


def _unless_failed(f: FunctionWriter) -> None:
    """Return at once when an earlier collective of this call failed."""
    with f.if_(f(f"icmp ne i64 {_word(f, '%comm', C_STATUS)}, {OK}", "failed")):
        f.op("ret void")
        f.start(f.label("dead"))


def _wait_for(f: FunctionWriter, ready, peer: str, step: str) -> str:
    """Wait as `wait.wait_until` does (the comm block's budget, asleep on this rank's bell)
    until `ready()` or the world fails or `peer` ends; on the latter two set the status.
    Returns the i1 outcome of the last `ready()`."""
    failed_word = _word(f, "%comm", C_FAILED, "ptr")
    peer_state = _peer(f, "%comm", peer, P_STATE)
    bell = _word(f, "%comm", C_BELL, "ptr")
    ok = f.var("i1", "false", "ok")

    def done() -> str:
        got = ready()
        f.set(ok, got)
        failed = f(f"icmp ne i32 {f(f'load atomic i32, ptr {failed_word} acquire, align 4')}, 0")
        state = f(f"load atomic i32, ptr {peer_state} acquire, align 4", "state")
        ended = f(f"icmp sge i32 {state}, {PEER_DONE_STATE}", "ended")
        return f(f"or i1 {got}, {f(f'or i1 {failed}, {ended}')}")

    sleep = wait.Sleep(
        bell, f.gep(bell, BELL_SLEEPERS, "i8"), shared=True, nap_ns=_word(f, "%comm", C_NAP_NS)
    )
    wait.wait_until(f, done, _word(f, "%comm", C_SPIN_NS), _word(f, "%comm", C_YIELD_NS), sleep)
    got = f.get(ok)
    with f.if_(f(f"xor i1 {got}, true")):
        failed = f(f"icmp ne i32 {f(f'load atomic i32, ptr {failed_word} acquire, align 4')}, 0")
        code = f(f"select i1 {failed}, i64 {WORLD_FAILED}, i64 {PEER_ENDED}", "code")
        _fail(f, "%comm", code, step, peer)
    return got


def _await_counter(f: FunctionWriter, word: str, target: str) -> None:
    """Wait (`_wait_for`) until the channel counter at `word` reaches `target`; return from
    the helper if the wait ended otherwise."""
    ok = _wait_for(f, lambda: reached(f, word, target), "%peer", "%step")
    with f.if_(f(f"xor i1 {ok}, true")):
        f.op("ret void")
        f.start(f.label("dead"))


def send_helper() -> Kernel:
    """`void cke_comm_send(ptr comm, i64 peer, ptr src, i64 nbytes, i64 pad, i64 tag_word,
    i64 step)`: one message of `nbytes` from `src` and `pad` zero bytes to `peer`, tagged
    with the comm block's word `tag_word`, once a slot of the channel is free."""
    name = "cke_comm_send"
    f = _helper(
        name,
        [("i64", "%peer"), ("ptr", "%src"), ("i64", "%nbytes"), ("i64", "%pad")]
        + [("i64", "%tag_word"), ("i64", "%step")],
    )
    _unless_failed(f)
    ch = _peer(f, "%comm", "%peer", P_OUT)
    seq = f(f"load atomic i32, ptr {f.gep(ch, CH_SEQ, 'i8')} monotonic, align 4", "seq")
    _await_counter(f, f.gep(ch, CH_ACK, "i8"), f(f"sub i32 {seq}, {SLOTS - 1}"))
    hdr, data = slot(f, ch, seq, _word(f, "%comm", C_SLOT_BYTES))
    total = f.add("%nbytes", "%pad")
    tag = f(f"trunc i64 {_word(f, '%comm', '%tag_word')} to i32", "tag")
    write_header(f, hdr, tag, total, total)
    f.memcpy(data, "%src", "%nbytes")
    f.intrinsic(
        "void",
        "llvm.memset.p0.i64",
        [("ptr", f.gep(data, "%nbytes", "i8")), ("i8", "0"), ("i64", "%pad"), ("i1", "false")],
    )
    _hold_for_link(f, total)
    publish(f, ch, _peer(f, "%comm", "%peer", P_BELL))
    return Kernel(name=name, args=(), ir=f.finish(), declares=frozenset(f.declares))


def _hold_for_link(f: FunctionWriter, total: str) -> None:
    """Over a simulated link, hold the message until the link would deliver it: the step's
    start (its record's t0) + latency + bytes / bandwidth, as the transport's own sends do
    (`transport.base.Link.delay`); the receiver sees it from then on.  A world that fails
    meanwhile ends the hold (the wait that follows reports it)."""
    latency = _peer(f, "%comm", "%peer", P_LINK_NS, "i64")
    with f.if_(f(f"icmp sge i64 {latency}, 0", "shaped")):
        ps = _peer(f, "%comm", "%peer", P_LINK_PS, "i64")
        wire = f(f"sdiv i64 {f.mul(total, ps)}, 1000", "wire")
        t0 = f.load("i64", _record(f, "%comm", "%step", R_T0), 8)
        due = f.add(t0, f.add(latency, wire))
        failed = _word(f, "%comm", C_FAILED, "ptr")

        def world_failed() -> str:  # the launcher or a rank rings every bell then
            word = f(f"load atomic i32, ptr {failed} acquire, align 4")
            return f(f"icmp ne i32 {word}, 0")

        wait.wait_for_time(f, due, _word(f, "%comm", C_BELL, "ptr"), True, world_failed)


def await_helper() -> Kernel:
    """`void cke_comm_await(ptr comm, i64 peer, i64 nbytes, i64 tag_word, i64 step)`: wait
    for the next message from `peer` and check it is `nbytes` tagged `tag_word`; it stays
    in its slot (`data_helper` points at it) until `cke_comm_consume`."""
    name = "cke_comm_await"
    f = _helper(
        name, [("i64", "%peer"), ("i64", "%nbytes"), ("i64", "%tag_word"), ("i64", "%step")]
    )
    _unless_failed(f)
    ch = _peer(f, "%comm", "%peer", P_IN)
    ack = f(f"load atomic i32, ptr {f.gep(ch, CH_ACK, 'i8')} monotonic, align 4", "ack")
    _await_counter(f, f.gep(ch, CH_SEQ, "i8"), f(f"add i32 {ack}, 1"))
    hdr, _ = slot(f, ch, ack, _word(f, "%comm", C_SLOT_BYTES))
    tag = f(f"trunc i64 {_word(f, '%comm', '%tag_word')} to i32", "tag")
    with f.if_(f(f"xor i1 {header_is(f, hdr, tag, '%nbytes', '%nbytes')}, true")):
        _fail(f, "%comm", MISMATCH, "%step", "%peer")
    return Kernel(name=name, args=(), ir=f.finish(), declares=frozenset(f.declares))


def data_helper() -> Kernel:
    """`ptr cke_comm_data(ptr comm, i64 peer)`: the bytes of the message from `peer` that
    `cke_comm_await` waited for (every thread may ask: the slot stays put until consumed)."""
    name = "cke_comm_data"
    f = _helper(name, [("i64", "%peer")], ret="ptr")
    ch = _peer(f, "%comm", "%peer", P_IN)
    ack = f(f"load atomic i32, ptr {f.gep(ch, CH_ACK, 'i8')} monotonic, align 4", "ack")
    _, data = slot(f, ch, ack, _word(f, "%comm", C_SLOT_BYTES))
    f.op(f"ret ptr {data}")
    return Kernel(name=name, args=(), ir=f.finish(), declares=frozenset(f.declares))


def consume_helper() -> Kernel:
    """`void cke_comm_consume(ptr comm, i64 peer)`: done with the message from `peer`."""
    name = "cke_comm_consume"
    f = _helper(name, [("i64", "%peer")])
    _unless_failed(f)
    ch = _peer(f, "%comm", "%peer", P_IN)
    ack = f(f"load atomic i32, ptr {f.gep(ch, CH_ACK, 'i8')} monotonic, align 4", "ack")
    consume(f, ch, ack, _peer(f, "%comm", "%peer", P_BELL))
    return Kernel(name=name, args=(), ir=f.finish(), declares=frozenset(f.declares))


def record_helper() -> Kernel:
    """`void cke_comm_record(ptr comm, i64 step, i64 field, i64 value)`: one word of a step's
    record (`value` < 0: the clock now, in CLOCK_MONOTONIC ns)."""
    name = "cke_comm_record"
    f = _helper(name, [("i64", "%step"), ("i64", "%field"), ("i64", "%value")])
    clock = f("icmp slt i64 %value, 0", "clock")
    v = f.var("i64", "%value", "value")
    with f.if_(clock):
        f.set(v, wait.now_ns(f))
    f.store("i64", f.get(v), _record(f, "%comm", "%step", "%field"), 8)
    return Kernel(name=name, args=(), ir=f.finish(), declares=frozenset(f.declares))


HELPERS = (send_helper, await_helper, data_helper, consume_helper, record_helper)
