"""The machine's DRAM read bandwidth, measured the way decode uses memory: every thread
streams its share of an array far larger than L3 with vector loads and writes nothing.
Results are remembered per host and thread count in the disk cache, so reports can state CKU
against a measured figure without re-measuring each run."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import time
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


def _record_path(host: HostCPU, threads: int) -> Path:
    return cache.cache_dir() / "bandwidth" / f"{host.name}-{host.isa}-{threads}.json"


def _remembered(path: Path) -> float | None:
    """The figure in the record at `path`, or None.  A record whose checksum holds but whose
    content is unusable (not JSON, wrong types, NaN, out of range) is discarded like a
    damaged one: a report must not state CKU against a nonsense bandwidth."""
    raw = cache.read(path)
    if raw is None:
        return None
    try:
        bw = json.loads(raw)["bytes_per_second"]
    except (ValueError, TypeError, KeyError):
        cache.discard(path, "not a bandwidth record")
        return None
    if not limits.in_real_range(bw, limits.MIN_RATE, limits.MAX_RATE):
        why = limits.range_message("bytes_per_second", bw, limits.MIN_RATE, limits.MAX_RATE)
        cache.discard(path, why)
        return None
    return float(bw)


def read_bandwidth(threads: int, measure: bool = False, host: HostCPU | None = None):
    """The remembered figure for this host and thread count; measured now, and remembered,
    if `measure` or if the record was there but damaged (it was measured once: a damaged
    disk must not silently change what reports compare against).  None if unknown."""
    host = host or detect_host()
    path = _record_path(host, threads)
    if not measure:
        existed = os.path.lexists(path)
        bw = _remembered(path)
        if bw is not None or not existed:
            return bw
    bw = measure_read_bandwidth(threads, host=host)
    record = {"bytes_per_second": bw, "threads": threads, "measured_at": time.time()}
    cache.write_atomic(path, json.dumps(record).encode())
    return bw
