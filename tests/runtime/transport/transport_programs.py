"""Rank programs shared by the local and MPI transport tests.

Each `prog_*(t, ...)` runs on every rank with that rank's transport and returns something
picklable (and JSON-able).  Under MPI: `mpiexec -n N python -m mpi4py transport_programs.py
NAME [ARGS...]` runs `prog_NAME` and writes its result as JSON to $CKEIR_TEST_OUT/<rank>.json
(or prints a `RESULT <rank> <json>` line).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time

import numpy as np

# The data every rank contributes, reproducible on any rank (for checking sums).


def data(rank: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, rank])
    # wide exponents: the sum's bits depend on the order of the additions
    return (rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(np.float32)


def ordered_sum(parts: list[np.ndarray]) -> np.ndarray:
    acc = parts[0].copy()
    for p in parts[1:]:
        acc += p
    return acc


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def prog_p2p(t) -> dict:
    """A ring in both directions, small and large (chunked) messages, several tags."""
    right, left = (t.rank + 1) % t.size, (t.rank - 1) % t.size
    ok = True
    for n, tag in [(576, 0), (7, 5), (0, 9), (3_000_000, 3)]:  # 3M floats = 12 MB
        mine = data(t.rank, n, seed=tag)
        got = np.empty_like(mine)
        if t.rank % 2 == 0:
            t.send(mine, right, tag)
            t.recv(got, left, tag)
        else:
            t.recv(got, left, tag)
            t.send(mine, right, tag)
        ok &= bool(np.array_equal(got.view(np.uint32), data(left, n, seed=tag).view(np.uint32)))
    s = t.stats
    return {
        "ok": ok,
        "sent": sum(p.bytes_sent for p in s.peers.values()),
        "received": sum(p.bytes_received for p in s.peers.values()),
        "sends": s.ops["send"].count,
    }


def prog_allreduce(t, sizes=(576, 7, 1, 100_003)) -> dict:
    """Sums in group order: equal on every rank, and equal to numpy's ordered sum; in place,
    or into `out` with the input left as it was (how a program hands its arena views)."""
    out = {}
    groups = [tuple(range(t.size))]
    if t.size >= 3:
        groups.append((2, 0))  # a subgroup, not in rank order
    for g in groups:
        if t.rank not in g:
            continue
        for n in sizes:
            x = data(t.rank, n, seed=n)
            t.allreduce(x, g)
            want = ordered_sum([data(p, n, seed=n) for p in g])
            out[f"{g}/{n}"] = {"digest": digest(x), "exact": bool(np.array_equal(x, want))}
            x, into = data(t.rank, n, seed=n), np.full(n, np.nan, np.float32)
            t.allreduce(x, g, out=into)
            exact = np.array_equal(into, want) and np.array_equal(x, data(t.rank, n, seed=n))
            out[f"{g}/{n}/out"] = {"digest": digest(into), "exact": bool(exact)}
            # chunk sums (slots): the first member's slot 0, then later members' slots in order
            slots = 3
            x = data(t.rank, slots * n, seed=n + 1)
            into = np.full(n, np.nan, np.float32)
            t.allreduce(x, g, out=into, slots=slots)
            sums = [data(p, slots * n, seed=n + 1).reshape(slots, n) for p in g]
            want = ordered_sum([sums[0][0], *(c for later in sums[1:] for c in later)])
            out[f"{g}/{n}/slots"] = {
                "digest": digest(into),
                "exact": bool(np.array_equal(into, want)),
            }
    return out


def prog_allgather(t) -> dict:
    n = t.size
    a = np.arange(6, dtype=np.float32).reshape(2, 3) + 100 * t.rank
    out0 = np.empty((2 * n, 3), np.float32)
    t.allgather(a, out0)
    out_last = np.empty((2, 3 * n), np.float32)
    t.allgather(a, out_last, axis=-1)
    parts = [np.arange(6, dtype=np.float32).reshape(2, 3) + 100 * p for p in range(n)]
    return {
        "axis0": bool(np.array_equal(out0, np.concatenate(parts, axis=0))),
        "axis_last": bool(np.array_equal(out_last, np.concatenate(parts, axis=-1))),
    }


def prog_broadcast_barrier(t) -> dict:
    x = np.full(1000, t.rank, np.int64)
    t.broadcast(x, root=t.size - 1)
    t.barrier()
    t.barrier()
    return {"bcast": bool((x == t.size - 1).all())}


def prog_raise(t) -> None:
    """Rank 1 raises after a barrier while the others wait for a message from it."""
    t.barrier()
    if t.rank == 1:
        time.sleep(0.2)
        raise ValueError("boom from rank 1")
    t.recv(np.empty(4, np.float32), 1, tag=3)


def prog_raise_closing(t) -> None:
    """`prog_raise`, with the transport closed in a `finally` (as `ckec run` does) while
    rank 1's error propagates."""
    try:
        prog_raise(t)
    finally:
        t.close()


def prog_kill(t) -> None:
    """Rank 1 is SIGKILLed while it waits in a receive that rank 0 never satisfies; rank 0
    waits for rank 1, rank 2 (if any) in an allreduce."""
    if t.rank == 1:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()
        t.recv(np.empty(4, np.float32), 0, tag=3)
    elif t.rank == 0:
        t.recv(np.empty(4, np.float32), 1, tag=4)
    else:
        t.allreduce(np.ones(8, np.float32))


def prog_mismatch(t) -> None:
    if t.rank == 0:
        t.send(np.zeros(100, np.float32), 1, tag=2)
        t.recv(np.zeros(1, np.float32), 1, tag=2)
    elif t.rank == 1:
        t.recv(np.zeros(50, np.float32), 0, tag=2)


def prog_tag_mismatch(t) -> None:
    if t.rank == 0:
        t.send(np.zeros(4, np.float32), 1, tag=1)
        t.recv(np.zeros(1, np.float32), 1, tag=2)
    elif t.rank == 1:
        t.recv(np.zeros(4, np.float32), 0, tag=2)


def prog_finish_early(t) -> None:
    if t.rank == 0:
        t.recv(np.zeros(4, np.float32), 1, tag=6)


def prog_deadlock(t) -> None:
    t.recv(np.zeros(4, np.float32), (t.rank + 1) % t.size, tag=7)


def prog_sleep_forever(t) -> None:
    """Every rank sleeps (outside the transport) until the launcher's time-out ends the run."""
    time.sleep(3600)


def prog_exit_without_close(t) -> None:
    """Rank 1 leaves with sys.exit(3) (as a CLI does after printing an error) while rank 0
    waits for it."""
    if t.rank == 1:
        sys.exit(3)
    t.recv(np.zeros(4, np.float32), 1)


def prog_compute_forever(t) -> None:
    """Rank 0 fails; the others never call the transport again."""
    if t.rank == 0:
        raise RuntimeError("rank 0 gives up")
    while True:
        time.sleep(0.01)


def prog_stop(t) -> None:
    """Rank 1 stops itself (SIGSTOP, as `kill -STOP` or a debugger would) after a barrier,
    while the others wait for a message from it."""
    t.barrier()
    if t.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    t.recv(np.empty(4, np.float32), 1 if t.rank != 1 else 0, tag=3)


def prog_slow(t, seconds: float) -> bool:
    """Rank 1 is busy (asleep, not in the transport) for `seconds` before it sends; rank 0
    waits in a receive all that time.  Slow is not stopped: the run must succeed."""
    x = np.zeros(4, np.float32)
    if t.rank == 1:
        time.sleep(seconds)
        t.send(x + 1, 0)
    elif t.rank == 0:
        t.recv(x, 1)
    t.barrier()
    return bool(t.rank != 0 or (x == 1).all())


def prog_hold_gil(t, seconds: float) -> bool:
    """Rank 1 keeps the GIL for `seconds` (a busy Python loop that never offers it): its
    heartbeat thread cannot beat, but the rank runs — busy is not stopped."""
    if t.rank == 1:
        sys.setswitchinterval(1000)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        sys.setswitchinterval(0.005)
    t.barrier()
    return True


def prog_asleep_holding_the_gil(t, seconds: float, how: str, lock: str) -> dict:
    """Rank 1's main thread sleeps in a system call for `seconds` without releasing the GIL
    (a C call through `ctypes.PyDLL`, as an extension that forgets to release it makes): its
    heartbeat thread waits for the GIL and cannot beat, and none of its threads is runnable.
    `how`: 'read' waits for a pipe from a child process that writes after `seconds` (a
    spawned rank waits so for the `ldconfig` its start-up runs, which a busy machine
    starves); 'flock' waits for the lock file `lock`, which rank 0 holds until rank 1 has
    waited for it that long (/proc/locks shows the waiter).  Asleep
    is not stopped: the rank wakes by itself.  Returns how long rank 1 waited and how far
    its heartbeat moved meanwhile."""
    import ctypes
    import fcntl
    import subprocess

    libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: calls keep the GIL
    with open(lock, "a+b") as f:
        if t.rank == 0:
            fcntl.flock(f, fcntl.LOCK_EX)
        t.barrier()
        out = {"rank": t.rank}
        if t.rank == 1:
            t0, buf = time.monotonic(), ctypes.create_string_buffer(1)
            if how == "read":
                code = f"import time; time.sleep({seconds}); print('x', flush=True)"
                child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
            sys.setswitchinterval(1000)  # from here to the count after the call: no beat but
            beats = t._world.beats(1)  # in the call itself (the main thread keeps the GIL)
            if how == "read":
                got = libc.read(child.stdout.fileno(), buf, 1) == 1
            else:
                got = libc.flock(f.fileno(), fcntl.LOCK_EX) == 0
            beats = t._world.beats(1) - beats
            sys.setswitchinterval(0.005)
            if how == "read":
                child.wait()
            out |= {"waited": time.monotonic() - t0, "beats": beats, "ok": got}
        elif t.rank == 0 and how == "flock":
            queued = f" {t._world.pid(1)} "  # rank 1 waits for the lock: a "->" line
            while not any(
                "->" in ln and queued in ln for ln in open("/proc/locks").read().splitlines()
            ):
                time.sleep(0.01)
            time.sleep(seconds)
            fcntl.flock(f, fcntl.LOCK_UN)
        t.barrier()
    return out


def prog_pid_then_wait(t, folder: str) -> None:
    """Each rank writes its pid to FOLDER/<rank>.pid, then rank 1 stops itself and the
    others wait for it forever (for killing the launcher underneath them)."""
    with open(os.path.join(folder, f"{t.rank}.pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(folder, f"{t.rank}.pid.tmp"), os.path.join(folder, f"{t.rank}.pid"))
    if t.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    t.recv(np.empty(4, np.float32), 1 if t.rank != 1 else 0)


def prog_link(t, nbytes: int, hops: int = 40) -> dict:
    """Hop times 0 -> 1 as a trace would show them: from the start of rank 0's send to the
    end of rank 1's recv (perf_counter is CLOCK_MONOTONIC: one clock for the machine)."""
    buf = np.zeros(nbytes, np.uint8)
    ack = np.zeros(1, np.uint8)
    events = []
    t.on_event = lambda kind, peer, n, t0, t1: events.append((kind, t0, t1))
    for _ in range(hops):
        if t.rank == 0:
            t.send(buf, 1)
            t.recv(ack, 1)
        elif t.rank == 1:
            t.recv(buf, 0)
            t.send(ack, 0)
    if t.rank == 0:
        return {"starts": [t0 for kind, t0, _ in events if kind == "send"]}
    return {"ends": [t1 for kind, _, t1 in events if kind == "recv"]}


def hop_times(results: list[dict]) -> np.ndarray:
    return np.subtract(results[1]["ends"], results[0]["starts"])


def prog_round_trip(t, nbytes: int = 2304, iters: int = 2000) -> dict:
    from ckeir.runtime.transport import measure_round_trip

    rt = measure_round_trip(t, 1 - t.rank, nbytes, iters) if t.rank < 2 else None
    x = np.zeros(nbytes // 4, np.float32)
    t.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        t.allreduce(x)
    return {"round_trip": rt, "allreduce": (time.perf_counter() - t0) / iters}


def prog_events(t) -> dict:
    events = []
    t.on_event = lambda *e: events.append(e)
    x = np.ones(16, np.float32)
    t.allreduce(x)
    if t.rank == 0:
        t.send(x, 1, tag=1)
    elif t.rank == 1:
        t.recv(x, 0, tag=1)
    kinds = sorted({e[0] for e in events})
    return {
        "kinds": kinds,
        "sane": all(e[3] <= e[4] for e in events),
        "stats": t.stats.as_dict(),
    }


def main(argv: list[str]) -> None:
    from ckeir.runtime.transport import LinkModel, transport_from_env

    name, args = argv[0], [json.loads(a) for a in argv[1:]]
    link = os.environ.get("CKEIR_TEST_LINK")  # "bandwidth,latency" (B/s, s)
    model = LinkModel.uniform(*map(float, link.split(","))) if link else None
    t = transport_from_env(link_model=model)
    assert t is not None, "not launched by mpiexec with several ranks"
    result = globals()[f"prog_{name}"](t, *args)
    out = os.environ.get("CKEIR_TEST_OUT")
    if out:
        with open(os.path.join(out, f"{t.rank}.json"), "w") as f:
            json.dump(result, f)
    else:
        print(f"RESULT {t.rank} {json.dumps(result)}", flush=True)
    t.close()


if __name__ == "__main__":
    main(sys.argv[1:])
