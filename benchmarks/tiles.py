"""Tile-size sweep of the prefill GEMM kernel (`ckeir.backends.llvm.kernels.matmul`, n > 1 rows)
at SmolLM2's shapes: for each weight shape and format, time the kernel over a grid of
(tile_n, tile_k), report the best, and the time of the tile the compiler's tile pass picks
(`ckeir.passes.tile.choose_tile` with this host's L2 and core count).  The target: the picked
tile within 10% of the best (picked/best ≤ 1.10).

Each (shape, format) compiles one module holding every tile's kernel (`kernel_entry_ir` +
`compile_ir`); the pool runs all cores by default.  Weights are random values packed in the
format (quantized rows repeated: contents do not change the timing).

    python -m benchmarks.tiles [--tokens 128] [--formats f32,q4_1,q8_0] [--quick] [--json FILE]
"""

from __future__ import annotations

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
    host_line,
    log,
    print_table,
    time_interleaved,
    write_json,
)
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import entry_ctx, kernel_entry_ir, matmul, matmul_tile, module_ir
from ckeir.ir.types import quant_type
from ckeir.passes.manager import Target
from ckeir.passes.tile import choose_tile
from ckeir.runtime.weights import quantize_rows

# SmolLM2-135M: (name, rows N = outputs, K = inputs) of out[n, N] = x[n, K] @ w[N, K].T
SHAPES = (
    ("attn_q/attn_output 576→576", 576, 576),
    ("ffn_gate/ffn_up 576→1536", 1536, 576),
    ("ffn_down 1536→576", 576, 1536),
    ("LM head 576→49152", 49152, 576),
)
TILE_N = (16, 32, 64, 128, 256, 512, 1024, 2048)
TILE_K = (64, 128, 256, 512)  # plus the whole row
TARGET_RATIO = 1.10


def target_of(host: HostCPU) -> Target:
    return Target(cores=host.cores, l1d=host.l1d, l2=host.l2, l3=host.l3)


def weights(n_out: int, k: int, fmt: str, rng) -> np.ndarray:
    """A weight matrix in `fmt`: f32 values, or GGML blocks of up to 256 distinct rows."""
    if fmt == "f32":
        return rng.standard_normal((n_out, k), dtype=np.float32) / np.sqrt(k)
    distinct = rng.standard_normal((min(n_out, 256), k), dtype=np.float32) / np.sqrt(k)
    q = quantize_rows(distinct, fmt)
    return np.ascontiguousarray(np.tile(q, (-(-n_out // len(q)), 1))[:n_out])


def grid(n_out: int, k: int, fmt: str, host: HostCPU, nth: int) -> list[tuple[int, int]]:
    """The distinct tiles the kernel actually uses (after `matmul_tile`'s rounding) for the
    candidate (tile_n, tile_k), tile_n up to one thread's rows."""
    per_thread = -(-n_out // nth)
    tns = [t for t in TILE_N if t < per_thread] + [-(-per_thread // 16) * 16]
    tiles = {
        matmul_tile(k, (tn, tk), host.vector_width, fmt)
        for tn in tns
        for tk in (*[t for t in TILE_K if t < k], k)
    }
    return sorted(tiles)


def sweep(n_out, k, fmt: str, tokens: int, nth: int, host: HostCPU, pool, rng, rounds: int):
    picked_raw = choose_tile(n_out, k, quant_type(fmt), target_of(host))
    picked = matmul_tile(k, picked_raw, host.vector_width, fmt)
    tiles = grid(n_out, k, fmt, host, nth)
    if picked not in tiles:
        tiles.append(picked)
    kernels = [matmul(n_out, k, t, host, fmt=fmt) for t in tiles]
    text = module_ir(
        [*kernels, *(kernel_entry_ir(kr, f"entry{i}") for i, kr in enumerate(kernels))]
    )
    cm = compile_ir(text, host)
    x = rng.standard_normal((tokens, k), dtype=np.float32)
    w = weights(n_out, k, fmt, rng)
    out = np.zeros((tokens, n_out), dtype=np.float32)
    ctx = entry_ctx([x.ctypes.data, w.ctypes.data, out.ctypes.data], tokens, 0)
    c = ctypes.addressof(ctx)
    runners = {
        t: functools.partial(pool.run, cm.address(f"entry{i}"), c) for i, t in enumerate(tiles)
    }
    results = time_interleaved(runners, rounds, min_seconds=0.02)
    check = x @ _dequant(w, fmt).T
    err = float(np.max(np.abs(out - check)) / (np.max(np.abs(check)) + 1e-30))
    return picked_raw, picked, results, err


def _dequant(w: np.ndarray, fmt: str) -> np.ndarray:
    from ckeir.runtime.weights import dequantize_rows

    return dequantize_rows(w, fmt)


def main(argv=None) -> None:
    from ckeir.backends.llvm.pool import Pool

    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=128, help="rows n of the GEMM (prompt length)")
    p.add_argument("--formats", default="f32,q4_1,q8_0")
    p.add_argument("--threads", type=int, help="pool threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="the three layer shapes, q4_1 only")
    args = p.parse_args(argv)
    host = detect_host()
    nth = args.threads or host.cores
    formats = ["q4_1"] if args.quick else args.formats.split(",")
    shapes = SHAPES[:3] if args.quick else SHAPES
    rounds = args.repeat or 5
    rng = np.random.default_rng(0)
    rows, results = [], []
    with Pool(nth, host) as pool:
        for name, n_out, k in shapes:
            for f in formats:
                log(f"tiles: {name}, {f}")
                picked_raw, picked, timing, err = sweep(
                    n_out, k, f, args.tokens, nth, host, pool, rng, rounds
                )
                best_tile = min(timing, key=lambda t: timing[t].best)
                best, pick = timing[best_tile].best, timing[picked].best
                flops = 2.0 * args.tokens * n_out * k
                rows.append(
                    [
                        name,
                        f,
                        len(timing),
                        f"{best_tile[0]}×{best_tile[1]}",
                        fmt(best * 1e3, 3),
                        fmt(flops / best / 1e9),
                        f"{picked[0]}×{picked[1]}",
                        fmt(pick * 1e3, 3),
                        f"{pick / best:.2f}" + ("" if pick / best <= TARGET_RATIO else " !"),
                    ]
                )
                results.append(
                    {
                        "shape": name,
                        "n_out": n_out,
                        "k": k,
                        "format": f,
                        "tokens": args.tokens,
                        "threads": nth,
                        "picked_requested": picked_raw,
                        "picked": picked,
                        "best": best_tile,
                        "ratio": pick / best,
                        "max_rel_error": err,
                        "grid": [
                            {"tile": t, "best_s": tm.best, "median_s": tm.median, "n": tm.n}
                            for t, tm in sorted(timing.items())
                        ],
                    }
                )
    print_table(
        f"Prefill GEMM tile sweep: n = {args.tokens} rows, {nth} thread(s), "
        f"best of {rounds} rounds (each round times every tile once, batches ≥ 20 ms)",
        [
            "weight",
            "fmt",
            "tiles",
            "best tile n×k",
            "best ms",
            "GFLOP/s",
            "picked n×k",
            "picked ms",
            "picked/best",
        ],
        rows,
        notes=[
            f"host: {host_line()}",
            f"picked = choose_tile(N, K, fmt, Target(l2={host.l2 >> 10} KiB, cores={host.cores}))"
            " after the kernel's rounding (matmul_tile); '!' marks picked/best > "
            f"{TARGET_RATIO:.2f}.  The LM head runs on the last prompt row only in ckeir's "
            "prefill (a GEMV, where tiles do not apply): its row is for reference.",
        ],
    )
    if args.json:
        write_json(args.json, "tiles", results)


if __name__ == "__main__":
    main()
