"""Decode GEMV throughput of the int8 quantized matmul kernels (`qmatmul`) against this
machine's read bandwidth, for the SmolLM2-135M shapes.

Each shape's weights are tiled into enough copies to be 4 × L3 and cycled through, one
`Pool.run` per GEMV as a decode step calls it (so the per-call overhead is included), so
every byte comes from DRAM.  The baseline is `benchmarks.stream`'s native read kernel (sum of
an array of max(4 × L3, 512 MiB)) on the same pools, and numpy's one-thread `np.sum`;
every cell is timed in turns with the others (`time_interleaved`), best of N rounds.

    python -m benchmarks.gemv [--threads 1,2] [--isa avx512|avx2|generic] [--repeat 10]
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
from benchmarks.stream import Arrays, _native_runner, _numpy_runner, default_bytes
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import entry_ctx, kernel_entry_ir, module_ir
from ckeir.backends.llvm.kernels.quant_matmul import qmatmul
from ckeir.backends.llvm.pool import Pool
from ckeir.runtime.weights import quantize_rows

SHAPES = [  # fmt, N, K: SmolLM2-135M's Q4_1 layers and its Q8_0 LM head
    ("q4_1", 1536, 576),
    ("q4_1", 576, 1536),
    ("q4_1", 576, 576),
    ("q8_0", 49152, 576),
]


class Gemv:
    """One shape's kernel and copies of its weights filling 4 × L3, cycled through."""

    def __init__(self, fmt_name: str, n_out: int, k: int, host: HostCPU):
        rng = np.random.default_rng(0)
        w1 = quantize_rows(rng.standard_normal((n_out, k)).astype(np.float32), fmt_name)
        self.nbytes = w1.nbytes
        self.copies = max(1, -(-4 * host.l3 // self.nbytes))
        self.w = np.ascontiguousarray(np.tile(w1, (self.copies, 1)))
        self.x = rng.standard_normal((1, k)).astype(np.float32)
        self.out = np.zeros((1, n_out), np.float32)
        kernel = qmatmul(fmt_name, n_out, k, (64, 256), host)
        self.module = compile_ir(module_ir([kernel, kernel_entry_ir(kernel)]), host)
        self.fn = self.module.address("entry")
        self.ctxs = [
            entry_ctx(
                [self.x.ctypes.data, self.w.ctypes.data + c * self.nbytes, self.out.ctypes.data],
                1,
                0,
            )
            for c in range(self.copies)
        ]
        self.addrs = [ctypes.addressof(c) for c in self.ctxs]

    def runner(self, pool: Pool):
        def sweep() -> None:
            for a in self.addrs:
                pool.run(self.fn, a)

        return sweep


def run(repeat: int, threads: list[int], host: HostCPU) -> list[dict]:
    arrays = Arrays(default_bytes(host), host)
    gemvs = {shape: Gemv(*shape, host) for shape in SHAPES}
    runners: dict[tuple, object] = {("np.sum", 1): _numpy_runner(arrays, "read")}
    with contextlib.ExitStack() as stack:
        for nth in threads:
            pool = stack.enter_context(Pool(nth, host))
            runners["read", nth] = _native_runner(arrays, pool, "read", host)
            for shape, g in gemvs.items():
                runners[shape, nth] = g.runner(pool)
        timings = time_interleaved(runners, rounds=repeat, min_seconds=0.0)
    read = {nth: arrays.nbytes / timings["read", nth].best for nth in threads}
    results = []
    for (what, nth), t in timings.items():
        nbytes = (
            arrays.nbytes if what in ("read", "np.sum") else gemvs[what].copies * gemvs[what].nbytes
        )
        results.append(
            {
                "what": what if isinstance(what, str) else "{} {}x{}".format(*what),
                "threads": nth,
                "weight_bytes": None if isinstance(what, str) else gemvs[what].nbytes,
                "gb_per_s": nbytes / t.best / 1e9,
                "fraction_of_read": nbytes / t.best / read[nth],
                "timing": t,
            }
        )
    return results


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--isa", help="narrow the host to generic, avx2 or avx512")
    args = p.parse_args(argv)
    host = detect_host(args.isa)
    threads = [int(x) for x in args.threads.split(",")]
    repeat = args.repeat or 10
    log(f"gemv: {len(SHAPES)} shapes, threads {threads}, best of {repeat} interleaved rounds")
    results = run(repeat, threads, host)
    cell = {(r["what"], r["threads"]): r for r in results}
    columns = ["weights", "MB"] + [c for t in threads for c in (f"{t} thr GB/s", "of read")]
    rows = []
    for what in ["read", *("{} {}x{}".format(*s) for s in SHAPES)]:
        r0 = next(r for r in results if r["what"] == what)
        mb = "—" if r0["weight_bytes"] is None else fmt(r0["weight_bytes"] / 1e6, 2)
        row = [what if what != "read" else "read (stream kernel)", mb]
        for t in threads:
            r = cell[what, t]
            row += [fmt(r["gb_per_s"]), f"{r['fraction_of_read']:.2f}"]
        rows.append(row)
    print_table(
        f"Decode GEMV (n = 1) from DRAM, GB/s of weight bytes (best of {repeat} rounds)",
        columns,
        rows,
        notes=[
            f"host: {host_line()}; kernels for {host.isa}{' + VNNI' if host.has_vnni else ''}",
            f"np.sum (1 thread) read {fmt(cell['np.sum', 1]['gb_per_s'])} GB/s; "
            "'of read' = fraction of the stream read kernel's bandwidth at the same thread count.",
        ],
    )
    if args.json:
        write_json(args.json, "gemv", results, repeat=repeat, threads=threads)


if __name__ == "__main__":
    main()
