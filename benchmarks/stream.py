"""STREAM-style memory bandwidth of this machine: read (sum), copy and triad, with numpy on one
thread and with small native kernels built through ckeir's own stack (FunctionWriter →
`compile_ir` → `Pool`) on 1..all cores.

Arrays are far larger than L3 (default: max(4 × L3, 512 MiB) each), so every pass streams
from DRAM.  Bytes are counted as STREAM does: read = 1 array, copy = 2 arrays (read a, write
b), triad = 3 arrays (a = b + s·c) — write-allocate traffic is not counted, which is why
non-temporal stores (NT rows) show higher copy/triad figures.  Decode only reads weights, so
the read figure is the one the decode limit divides by (`measure_bandwidth`).

    python -m benchmarks.stream [--mib 512] [--repeat 10] [--json FILE]
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    time_interleaved,
    write_json,
)
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels.common import FunctionWriter, Vec
from ckeir.backends.llvm.pool import Pool

UNROLL = 4  # vectors per loop step: independent loads/accumulators in flight
TRIAD_SCALAR = 3.0
# STREAM's byte counts: arrays touched per element (read + written)
ARRAYS = {"read": 1, "copy": 2, "triad": 3}
KERNELS = ("read", "copy", "copy_nt", "triad", "triad_nt")
MIB = 1 << 20


# ---- native kernels ---------------------------------------------------------------------------
#
# `void @stream_<kind>(ptr ctx, i32 tid, i32 nth)`, ctx = i64 words [a, b, c, out, n]: each
# thread does its contiguous share of n floats (n a multiple of nth · W · UNROLL).


def _kernel(kind: str, width: int) -> FunctionWriter:
    f = FunctionWriter(
        f"stream_{kind}", [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")], linkage=""
    )
    v = Vec(f, width)
    a, b, c, out = (f.load("ptr", f.gep("%ctx", i, "i64"), 8) for i in range(4))
    n = f.load("i64", f.gep("%ctx", 4, "i64"), 8)
    lo, hi = f.share(n, width * UNROLL)
    nt = kind.endswith("_nt")

    def store(value: str, base: str, idx: str) -> None:
        p = f.gep(base, idx)
        meta = ", !nontemporal !0" if nt else ""
        f.op(f"store {v.t} {value}, ptr {p}, align 64{meta}")

    def load(base: str, idx: str) -> str:
        return f.load(v.t, f.gep(base, idx), 64)

    if kind == "read":
        accs = [f.var(v.t, v.zero, "acc") for _ in range(UNROLL)]
        with f.loop(lo, hi, width * UNROLL, "i") as i:
            for u, acc in enumerate(accs):
                f.set(acc, v.add(f.get(acc), load(a, f.add(i, u * width))))
        total = f.get(accs[0])
        for acc in accs[1:]:
            total = v.add(total, f.get(acc))
        f.store("float", v.hsum(total), f.gep(out, f.mul(f.i64("%tid"), 16)))
    elif kind.startswith("copy"):
        with f.loop(lo, hi, width * UNROLL, "i") as i:
            for u in range(UNROLL):
                j = f.add(i, u * width)
                store(load(a, j), b, j)
    else:  # triad: a = b + s * c
        s = v.const(TRIAD_SCALAR)
        with f.loop(lo, hi, width * UNROLL, "i") as i:
            for u in range(UNROLL):
                j = f.add(i, u * width)
                store(v.fma(s, load(c, j), load(b, j)), a, j)
    return f


@functools.cache
def _native(host: HostCPU):
    writers = [_kernel(k, host.vector_width) for k in KERNELS]
    declares = sorted({d for w in writers for d in w.declares})
    text = "\n".join([*declares, *(w.finish() for w in writers), "!0 = !{i32 1}", ""])
    cm = compile_ir(text, host)
    return cm, {k: cm.address(f"stream_{k}") for k in KERNELS}


def aligned_empty(count: int, align: int = 4096) -> np.ndarray:
    """`count` float32 starting on an `align`-byte boundary (vector loads, NT stores)."""
    raw = np.empty(count * 4 + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start : start + count * 4].view(np.float32)


class Arrays:
    """Three arrays a, b, c of `count` floats (touched once, so pages exist) and the
    per-thread outputs of the read kernel."""

    def __init__(self, nbytes: int, host: HostCPU):
        step = host.vector_width * UNROLL * 64  # any thread count up to 64 divides evenly
        self.count = max(step, nbytes // 4 // step * step)
        self.a, self.b, self.c = (aligned_empty(self.count) for _ in range(3))
        self.a.fill(1.0)
        self.b.fill(2.0)
        self.c.fill(0.5)
        self.out = aligned_empty(16 * 64)
        self.ctx = (ctypes.c_uint64 * 5)(
            *(x.ctypes.data for x in (self.a, self.b, self.c, self.out)), self.count
        )

    @property
    def nbytes(self) -> int:
        return self.count * 4


def default_bytes(host: HostCPU) -> int:
    return max(4 * host.l3, 512 * MIB)


def _native_runner(arrays: Arrays, pool: Pool, kind: str, host: HostCPU):
    _, addr = _native(host)
    ctx = ctypes.addressof(arrays.ctx)
    return lambda: pool.run(addr[kind], ctx)


def _numpy_runner(arrays: Arrays, kind: str):
    a, b, c = arrays.a, arrays.b, arrays.c
    if kind == "read":
        return lambda: a.sum()
    if kind == "copy":
        return lambda: np.copyto(b, a)

    def triad():  # two passes (numpy has no fused a = b + s·c); counted as STREAM does
        np.multiply(c, TRIAD_SCALAR, out=a)
        np.add(a, b, out=a)

    return triad


def _gbs(kind: str, arrays: Arrays, seconds: float) -> float:
    return ARRAYS[kind.removesuffix("_nt")] * arrays.nbytes / seconds / 1e9


def measure_bandwidth(
    threads: int, nbytes: int | None = None, repeat: int = 5, host: HostCPU | None = None
) -> float:
    """DRAM read bandwidth in bytes/s with `threads` threads: best of `repeat` sums of an array
    of `nbytes` (default max(4 × L3, 256 MiB)) — ckeir's own probe, the one its run reports
    state CKU against (`ckeir.runtime.bandwidth`)."""
    from ckeir.runtime.bandwidth import measure_read_bandwidth

    return measure_read_bandwidth(threads, nbytes, repeat, host)


def run(nbytes: int, repeat: int, thread_counts: list[int], host: HostCPU) -> list[dict]:
    """Every (kernel, implementation, threads) timed in turns: each round runs each once, so
    load from other processes falls on all of them alike; best of `repeat` rounds."""
    arrays = Arrays(nbytes, host)
    runners = {}
    with contextlib.ExitStack() as stack:
        for kind in KERNELS:
            if not kind.endswith("_nt"):
                runners[kind, "numpy", 1] = _numpy_runner(arrays, kind)
        for nth in thread_counts:
            pool = stack.enter_context(Pool(nth, host))
            for kind in KERNELS:
                runners[kind, "native", nth] = _native_runner(arrays, pool, kind, host)
        timings = time_interleaved(runners, rounds=repeat, min_seconds=0.0)
    return [_result(kind, impl, nth, arrays, t) for (kind, impl, nth), t in timings.items()]


def _result(kind: str, impl: str, threads: int, arrays: Arrays, t) -> dict:
    return {
        "kernel": kind,
        "impl": impl,
        "threads": threads,
        "array_bytes": arrays.nbytes,
        "counted_bytes": ARRAYS[kind.removesuffix("_nt")] * arrays.nbytes,
        "gb_per_s": _gbs(kind, arrays, t.best),
        "gb_per_s_median": _gbs(kind, arrays, t.median),
        "timing": t,
    }


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, help="MiB per array (default: max(4 × L3, 512 MiB))")
    p.add_argument("--threads", help="comma-separated native thread counts (default 1,2,cores)")
    args = p.parse_args(argv)
    host = detect_host()
    host_info = host_description()
    nbytes = args.mib * MIB if args.mib else default_bytes(host)
    repeat = args.repeat or 10
    threads = (
        [int(x) for x in args.threads.split(",")]
        if args.threads
        else sorted({1, min(2, host.cores), host.cores})
    )
    log(f"stream: 3 arrays of {nbytes / MIB:.0f} MiB, best of {repeat}, threads {threads}")
    results = run(nbytes, repeat, threads, host)

    columns = ["kernel", "numpy 1 thr"] + [f"native {t} thr" for t in threads]
    rows = []
    for kind in KERNELS:
        cell = {(r["impl"], r["threads"]): r for r in results if r["kernel"] == kind}
        np_r = cell.get(("numpy", 1))
        row = [kind.replace("_nt", " (NT stores)"), fmt(np_r["gb_per_s"]) if np_r else "—"]
        row += [fmt(cell[("native", t)]["gb_per_s"]) for t in threads]
        rows.append(row)
    print_table(
        f"STREAM-style bandwidth, GB/s (best of {repeat} rounds; arrays {nbytes / MIB:.0f} MiB each)",
        columns,
        rows,
        notes=[
            f"host: {host_line(host_info)}",
            "each round runs every cell once (interleaved); "
            "bytes counted as STREAM does: read 1×, copy 2×, triad 3× the array size "
            "(write-allocate reads not counted); numpy's triad is two passes.",
        ],
    )
    if args.json:
        write_json(args.json, "stream", results, host_info, array_bytes=nbytes, repeat=repeat)


if __name__ == "__main__":
    main()
