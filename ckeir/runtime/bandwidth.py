"""The machine's DRAM read bandwidth, measured the way decode uses memory: every thread
streams its share of an array far larger than L3 with vector loads and writes nothing.

Measured figures are remembered in the disk cache per *machine* (host name, machine id, CPU
and caches: two VMs of one CPU model differ) and per what was measured (here: the thread
count).  A figure measured while other processes held the CPU or the memory bus is too low,
and reports that compare a run against it overstate the run (a CKU of 109% of "the
bandwidth"), so a record keeps the last KEEP measurements and states the best of those no
older than MAX_AGE_S; a figure is measured again when none is that fresh, and whenever a
run does better than it (`read_bandwidth(..., observed=)`)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ckeir import cache, limits
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels.common import FunctionWriter, Vec
from ckeir.backends.llvm.pool import Pool

UNROLL = 4  # independent vector loads in flight per step
MIB = 1 << 20


def read_kernel(width: int) -> FunctionWriter:
    """`void @bw_read(ptr ctx, i32 tid, i32 nth)`, ctx = [array, out, n]: each thread sums
    its contiguous share of n floats (n a multiple of nth * width * UNROLL) into out[16*tid]."""
    f = FunctionWriter(
        "bw_read",
        [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")],
        linkage="dso_local",
        attributes="nounwind",
    )
    v = Vec(f, width)
    a, out = (f.load("ptr", f.gep("%ctx", i, "i64"), 8) for i in range(2))
    n = f.load("i64", f.gep("%ctx", 2, "i64"), 8)
    lo, hi = f.share(n, width * UNROLL)
    accs = [f.var(v.t, v.zero, "acc") for _ in range(UNROLL)]
    with f.loop(lo, hi, width * UNROLL, "i") as i:
        for u, acc in enumerate(accs):
            x = f.load(v.t, f.gep(a, f.add(i, u * width)), 64)
            f.set(acc, v.add(f.get(acc), x))
    total = f.get(accs[0])
    for acc in accs[1:]:
        total = v.add(total, f.get(acc))
    f.store("float", v.hsum(total), f.gep(out, f.mul(f.i64("%tid"), 16)))
    return f


@functools.cache
def _compiled(host: HostCPU):
    w = read_kernel(host.vector_width)
    cm = compile_ir("\n".join([*sorted(w.declares), w.finish()]), host)
    return cm, cm.address("bw_read")


def measure_read_bandwidth(
    threads: int, nbytes: int | None = None, repeat: int = 5, host: HostCPU | None = None
) -> float:
    """Bytes/s: best of `repeat` passes over max(4 x L3, 256 MiB) (or `nbytes`)."""
    host = host or detect_host()
    step = host.vector_width * UNROLL * 64
    count = max(step, (nbytes or max(4 * host.l3, 256 * MIB)) // 4 // step * step)
    raw = np.ones(count + 16, np.float32)
    arr = raw[(-raw.ctypes.data // 4) % 16 :][:count]
    out = np.zeros(16 * 64, np.float32)
    ctx = (ctypes.c_uint64 * 3)(arr.ctypes.data, out.ctypes.data, count)
    _, fn = _compiled(host)
    best = float("inf")
    with Pool(threads, host) as pool:
        pool.run(fn, ctypes.addressof(ctx))  # warm-up: pages and caches
        for _ in range(repeat):
            t0 = time.perf_counter()
            pool.run(fn, ctypes.addressof(ctx))
            best = min(best, time.perf_counter() - t0)
    return count * 4 / best


KEEP = 5  # measurements a record keeps; it states the best of the fresh ones
MAX_AGE_S = 7 * 24 * 3600.0  # older measurements are not believed: measured again
# Until a record holds SAMPLES fresh measurements, a use RESAMPLE_S after the latest one
# measures again: one taken while the machine was busy does not stand alone for a week.
SAMPLES = 3
RESAMPLE_S = 3600.0


def machine_id(host: HostCPU) -> str:
    """Names this machine: host name, /etc/machine-id (else the boot id), CPU and cache
    sizes, hashed.  Two VMs with the same CPU model get different names."""
    ident = ""
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            ident = Path(path).read_text().strip()
        except OSError:
            continue
        if ident:
            break
    what = f"{socket.gethostname()}|{ident}|{host.name}|{host.isa}|{host.l2}|{host.l3}"
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def record_path(name: str, host: HostCPU) -> Path:
    return cache.cache_dir() / "machine" / f"{machine_id(host)}-{name}.json"


def _record_path(host: HostCPU, threads: int) -> Path:
    return record_path(f"read-bandwidth-{threads}", host)


def _measurements(path: Path, lo: float, hi: float) -> list[dict] | None:
    """The measurements in the record at `path` (None: no record).  A record whose checksum
    holds but whose content is unusable (not JSON, wrong types, NaN, out of range) is
    discarded like a damaged one: a report must not compare against a nonsense figure."""
    raw = cache.read(path)
    if raw is None:
        return None
    try:
        found = [(m["value"], m["measured_at"]) for m in json.loads(raw)["measurements"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        cache.discard(path, "not a measurement record")
        return None
    for value, at in found:
        if not limits.in_real_range(value, lo, hi) or not limits.in_real_range(at, 0, 1e12):
            cache.discard(path, limits.range_message("a measured figure", value, lo, hi))
            return None
    return [{"value": float(v), "measured_at": float(t)} for v, t in found]


def remembered(
    path: Path,
    measure: Callable[[], float],
    *,
    best: Callable = max,
    lo: float = limits.MIN_RATE,
    hi: float = limits.MAX_RATE,
    now: float | None = None,
    refresh: bool = False,
    if_absent: bool = True,
) -> float | None:
    """The best (`best`: max for rates, min for costs) of the record's fresh measurements.
    `measure` runs, and its figure joins the record (the oldest beyond KEEP leave), when
    `refresh`, when no measurement is fresh, when fewer than SAMPLES are and the latest is
    RESAMPLE_S old, or when the record was damaged; when there was no record at all only if
    `if_absent` (else None)."""
    now = time.time() if now is None else now
    existed = os.path.lexists(path)
    found = _measurements(path, lo, hi)
    if found is None and existed:
        found = []  # damaged: it was measured once, so it is measured again
    fresh = [m["value"] for m in found or () if now - m["measured_at"] <= MAX_AGE_S]
    latest = max((m["measured_at"] for m in found or ()), default=now)
    if refresh or not fresh or len(fresh) < SAMPLES and now - latest >= RESAMPLE_S:
        if found is None and not if_absent:
            return None
        value = measure()
        found = [*(found or ()), {"value": value, "measured_at": now}][-KEEP:]
        cache.write_atomic(path, json.dumps({"measurements": found}).encode())
        fresh.append(value)
    return float(best(fresh))


def read_bandwidth(
    threads: int,
    measure: bool = False,
    host: HostCPU | None = None,
    observed: float | None = None,
):
    """This machine's read bandwidth on `threads` threads (bytes/s): the best fresh figure
    remembered; measured now, and remembered, if `measure`, if the record is damaged or
    stale, or if a run `observed` more than it (a CKU above 100% means the figure was
    measured under load).  None if nothing was ever measured and `measure` is not set."""
    host = host or detect_host()
    path = _record_path(host, threads)
    figure = remembered(
        path,
        lambda: measure_read_bandwidth(threads, host=host),
        refresh=measure,
        if_absent=measure,
    )
    if figure is not None and observed is not None and observed > figure:
        figure = remembered(path, lambda: measure_read_bandwidth(threads, host=host), refresh=True)
    return figure
