"""Decode GEMV on F16/BF16 weights at SmolLM2-135M's shapes, against the same kernel as an
earlier commit built it and against this machine's read bandwidth, timed side by side.

Each (type, shape) gets copies of its matrix filling max(4 × L3, 400 MB), cycled through one
GEMV after another in one `Pool.run`; each thread runs its share of the op's parts as the scheduler cuts a
matmul (`schedule.PARTS_PER_THREAD` per thread), so a part is as short as in a decode step.
The kernels (this tree's, and `--against REV`'s `kernels/matmul.py` loaded from git) and
`benchmarks.stream`'s read kernel are timed in turns (`time_interleaved`), best of N rounds:
the ratios are measured side by side; the GB/s figures are the stored bytes over the best
time.

    python -m benchmarks.float_gemv [--against REV] [--types f16,bf16] [--threads 2]
                                    [--shapes 576x576,49152x576] [--repeat 7] [--json FILE]
"""

from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO,
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    time_interleaved,
    write_json,
)
from benchmarks.gemv import Weights
from benchmarks.stream import Arrays, _native_runner, default_bytes
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import module_ir
from ckeir.backends.llvm.kernels.matmul import matmul
from ckeir.backends.llvm.pool import Pool
from ckeir.backends.llvm.schedule import PARTS_PER_THREAD

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]  # N x K
MIN_BYTES = 400 * 10**6


def matmul_at(rev: str):
    """`kernels/matmul.py` as commit `rev` has it, loaded as a module of its own."""
    path = "ckeir/backends/llvm/kernels/matmul.py"
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True, capture_output=True
    ).stdout
    tmp = Path(tempfile.mkdtemp()) / f"matmul_{rev}.py"
    tmp.write_bytes(text)
    spec = importlib.util.spec_from_file_location(f"matmul_{rev}", tmp)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parts_entry(kernel, parts_per_thread: int) -> str:
    """`void @entry(ptr ctx, i32 tid, i32 nth)`: for each of `copies` matrices `nbytes`
    apart, thread tid runs parts tid, tid + nth, ... of nth · parts_per_thread parts of
    `kernel` (ctx: i64 words x, w, out, copies, nbytes); no wait between GEMVs (their
    outputs are the same rows, written by the same parts)."""
    return f"""define void @entry(ptr %ctx, i32 %tid, i32 %nth) nounwind {{
start:
  %x = load ptr, ptr %ctx, align 8
  %pw = getelementptr inbounds i64, ptr %ctx, i64 1
  %w0 = load ptr, ptr %pw, align 8
  %po = getelementptr inbounds i64, ptr %ctx, i64 2
  %o = load ptr, ptr %po, align 8
  %pc = getelementptr inbounds i64, ptr %ctx, i64 3
  %copies = load i64, ptr %pc, align 8
  %pb = getelementptr inbounds i64, ptr %ctx, i64 4
  %nbytes = load i64, ptr %pb, align 8
  %parts = mul i32 %nth, {parts_per_thread}
  br label %copy
copy:
  %c = phi i64 [ 0, %start ], [ %c1, %copied ]
  %off = mul i64 %c, %nbytes
  %w = getelementptr inbounds i8, ptr %w0, i64 %off
  br label %head
head:
  %p = phi i32 [ %tid, %copy ], [ %next, %body ]
  %more = icmp slt i32 %p, %parts
  br i1 %more, label %body, label %copied
body:
  call void @{kernel.name}(ptr %x, ptr %w, ptr %o, i64 1, i64 0, i32 %p, i32 %parts)
  %next = add i32 %p, %nth
  br label %head
copied:
  %c1 = add i64 %c, 1
  %again = icmp slt i64 %c1, %copies
  br i1 %again, label %copy, label %done
done:
  ret void
}}
"""


class Runner:
    """One kernel over a shape's weight copies, all in one pool run."""

    def __init__(self, kernel, w: Weights, host: HostCPU):
        self.name = kernel.name
        text = module_ir([kernel, parts_entry(kernel, PARTS_PER_THREAD)])
        self.module = compile_ir(text, host, use_cache=False)
        self.fn = self.module.address("entry")
        self.ctx = (ctypes.c_uint64 * 5)(
            w.x.ctypes.data, w.w.ctypes.data, w.out.ctypes.data, w.copies, w.nbytes
        )

    def sweep(self, pool: Pool):
        addr = ctypes.addressof(self.ctx)
        return lambda: pool.run(self.fn, addr)


def run(types, shapes, threads: int, repeat: int, against: str, host: HostCPU) -> list[dict]:
    before = matmul_at(against)
    arrays = Arrays(default_bytes(host), host)
    results = []
    with Pool(threads, host) as pool:
        read = _native_runner(arrays, pool, "read", host)
        for t in types:
            for n, k in shapes:
                log(f"float_gemv: {t} {n}x{k}")
                w = Weights(t, n, k, host, at_least=MIN_BYTES)
                kernels = {
                    "now": matmul(n, k, (16, k), host, fmt=t),
                    against: before.matmul(n, k, (16, k), host, fmt=t),
                }
                runners = {name: Runner(kern, w, host) for name, kern in kernels.items()}
                fns = {"read": read} | {name: r.sweep(pool) for name, r in runners.items()}
                timings = time_interleaved(fns, rounds=repeat, min_seconds=0.0)
                swept = w.copies * w.nbytes
                read_bw = arrays.nbytes / timings["read"].best
                results.append(
                    {
                        "type": t,
                        "shape": f"{n}x{k}",
                        "matrix_bytes": w.nbytes,
                        "read_gb_per_s": read_bw / 1e9,
                        "gb_per_s": {m: swept / timings[m].best / 1e9 for m in runners},
                        "fraction_of_read": {m: swept / timings[m].best / read_bw for m in runners},
                        "now_over_before": timings[against].best / timings["now"].best,
                        "timing": {m: timings[m] for m in fns},
                    }
                )
                del runners, fns, w
    return results


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--against", default="HEAD", help="the commit whose kernel to compare with")
    p.add_argument("--types", default="f16,bf16")
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    host, info = detect_host(), host_description()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    results = run(args.types.split(","), shapes, args.threads, args.repeat or 7, args.against, host)
    print_table(
        f"float decode GEMV, {args.threads} threads, now vs {args.against} (best of "
        f"{args.repeat or 7} interleaved rounds)",
        [
            "type",
            "N x K",
            "MB",
            "read GB/s",
            f"{args.against} GB/s",
            "now GB/s",
            "of read",
            "now ÷ before",
        ],
        [
            [
                r["type"],
                r["shape"],
                fmt(r["matrix_bytes"] / 1e6, 2),
                fmt(r["read_gb_per_s"]),
                fmt(r["gb_per_s"][args.against]),
                fmt(r["gb_per_s"]["now"]),
                f"{r['fraction_of_read']['now']:.2f}",
                f"{r['now_over_before']:.2f}×",
            ]
            for r in results
        ],
    )
    print(host_line(info))
    if args.json:
        write_json(args.json, "float_gemv", results, info, args=vars(args))


if __name__ == "__main__":
    main()
