"""Tile-size sweep of the prefill GEMM kernels (n > 1 rows) at SmolLM2's shapes: for each weight
shape and kernel/format, time the kernel over a grid of tiles, report the best, and the time of
the tile the compiler's tile pass picks (`ckeir.passes.tile.choose_tile` with this host's L2
and core count).  The target: the picked tile within 10% of the best (picked/best ≤ 1.10).

Kernels, as lower-llvm chooses them:

- `matmul` (`ckeir.backends.llvm.kernels.matmul`): f32 activations, f32 or GGML-block weights
  dequantized in registers; tiles are (tile_n, tile_k);
- `qmatmul` (`...kernels.quant_matmul`): int8 activations (`quantize activations q8_0`, the
  default for block-quantized weights) and int8 dot products; only tile_n matters (rows per
  tile; K is always whole).

Each (shape, kernel, format) compiles one module holding every tile's kernel
(`kernel_entry_ir` + `compile_ir`), run by `Pool` on all cores by default; timing is
interleaved (each round times every tile once).  Weights are random values packed in the
format (quantized rows repeated: their contents do not change the timing).

    python -m benchmarks.tiles [--kernels matmul:f32,qmatmul:q4_1,qmatmul:q8_0] [--quick] [--json FILE]
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
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
from ckeir.backends.llvm.kernels import entry_ctx, kernel_entry_ir, matmul, matmul_tile, module_ir
from ckeir.backends.llvm.kernels import quant_matmul as qm
from ckeir.ir.types import quant_type
from ckeir.passes.manager import Target
from ckeir.passes.tile import choose_tile
from ckeir.runtime.weights import dequantize_rows, quantize_rows

# SmolLM2-135M: (name, rows N = outputs, K = inputs) of out[n, N] = x[n, K] @ w[N, K].T
SHAPES = (
    ("attn_q/attn_output 576→576", 576, 576),
    ("ffn_gate/ffn_up 576→1536", 1536, 576),
    ("ffn_down 1536→576", 576, 1536),
    ("LM head 576→49152", 49152, 576),
)
TILE_N = (16, 32, 64, 128, 256, 512, 1024, 2048)  # plus one thread's rows
TILE_K = (64, 128, 256, 512)  # plus the whole row
TARGET_RATIO = 1.10
SWEEP_SECONDS = 12.0  # timing budget of one (shape, kernel, format): fewer rounds past it
SWEEP_SPAN = 4.0  # ... and more rounds below this, to outlast a burst of load from others
DEFAULT_KERNELS = "matmul:f32,qmatmul:q4_1,qmatmul:q8_0"


@attrs.frozen
class KernelKind:
    """How to build one kernel family for a tile, and which tile it really uses."""

    name: str
    build: Callable  # (n_out, k, tile, fmt, host) -> Kernel
    effective: Callable  # (k, tile, fmt, host) -> (tile_n, tile_k) after the kernel's rounding
    tiles_k: bool  # does tile_k matter?


KINDS = {
    "matmul": KernelKind(
        "matmul",
        lambda n, k, t, f, h: matmul(n, k, t, h, fmt=f),
        lambda k, t, f, h: matmul_tile(k, t, h.vector_width, f),
        True,
    ),
    "qmatmul": KernelKind(
        "qmatmul",
        lambda n, k, t, f, h: qm.qmatmul(f, n, k, t, h),
        lambda k, t, f, h: (qm.plan(f, k, t, h).tile_rows, k),
        False,
    ),
}


def target_of(host: HostCPU) -> Target:
    return Target(cores=host.cores, l1d=host.l1d, l2=host.l2, l3=host.l3)


def weights(n_out: int, k: int, fmt: str, rng) -> np.ndarray:
    """A weight matrix in `fmt`: f32 values, or GGML blocks of up to 256 distinct rows."""
    if fmt == "f32":
        return rng.standard_normal((n_out, k), dtype=np.float32) / np.sqrt(k)
    distinct = rng.standard_normal((min(n_out, 256), k), dtype=np.float32) / np.sqrt(k)
    q = quantize_rows(distinct, fmt)
    return np.ascontiguousarray(np.tile(q, (-(-n_out // len(q)), 1))[:n_out])


def grid(kind: KernelKind, n_out: int, k: int, fmt: str, host: HostCPU, nth: int) -> list:
    """The distinct tiles the kernel actually uses for the candidate (tile_n, tile_k), tile_n
    up to one thread's rows."""
    per_thread = -(-n_out // nth)
    tns = [t for t in TILE_N if t < per_thread] + [-(-per_thread // 16) * 16]
    tks = (*[t for t in TILE_K if t < k], k) if kind.tiles_k else (k,)
    return sorted({kind.effective(k, (tn, tk), fmt, host) for tn in tns for tk in tks})


def sweep(kind: KernelKind, n_out, k, fmt: str, tokens, nth, host, pool, rng, rounds) -> dict:
    picked_raw = choose_tile(n_out, k, quant_type(fmt), target_of(host))
    picked = kind.effective(k, picked_raw, fmt, host)
    tiles = grid(kind, n_out, k, fmt, host, nth)
    if picked not in tiles:
        tiles.append(picked)
    kernels = [kind.build(n_out, k, t, fmt, host) for t in tiles]
    entries = [kernel_entry_ir(kr, f"entry{i}") for i, kr in enumerate(kernels)]
    cm = compile_ir(module_ir([*kernels, *entries]), host)
    x = rng.standard_normal((tokens, k), dtype=np.float32)
    w = weights(n_out, k, fmt, rng)
    out = np.zeros((tokens, n_out), dtype=np.float32)
    ctx = entry_ctx([x.ctypes.data, w.ctypes.data, out.ctypes.data], tokens, 0)
    c = ctypes.addressof(ctx)
    runners = {
        t: functools.partial(pool.run, cm.address(f"entry{i}"), c) for i, t in enumerate(tiles)
    }
    timing = time_interleaved(
        runners, rounds, min_seconds=0.005, budget=SWEEP_SECONDS, span=SWEEP_SPAN
    )
    check = x @ dequantize_rows(w, fmt).T
    err = float(np.max(np.abs(out - check)) / (np.max(np.abs(check)) + 1e-30))
    best = min(timing, key=lambda t: timing[t].best)
    return {
        "kernel": kind.name,
        "format": fmt,
        "n_out": n_out,
        "k": k,
        "tokens": tokens,
        "threads": nth,
        "picked_requested": picked_raw,
        "picked": picked,
        "best": best,
        "best_s": timing[best].best,
        "picked_s": timing[picked].best,
        "ratio": timing[picked].best / timing[best].best,
        "max_rel_error": err,  # of the last tile run, vs numpy on the dequantized weights
        "grid": [
            {"tile": t, "best_s": tm.best, "median_s": tm.median, "n": tm.n}
            for t, tm in sorted(timing.items())
        ],
    }


def _tile(t, kind: str) -> str:
    return f"{t[0]}×{t[1]}" if KINDS[kind].tiles_k else f"{t[0]}"


def main(argv=None) -> None:
    from ckeir.backends.llvm.pool import Pool

    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=128, help="rows n of the GEMM (prompt length)")
    p.add_argument(
        "--kernels",
        default=DEFAULT_KERNELS,
        help="kernel:format pairs (matmul: f32 q8_0 q4_0 q4_1; qmatmul: q8_0 q4_0 q4_1)",
    )
    p.add_argument("--threads", type=int, help="pool threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="the three layer shapes, qmatmul q4_1")
    args = p.parse_args(argv)
    host = detect_host()
    host_info = host_description()
    nth = args.threads or host.cores
    pairs = [
        tuple(x.split(":")) for x in ("qmatmul:q4_1" if args.quick else args.kernels).split(",")
    ]
    shapes = SHAPES[:3] if args.quick else SHAPES
    rounds = args.repeat or 15
    rng = np.random.default_rng(0)
    results = []
    with Pool(nth, host) as pool:
        for name, n_out, k in shapes:
            for kind, f in pairs:
                log(f"tiles: {name}, {kind} {f}")
                r = sweep(KINDS[kind], n_out, k, f, args.tokens, nth, host, pool, rng, rounds)
                results.append({"shape": name, **r})
    rows = [
        [
            r["shape"],
            f"{r['kernel']} {r['format']}",
            len(r["grid"]),
            r["grid"][0]["n"],
            _tile(r["best"], r["kernel"]),
            fmt(r["best_s"] * 1e3, 3),
            fmt(2.0 * r["tokens"] * r["n_out"] * r["k"] / r["best_s"] / 1e9),
            _tile(r["picked"], r["kernel"]),
            fmt(r["picked_s"] * 1e3, 3),
            f"{r['ratio']:.2f}" + ("" if r["ratio"] <= TARGET_RATIO else " !"),
        ]
        for r in results
    ]
    print_table(
        f"Prefill GEMM tile sweep: n = {args.tokens} rows, {nth} thread(s), best of N "
        f"rounds (each times every tile once, batches ≥ 5 ms; N ≥ {rounds}, spanning "
        f"≥ {SWEEP_SPAN:.0f} s, within {SWEEP_SECONDS:.0f} s)",
        [
            "weight",
            "kernel",
            "tiles",
            "N",
            "best tile",
            "best ms",
            "GFLOP/s",
            "picked",
            "picked ms",
            "picked/best",
        ],
        rows,
        notes=[
            f"host: {host_line(host_info)}",
            "tiles are tile_n×tile_k for matmul, tile_n for qmatmul (K is whole); picked = "
            f"choose_tile(N, K, fmt, Target(l2={host.l2 >> 10} KiB, cores={host.cores})) after "
            f"the kernel's rounding; '!' marks picked/best > {TARGET_RATIO:.2f}.",
            "The LM head runs on the last prompt row only in ckeir's prefill (a GEMV, where "
            "tiles do not apply): its rows are for reference.",
        ],
    )
    if args.json:
        write_json(args.json, "tiles", results, host_info)


if __name__ == "__main__":
    main()
