"""LocalTransport: ranks as processes over shared memory, launched by `launch_local`.

Every collective is checked bitwise against numpy's ordered sum and across ranks, with 2
and 3 ranks (not only powers of two); every fault — a rank raising, SIGKILLed mid-receive,
returning early, computing forever, deadlocking — ends the run with a TransportError that
names the rank and the operation, through the mechanism meant for it: never the launcher's
time-out that backs every test up.  No test bounds a duration from above (a busy machine
makes anything slower); a simulated link's delay is bounded from below."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import transport_programs as tp
from reaping import adopting

from ckeir.errors import TransportError
from ckeir.runtime.transport import LinkModel, launch_local

RANKS = [2, 3]


BACKSTOP_S = 120.0  # the launcher's time-out in fault tests: what ends a run that hangs


def failure(n: int, program, *, timeout: float = BACKSTOP_S, **kw) -> TransportError:
    """The error that ended a run of `program`; not the backstop's time-out unless the test
    set its own `timeout` (a hang fails the test, never the suite)."""
    with pytest.raises(TransportError) as info:
        launch_local(n, program, timeout=timeout, **kw)
    if timeout == BACKSTOP_S:
        assert "launch_local timed out" not in info.value.message, info.value.message
    return info.value


# ---- messages and collectives ------------------------------------------------------------------


@pytest.mark.parametrize("n", RANKS)
def test_p2p_small_large_empty(n):
    results = launch_local(n, tp.prog_p2p, timeout=30)
    assert all(r["ok"] for r in results)
    # every byte sent was received: the planner's invariant, from the transport's counters
    assert sum(r["sent"] for r in results) == sum(r["received"] for r in results)
    assert all(r["sends"] == 4 for r in results)


@pytest.mark.parametrize("n", RANKS)
def test_allreduce_is_the_ordered_sum_on_every_rank(n):
    results = launch_local(n, tp.prog_allreduce, timeout=30)
    for key in results[0]:
        members = [r[key] for r in results if key in r]
        assert all(m["exact"] for m in members), key
        assert len({m["digest"] for m in members}) == 1, key


@pytest.mark.parametrize("n", RANKS)
def test_allgather_axis0_and_last(n):
    for r in launch_local(n, tp.prog_allgather, timeout=30):
        assert r == {"axis0": True, "axis_last": True}


@pytest.mark.parametrize("n", RANKS)
def test_broadcast_and_barrier(n):
    assert all(r["bcast"] for r in launch_local(n, tp.prog_broadcast_barrier, timeout=30))


def test_spawned_ranks():
    results = launch_local(3, tp.prog_allreduce, ((5,),), timeout=60, start_method="spawn")
    assert len({r["(0, 1, 2)/5"]["digest"] for r in results}) == 1


def test_events_and_stats():
    results = launch_local(3, tp.prog_events, timeout=30)
    assert all(r["sane"] for r in results)
    assert {"allreduce", "send"} <= set(results[0]["kinds"])
    assert {"allreduce", "recv"} <= set(results[1]["kinds"])
    sent = sum(p["bytes_sent"] for r in results for p in r["stats"]["peers"].values())
    received = sum(p["bytes_received"] for r in results for p in r["stats"]["peers"].values())
    assert sent == received == 3 * 2 * 64 + 64
    assert results[0]["stats"]["ops"]["allreduce"]["count"] == 1


def test_results_in_rank_order():
    assert launch_local(3, _rank_and_size) == [(0, 3), (1, 3), (2, 3)]


def _rank_and_size(t):
    return t.rank, t.size


def test_segment_is_gone_after_the_run():
    launch_local(2, _rank_and_size)
    with pytest.raises(TransportError):
        launch_local(2, tp.prog_kill, timeout=30)
    shm = Path("/dev/shm")
    if shm.is_dir():
        assert not list(shm.glob(f"ckeir-{os.getpid()}-*"))


@pytest.mark.parametrize(
    "bandwidth, latency, nbytes",
    [(1.25e9, 50e-6, 2304), (1.25e9, 100e-6, 2304), (1e9, 100e-6, 64 * 1024)],
)
def test_shaped_link_hop_time(bandwidth, latency, nbytes):
    """A hop (send start -> recv end, as a trace shows it) takes at least latency +
    bytes/bandwidth — never less; longer when the machine is busy, so how close it comes is
    for `benchmarks/links.py`, not a test."""
    model = LinkModel.uniform(bandwidth, latency)
    want = latency + nbytes / bandwidth
    hops = tp.hop_times(launch_local(2, tp.prog_link, (nbytes, 60), timeout=60, link_model=model))
    assert len(hops) == 60
    assert hops.min() >= want, f"a hop took {hops.min() * 1e6:.1f} µs < {want * 1e6:.1f} µs"


# ---- faults: everything stops, by the mechanism meant for it; the message says who and where --


@pytest.mark.parametrize("n", RANKS)
def test_raising_rank(n, monkeypatch):
    monkeypatch.setenv("CKEIR_DEBUG", "1")  # the rank's traceback, for developers
    err = failure(n, tp.prog_raise)
    text = err.message
    assert text.startswith("rank 1 failed: ValueError: boom from rank 1")
    assert "traceback of rank 1" in text and "prog_raise" in text
    assert "rank 0: recv from rank 1 (tag 3) abandoned" in text
    assert err.rank == 1
    assert isinstance(err.__cause__, ValueError)


@pytest.mark.parametrize("n", RANKS)
def test_rank_killed_mid_recv(n):
    err = failure(n, tp.prog_kill)
    assert err.message.startswith("rank 1 was killed by SIGKILL during recv from rank 0 (tag 3)")
    assert "rank 0: recv from rank 1 (tag 4) abandoned" in err.message
    if n == 3:
        assert "rank 2: allreduce over ranks (0, 1, 2) abandoned" in err.message


def test_size_mismatch_names_both_ranks_and_sizes():
    err = failure(2, tp.prog_mismatch)
    assert (
        "rank 1: recv from rank 0 (tag 2): size mismatch: rank 0 sent 400 bytes,"
        " rank 1 expects 200 bytes" in err.message
    )


def test_tag_mismatch():
    err = failure(2, tp.prog_tag_mismatch)
    assert "rank 1: recv from rank 0 (tag 2): the next message from rank 0 has tag 1" in err.message


def test_peer_returned_without_sending():
    err = failure(3, tp.prog_finish_early)
    assert "rank 1 finished its program without a matching send" in err.message


def test_ranks_still_computing_are_killed_after_the_grace_period():
    err = failure(3, tp.prog_compute_forever, grace=0.5)
    assert err.message.startswith("rank 0 failed: RuntimeError: rank 0 gives up")
    assert "rank 2 was still running 0.5 s after the failure and was killed" in err.message


def test_exit_is_a_failure():
    err = failure(2, tp.prog_exit_without_close)
    assert err.message.startswith("rank 1 failed: SystemExit: 3")


@pytest.mark.parametrize("n", RANKS)
def test_deadlock_hits_the_launcher_timeout(n):
    """The time-out names what every rank is doing.  A rank that has not yet reached its
    receive when the time-out comes (a busy machine starts processes slowly) is named as
    running: then the same run with twice the time-out."""
    blocked = [f"rank {r} is blocked in recv from rank {(r + 1) % n} (tag 7)" for r in range(n)]
    for timeout in (1, 2, 4, 8, 16):
        err = failure(n, tp.prog_deadlock, timeout=timeout)
        assert err.message.startswith(f"launch_local timed out after {timeout} s")
        if all(b in err.message for b in blocked):
            return
        late = [f"rank {r} is running" for r in range(n) if blocked[r] not in err.message]
        assert all(x in err.message for x in late), err.message
    pytest.fail(f"ranks still not in their receive after {timeout} s: {err.message}")


def test_deadlock_hits_the_wait_timeout():
    err = failure(2, tp.prog_deadlock, wait_timeout=0.5)
    assert "no progress for" in err.message
    assert "is blocked in recv from rank" in err.message


# ---- the watchdog: a stopped rank ends the run, named; no rank outlives its launcher -----------


def no_segment_of(launcher: int) -> bool:
    shm = Path("/dev/shm")
    return not shm.is_dir() or not list(shm.glob(f"ckeir-{launcher}-*"))


@pytest.mark.parametrize("n", RANKS)
def test_stopped_rank_is_named_by_the_watchdog(n):
    """A SIGSTOPped rank answers nothing and dies of nothing but SIGKILL: its heartbeat
    stands still, the watchdog names and kills it, and every other rank stops."""
    err = failure(n, tp.prog_stop, watchdog=1.0)
    assert err.message.startswith(
        "rank 1 made no progress for 1 s (it is stopped: SIGSTOP or a debugger)"
    ), err.message
    assert "rank 0: recv from rank 1 (tag 3) abandoned" in err.message
    assert err.rank == 1
    assert not multiprocessing.active_children()
    assert no_segment_of(os.getpid())


def test_watchdog_period_from_the_environment(monkeypatch):
    monkeypatch.setenv("CKEIR_WATCHDOG_SECONDS", "1.5")
    err = failure(2, tp.prog_stop)
    assert err.message.startswith("rank 1 made no progress for 1.5 s"), err.message


@pytest.mark.parametrize("setting", ["soon", "-1", "nan", "1e9"])
def test_bad_watchdog_setting_is_named(monkeypatch, setting):
    monkeypatch.setenv("CKEIR_WATCHDOG_SECONDS", setting)
    with pytest.raises(TransportError) as info:
        launch_local(2, _rank_and_size)
    assert info.value.message.startswith(f"CKEIR_WATCHDOG_SECONDS={setting!r}: the watchdog needs")


def test_slow_is_not_stopped():
    """A rank busy for twice the watchdog period (outside the transport), and a peer blocked
    in a receive all that time: both keep beating, the run succeeds."""
    assert launch_local(2, tp.prog_slow, (2.0,), timeout=30, watchdog=1.0) == [True, True]


def test_busy_holding_the_gil_is_not_stopped():
    """A rank whose main thread keeps the GIL (its heartbeat cannot beat) for twice the
    watchdog period is running, not stopped: the watchdog leaves it alone."""
    assert launch_local(2, tp.prog_hold_gil, (2.5,), timeout=30, watchdog=1.0) == [True, True]


@pytest.mark.parametrize("how", ["read", "flock"])
def test_asleep_holding_the_gil_is_not_stopped(how, tmp_path):
    """A rank asleep in a system call (a pipe from a slow child, a lock another rank holds)
    for 2.5 watchdog periods while keeping the GIL: its heartbeat stands still (it moves at
    most once during the call, where it would beat 50 times) and none of its threads is
    runnable, yet it is not stopped — it wakes by itself, and the run succeeds.  (A loaded
    suite once saw a spawned rank killed so while it waited for `ldconfig`.)"""
    lock = str(tmp_path / "lock")
    results = launch_local(
        2, tp.prog_asleep_holding_the_gil, (2.5, how, lock), timeout=60, watchdog=1.0
    )
    asleep = results[1]
    assert asleep["ok"] and asleep["waited"] >= 2.5, asleep
    assert asleep["beats"] <= 1, asleep


def test_stopped_rank_names_its_threads():
    """The watchdog's message says what /proc saw: every thread of the stopped rank in T."""
    err = failure(2, tp.prog_stop, watchdog=1.0)
    threads = err.message.split("its threads: ", 1)[1].split("\n", 1)[0]
    assert threads and all(" T" in t for t in threads.split(", ")), err.message


def test_timeout_names_what_each_rank_waits_in():
    """A run ended by the launcher's time-out says what each rank it had to kill was doing
    and what its threads were in: here both ranks' main threads sleep in Python's time.sleep
    (a system call, state S)."""
    err = failure(2, tp.prog_sleep_forever, timeout=4, grace=0.5)
    for r in range(2):
        killed = f"  rank {r} was still running 0.5 s after the failure and was killed (it was"
        line = next((ln for ln in err.message.splitlines() if ln.startswith(killed)), "")
        main = line.partition("its threads: ")[2].split(", ")[0]  # the main thread comes first
        assert " S in " in main, err.message


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_rank_outlives_a_killed_launcher(tmp_path, sig):
    """Kill the launcher of a running job (one rank stopped, one blocked in a receive): both
    ranks are gone within seconds (SIGKILL from the kernel when their parent dies), and
    no segment is left in /dev/shm."""
    code = (
        "import transport_programs as tp\n"
        "from ckeir.runtime.transport import launch_local\n"
        f"launch_local(2, tp.prog_pid_then_wait, ({str(tmp_path)!r},))\n"
    )
    root = Path(__file__).resolve().parents[3]
    path = os.pathsep.join([str(Path(__file__).parent), str(root)])
    env = dict(os.environ, PYTHONPATH=path, CKEIR_WATCHDOG_SECONDS="0")
    with adopting() as adoption:
        launcher = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            deadline = time.monotonic() + 60
            while len(list(tmp_path.glob("*.pid"))) < 2:
                assert launcher.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            ranks = sorted(int(p.read_text()) for p in tmp_path.glob("*.pid"))
            launcher.send_signal(sig)
            launcher.wait(30)
        finally:
            launcher.kill()
            launcher.wait()
        assert adoption.leftovers() == []
    for pid in ranks:
        assert not Path(f"/proc/{pid}").exists()
    assert no_segment_of(launcher.pid)


# ---- argument checks (no peer needed: they fail before any message moves) ----------------------


def test_argument_errors():
    launch_local(2, _argument_errors, timeout=30)


def _argument_errors(t):
    peer = 1 - t.rank
    cases = [
        (lambda: t.send(np.zeros(4), t.rank), "cannot send to rank"),
        (lambda: t.recv(np.zeros(4), 5), "cannot receive from rank 5"),
        (lambda: t.send(np.zeros(4), peer, tag=1 << 20), "outside 0..16383"),
        (lambda: t.send(np.zeros((4, 4))[:, 0], peer), "C-contiguous"),
        (lambda: t.allreduce(np.zeros(4), group=(0, 0)), "distinct ranks"),
        (lambda: t.allreduce(np.zeros(4), group=(peer,)), "is not a member"),
        (lambda: t.allgather(np.zeros(4), np.zeros(5)), "needs an output of 64 bytes"),
        (lambda: t.broadcast(np.zeros(4), root=7), "root 7 is not in group"),
    ]
    for call, text in cases:
        try:
            call()
        except TransportError as e:
            assert text in e.message, (text, e.message)
        else:
            raise AssertionError(f"no error for {text!r}")
    ro = np.zeros(4)
    ro.setflags(write=False)
    try:
        t.recv(ro, peer)
    except TransportError as e:
        assert "read-only" in e.message
    t.barrier()
