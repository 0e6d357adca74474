"""Decode GEMV throughput of the quantized-weight matmul kernels against this machine's read
bandwidth, for the SmolLM2-135M shapes: each shape with both activation types a schedule can
choose (`kernels.weight_matmul`, as the lowering picks them) — `int8` (`quantize activations
q8_0`, the default: activations rounded to Q8_0 blocks, integer dot products) and `f32`
(`quantize activations f32`: float activations against the weight blocks).

Each shape's weights are tiled into enough copies to be 4 × L3 and cycled through, one
`Pool.run` per GEMV as a decode step calls it (so the per-call overhead is included), so
every byte comes from DRAM; both kernels of a shape read the same copies.  The baseline is
`benchmarks.stream`'s native read kernel (sum of an array of max(4 × L3, 512 MiB)) on the
same pools, and numpy's one-thread `np.sum`; every cell is timed in turns with the others
(`time_interleaved`), best of N rounds.

    python -m benchmarks.gemv [--threads 1,2] [--isa avx512|avx2|generic] [--repeat 10] [--quick]
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    common_args,
    fmt,
    host_line,
    log,
    print_table,
    time_interleaved,
    write_json,
)
from benchmarks.stream import (
    Arrays,
    _native_runner,
    _numpy_runner,
    aligned_empty,
    default_bytes,
)
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import entry_ctx, kernel_entry_ir, module_ir, weight_matmul
from ckeir.backends.llvm.pool import Pool
from ckeir.runtime.weights import quantize_rows

SHAPES = [  # fmt, N, K: SmolLM2-135M's Q4_1 layers, one layer shape in Q8_0, its Q8_0 LM head
    ("q4_1", 576, 576),
    ("q4_1", 192, 576),
    ("q4_1", 1536, 576),
    ("q4_1", 576, 1536),
    ("q8_0", 576, 1536),
    ("q8_0", 49152, 576),
]
ACTIVATIONS = {"int8": "q8_0", "f32": None}  # table name -> the matmul's `act` attribute


class Weights:
    """One shape's weights: copies filling 4 × L3 (or `at_least` bytes), so that cycling
    through them reads DRAM."""

    def __init__(self, fmt_name: str, n_out: int, k: int, host: HostCPU, at_least: int = 0):
        rng = np.random.default_rng(0)
        w1 = quantize_rows(rng.standard_normal((n_out, k)).astype(np.float32), fmt_name)
        self.nbytes = w1.nbytes
        self.copies = max(1, -(-max(4 * host.l3, at_least) // self.nbytes))
        self.w = np.ascontiguousarray(np.tile(w1, (self.copies, 1)))
        # 64-byte aligned, as the arena places every activation: a float kernel's vector
        # loads from a misaligned x split cache lines (about 30% slower on Zen 5)
        self.x = aligned_empty(k, 64).reshape(1, k)
        self.x[:] = rng.standard_normal((1, k))
        self.out = aligned_empty(n_out, 64).reshape(1, n_out)


class Gemv:
    """One shape's kernel for one activation type, over that shape's weight copies."""

    def __init__(self, shape: tuple[str, int, int], act: str | None, w: Weights, host: HostCPU):
        fmt_name, n_out, k = shape
        kernel = weight_matmul(fmt_name, act, n_out, k, (64, 256), host)
        self.name = kernel.name
        self.module = compile_ir(module_ir([kernel, kernel_entry_ir(kernel)]), host)
        self.fn = self.module.address("entry")
        x, out = w.x.ctypes.data, w.out.ctypes.data
        self.ctxs = [
            entry_ctx([x, w.w.ctypes.data + c * w.nbytes, out], 1, 0) for c in range(w.copies)
        ]
        self.addrs = [ctypes.addressof(c) for c in self.ctxs]

    def runner(self, pool: Pool):
        def sweep() -> None:
            for a in self.addrs:
                pool.run(self.fn, a)

        return sweep


def shape_name(shape: tuple[str, int, int]) -> str:
    return "{} {}x{}".format(*shape)


def run(repeat: int, threads: list[int], host: HostCPU) -> list[dict]:
    arrays = Arrays(default_bytes(host), host)
    weights = {shape: Weights(*shape, host) for shape in SHAPES}
    gemvs = {
        (shape, name): Gemv(shape, act, weights[shape], host)
        for shape in SHAPES
        for name, act in ACTIVATIONS.items()
    }
    runners: dict[tuple, object] = {("np.sum", None, 1): _numpy_runner(arrays, "read")}
    with contextlib.ExitStack() as stack:
        for nth in threads:
            pool = stack.enter_context(Pool(nth, host))
            runners["read", None, nth] = _native_runner(arrays, pool, "read", host)
            for (shape, name), g in gemvs.items():
                runners[shape, name, nth] = g.runner(pool)
        timings = time_interleaved(runners, rounds=repeat, min_seconds=0.0)
    read = {nth: arrays.nbytes / timings["read", None, nth].best for nth in threads}
    results = []
    for (what, act, nth), t in timings.items():
        w = None if isinstance(what, str) else weights[what]
        nbytes = arrays.nbytes if w is None else w.copies * w.nbytes
        results.append(
            {
                "what": what if w is None else shape_name(what),
                "activations": act,
                "kernel": None if w is None else gemvs[what, act].name,
                "threads": nth,
                "weight_bytes": None if w is None else w.nbytes,
                "gb_per_s": nbytes / t.best / 1e9,
                "fraction_of_read": nbytes / t.best / read[nth],
                "timing": t,
            }
        )
    return results


def table_rows(results: list[dict], threads: list[int]) -> list[list[str]]:
    """One row per shape: per thread count, each activation type's GB/s and share of read,
    and f32's share over int8's."""
    cell = {(r["what"], r["activations"], r["threads"]): r for r in results}
    rows = [["read (stream kernel)", "—"]]
    for t in threads:
        r = cell["read", None, t]
        rows[0] += [fmt(r["gb_per_s"]), "1.00", "", "", ""]
    for shape in SHAPES:
        what = shape_name(shape)
        row = [what, fmt(cell[what, "int8", threads[0]]["weight_bytes"] / 1e6, 2)]
        for t in threads:
            i8, f = cell[what, "int8", t], cell[what, "f32", t]
            row += [
                fmt(i8["gb_per_s"]),
                f"{i8['fraction_of_read']:.2f}",
                fmt(f["gb_per_s"]),
                f"{f['fraction_of_read']:.2f}",
                f"{f['gb_per_s'] / i8['gb_per_s']:.2f}",
            ]
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--isa", help="narrow the host to generic, avx2 or avx512")
    p.add_argument("--quick", action="store_true", help="smoke run: best of 3 rounds")
    args = p.parse_args(argv)
    host = detect_host(args.isa)
    threads = [int(x) for x in args.threads.split(",")]
    repeat = args.repeat or (3 if args.quick else 10)
    log(f"gemv: {len(SHAPES)} shapes, threads {threads}, best of {repeat} interleaved rounds")
    results = run(repeat, threads, host)
    columns = ["weights", "MB"]
    for t in threads:
        columns += [f"{t} thr int8 GB/s", "of read", "f32 GB/s", "of read", "f32÷int8"]
    np_read = next(r for r in results if r["what"] == "np.sum")
    print_table(
        f"Decode GEMV (n = 1) from DRAM, GB/s of weight bytes (best of {repeat} rounds)",
        columns,
        table_rows(results, threads),
        notes=[
            f"host: {host_line()}; kernels for {host.isa}{' + VNNI' if host.has_vnni else ''}",
            "int8: activations quantized to Q8_0 blocks (`quantize activations q8_0`); "
            "f32: float activations (`quantize activations f32`).",
            f"np.sum (1 thread) read {fmt(np_read['gb_per_s'])} GB/s; "
            "'of read' = fraction of the stream read kernel's bandwidth at the same thread count.",
        ],
    )
    if args.json:
        write_json(args.json, "gemv", results, repeat=repeat, threads=threads)


if __name__ == "__main__":
    main()
