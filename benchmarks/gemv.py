"""Decode GEMV throughput of the quantized matmul kernels against the machine's read bandwidth.

Each shape's weights are tiled into enough copies to be several times larger than L3 and
cycled through (one `Pool.run` per GEMV, as a decode step does), so every byte comes from
DRAM.  The bandwidth baseline, measured in the same run: a JIT-compiled read loop over a
1 GiB buffer on the same pool (4 independent 512/256-bit load-add chains per thread), and
numpy's single-threaded `np.sum` over the same bytes.

    python benchmarks/gemv.py [--isa avx512|avx2|generic] [--threads 1 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np

from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import entry_ctx, kernel_entry_ir, module_ir
from ckeir.backends.llvm.kernels.common import finish_kernel, kernel_writer
from ckeir.backends.llvm.kernels.quant_matmul import qmatmul
from ckeir.backends.llvm.pool import Pool
from ckeir.runtime.weights import quantize_rows

SHAPES = [  # fmt, N, K (SmolLM2-135M)
    ("q4_1", 1536, 576),
    ("q4_1", 576, 1536),
    ("q4_1", 576, 576),
    ("q8_0", 49152, 576),
]
GiB = 1 << 30


def read_kernel(host: HostCPU):
    """(buf, out) -> out[tid] = a checksum of this thread's share of buf (n bytes)."""
    f = kernel_writer("read_bw", 2)
    lanes = host.vector_bits // 32
    vt = f"<{lanes} x i32>"
    step = 4 * lanes * 4
    lo, hi = f.share("%n", 4096)
    accs = [f.var(vt, "zeroinitializer", "acc") for _ in range(4)]
    with f.loop(lo, f.round_down(lo, hi, step), step, "i") as i:
        for j, a in enumerate(accs):
            v = f.load(vt, f.gep("%a0", f.add(i, j * lanes * 4), "i8"), 64)
            f.set(a, f(f"add {vt} {f.get(a)}, {v}"))
    total = f(f"add {vt} {f.get(accs[0])}, {f.get(accs[1])}")
    total = f(f"add {vt} {total}, {f(f'add {vt} {f.get(accs[2])}, {f.get(accs[3])}')}")
    s = f.intrinsic("i32", f"llvm.vector.reduce.add.v{lanes}i32", [(vt, total)])
    f.store("i32", s, f.gep("%a1", f.i64("%tid"), "i32"))
    return finish_kernel(f, ("buf", "out"))


def timed(fn, seconds: float) -> float:
    """Best seconds per call of fn() over a few rounds of about `seconds` in total."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(seconds / 5 / once))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def read_bandwidth(host: HostCPU, pools: dict[int, Pool], seconds: float) -> dict[str, float]:
    buf = np.ones(GiB, np.uint8)
    out = np.zeros(64, np.int32)
    k = read_kernel(host)
    cm = compile_ir(module_ir([k, kernel_entry_ir(k)]), host)
    ctx = entry_ctx([buf.ctypes.data, out.ctypes.data], GiB, 0)
    res = {}
    for nth, pool in pools.items():
        sec = timed(lambda p=pool: p.run(cm.address("entry"), ctypes.addressof(ctx)), seconds)
        res[f"jit read, {nth} thr"] = GiB / sec / 1e9
    f64 = buf.view(np.float64)
    res["np.sum, 1 thr"] = GiB / timed(lambda: f64.sum(), seconds) / 1e9
    return res


class Gemv:
    """One shape's kernel and enough copies of its weights to be 4x the size of L3, cycled
    through one `Pool.run` per GEMV (as a decode step calls it)."""

    def __init__(self, fmt: str, n_out: int, k: int, host: HostCPU):
        rng = np.random.default_rng(0)
        w1 = quantize_rows(rng.standard_normal((n_out, k)).astype(np.float32), fmt)
        self.nbytes = w1.nbytes
        self.copies = max(1, -(-4 * host.l3 // self.nbytes))
        self.w = np.ascontiguousarray(np.tile(w1, (self.copies, 1)))
        self.x = rng.standard_normal((1, k)).astype(np.float32)
        self.out = np.zeros((1, n_out), np.float32)
        kern = qmatmul(fmt, n_out, k, (64, 256), host)
        self.module = compile_ir(module_ir([kern, kernel_entry_ir(kern)]), host)
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

    def bandwidth(self, pool: Pool, seconds: float) -> float:
        """GB/s of weight bytes."""

        def sweep():
            for a in self.addrs:
                pool.run(self.fn, a)

        return self.copies * self.nbytes / timed(sweep, seconds) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each cell keeps its best")
    args = ap.parse_args()
    host = detect_host(args.isa)
    pools = {nth: Pool(nth, host) for nth in args.threads}
    print(f"host {host.name}, isa {host.isa}, vnni {host.has_vnni}, L3 {host.l3 >> 20} MiB")
    gemvs = {shape: Gemv(*shape, host) for shape in SHAPES}
    base: dict[str, float] = {}
    res: dict[tuple, float] = {}
    for _ in range(args.repeat):  # other processes come and go: interleave, keep the best
        for name, gbs in read_bandwidth(host, pools, args.seconds).items():
            base[name] = max(base.get(name, 0.0), gbs)
        for shape, g in gemvs.items():
            for nth, pool in pools.items():
                res[shape, nth] = max(res.get((shape, nth), 0.0), g.bandwidth(pool, args.seconds))
    print(f"load average {os.getloadavg()[0]:.2f} (other processes share these cores)")
    for name, gbs in base.items():
        print(f"  {name:18} {gbs:6.1f} GB/s")
    print()
    head = "".join(f" | {n} thr GB/s | frac" for n in args.threads)
    print(f"{'weights':22}{'MB':>7}{head}")
    for (fmt, n_out, k), g in gemvs.items():
        cells = "".join(
            f" | {res[(fmt, n_out, k), n]:10.1f} | {res[(fmt, n_out, k), n] / base[f'jit read, {n} thr']:4.2f}"
            for n in args.threads
        )
        print(f"{fmt} {n_out}x{k:<12}{g.nbytes / 1e6:7.2f}{cells}")
    for pool in pools.values():
        pool.close()


if __name__ == "__main__":
    main()
