"""Decode GEMV on every weight type ckeir computes on as stored, against this machine's read
bandwidth (issue 15): one matrix shape (N x K = 4096 x 2048 by default, K a multiple of the
K-quants' 256), each type with the activations the quantize pass gives it — int8 (Q8_0
blocks, integer dot products) for the block types, float for F16/BF16 — the kernel
`kernels.weight_matmul` picks, as the lowering does.

Per type, copies of its matrix fill at least 400 MB (and 4 × L3) and are cycled through, one
`Pool.run` per GEMV as a decode step calls it, so every byte comes from DRAM.  Each type is
timed in turns with `benchmarks.stream`'s native read kernel on the same pool
(`time_interleaved`, best of N rounds): the share of read bandwidth is a ratio measured side
by side.  One type's copies at a time are held.

    python -m benchmarks.gemv_types [--threads 1,2] [--types q4_k,q6_k] [--shape 4096x2048]
                                    [--isa avx512|avx2|generic] [--repeat 5] [--quick]
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

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
from benchmarks.gemv import Gemv, Weights
from benchmarks.stream import Arrays, _native_runner, default_bytes
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.pool import Pool
from ckeir.formats import COMPUTED, FORMATS

MIN_BYTES = 400 * 10**6  # weights per type: well beyond L3
TYPES = [t for t in COMPUTED if t != "f32"]


def activation(fmt_name: str) -> str | None:
    """What the quantize pass gives a matmul on this type: int8 activations on blocks."""
    return "q8_0" if FORMATS[fmt_name].quantized else None


def run(types: list[str], shape: tuple[int, int], repeat: int, threads: list[int], host: HostCPU):
    arrays = Arrays(default_bytes(host), host)
    results = []
    with contextlib.ExitStack() as stack:
        pools = {nth: stack.enter_context(Pool(nth, host)) for nth in threads}
        for t in types:
            log(f"gemv_types: {t}")
            w = Weights(t, *shape, host, at_least=MIN_BYTES)
            g = Gemv((t, *shape), activation(t), w, host)
            runners = {}
            for nth, pool in pools.items():
                runners["read", nth] = _native_runner(arrays, pool, "read", host)
                runners[t, nth] = g.runner(pool)
            timings = time_interleaved(runners, rounds=repeat, min_seconds=0.0)
            for nth in threads:
                read = arrays.nbytes / timings["read", nth].best
                gemv = w.copies * w.nbytes / timings[t, nth].best
                results.append(
                    {
                        "type": t,
                        "kernel": g.name,
                        "threads": nth,
                        "matrix_bytes": w.nbytes,
                        "swept_bytes": w.copies * w.nbytes,
                        "read_gb_per_s": read / 1e9,
                        "gb_per_s": gemv / 1e9,
                        "fraction_of_read": gemv / read,
                        "timing": timings[t, nth],
                    }
                )
            del g, w, runners
    return results


def table_rows(results: list[dict], threads: list[int]) -> list[list[str]]:
    """One row per type: its kernel and stored bytes, then per thread count the GEMV's GB/s
    and its share of the read kernel's bandwidth (the read GB/s it was timed beside)."""
    cell = {(r["type"], r["threads"]): r for r in results}
    rows = []
    for t in dict.fromkeys(r["type"] for r in results):
        first = cell[t, threads[0]]
        name = first["kernel"]  # e.g. kqmatmul_q4_k_n4096_k2048_vnni: kernel and code path
        row = [
            t,
            "int8" if activation(t) else "f32",
            f"{name.split('_')[0]} {name.rsplit('_')[-1]}",
        ]
        row.append(fmt(first["matrix_bytes"] / 1e6, 2))
        for nth in threads:
            r = cell[t, nth]
            row += [
                f"{fmt(r['gb_per_s'])} / {fmt(r['read_gb_per_s'])}",
                f"{r['fraction_of_read']:.2f}",
            ]
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--types", default=",".join(TYPES), help="comma-separated weight types")
    p.add_argument("--shape", default="4096x2048", help="N x K of the matrix")
    p.add_argument("--isa", help="narrow the host to generic, avx2 or avx512")
    p.add_argument("--quick", action="store_true", help="smoke run: best of 2 rounds")
    args = p.parse_args(argv)
    host = detect_host(args.isa)
    threads = [int(x) for x in args.threads.split(",")]
    types = args.types.split(",")
    shape = tuple(int(x) for x in args.shape.split("x"))
    repeat = args.repeat or (2 if args.quick else 5)
    log(f"gemv_types: {len(types)} types, {shape[0]}x{shape[1]}, threads {threads}")
    results = run(types, shape, repeat, threads, host)
    print_table(
        f"Decode GEMV (n = 1, {shape[0]} x {shape[1]}) per weight type from DRAM "
        f"(best of {repeat} interleaved rounds)",
        ["type", "act", "kernel", "matrix MB"]
        + [c for nth in threads for c in (f"{nth} thr GB/s", "of read")],
        table_rows(results, threads),
        notes=[
            f"host: {host_line()}; kernels for {host.isa}{' + VNNI' if host.has_vnni else ''}",
            "GB/s of the type's stored bytes; 'of read' = GEMV ÷ the stream read kernel "
            "(read GB/s in each type's row), timed in turns on the same threads.",
        ],
    )
    if args.json:
        write_json(args.json, "gemv_types", results, repeat=repeat, threads=threads)


if __name__ == "__main__":
    main()
