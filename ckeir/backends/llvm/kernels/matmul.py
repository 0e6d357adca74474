"""f32 matmul: out[n, N] = x[n, K] @ w[N, K].T (weights stored N rows of K, GGML convention).

Threads split the N weight rows (each share a multiple of the vector width, so output rows
of different threads never share a cache line).  The work unit is a register block of dot
products over K, with explicit `<W x float>` FMAs and a masked tail when W does not divide K:

- n == 1 (decode GEMV): `GEMV_ROWS` weight rows per step, streamed once.
- n > 1 (prefill GEMM): the thread's rows in tiles of tile_n rows × tile_k columns; each tile
  is swept by every token, `GEMM_ROWS` rows × `gemm_tokens` tokens at a time, so it is read
  from DRAM once and reused from cache.  Partial sums over the k-tiles accumulate in `out`.
"""

from __future__ import annotations

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    FunctionWriter,
    Kernel,
    Vec,
    ceil_to,
    finish_kernel,
    kernel_writer,
)

GEMV_ROWS = 8  # independent FMA chains per step in decode
GEMM_ROWS = 4


def gemm_tokens(width: int) -> int:
    """Token rows per GEMM register block: 4x3 accumulators fit 32 zmm, 4x2 fit 16 ymm/xmm."""
    return 3 if width >= 16 else 2


def matmul_tile(k: int, tile: tuple[int, int], width: int) -> tuple[int, int]:
    """The tile actually used: tile_k a multiple of W (≤ K rounded up), tile_n ≥ GEMM_ROWS."""
    tn, tk = tile
    return max(tn, GEMM_ROWS), min(ceil_to(max(tk, width), width), ceil_to(k, width))


def matmul(n_out: int, k: int, tile: tuple[int, int], host: HostCPU) -> Kernel:
    w = host.vector_width
    tn, tk = matmul_tile(k, tile, w)
    f = kernel_writer(f"matmul_f32_n{n_out}_k{k}_t{tn}x{tk}_v{w}", 3)
    v = Vec(f, w)
    lo, hi = f.share(n_out, w)
    gemv, gemm, done = f.label("gemv"), f.label("gemm"), f.label("done")
    f.cbr(f("icmp eq i64 %n, 1", "decode"), gemv, gemm)
    f.start(gemv)
    _gemv(f, v, lo, hi, n_out, k)
    f.br(done)
    f.start(gemm)
    _gemm(f, v, lo, hi, n_out, k, tn, tk)
    f.br(done)
    f.start(done)
    return finish_kernel(f, ("x", "w", "out"))


def _dots(
    f: FunctionWriter, v: Vec, wrows: list[str], xrows: list[str], k0: str | int, klen: int
) -> list[list[str]]:
    """sums[i][j] = Σ_{k0 ≤ k < k0+klen} wrows[i][k] * xrows[j][k], one vector accumulator each."""
    accs = [[f.var(v.t, v.zero, "acc") for _ in xrows] for _ in wrows]

    def step(kk: str, lanes: int | None) -> None:
        xs = [v.load(x, kk, lanes) for x in xrows]
        for i, wr in enumerate(wrows):
            wv = v.load(wr, kk, lanes)
            for j, xv in enumerate(xs):
                f.set(accs[i][j], v.fma(wv, xv, f.get(accs[i][j])))

    full = klen // v.w * v.w
    if full:
        with f.loop(k0, f.add(k0, full), v.w, "k") as kk:
            step(kk, None)
    if full < klen:
        step(f.add(k0, full), klen - full)
    return [[v.hsum(f.get(a)) for a in row] for row in accs]


def _row_ptrs(f: FunctionWriter, base: str, first: str, count: int, stride: int) -> list[str]:
    return [f.gep(base, f.mul(f.add(first, i), stride)) for i in range(count)]


def _gemv(f: FunctionWriter, v: Vec, lo: str, hi: str, n_out: int, k: int) -> None:
    def rows(r: str, count: int) -> None:
        sums = _dots(f, v, _row_ptrs(f, "%a1", r, count, k), ["%a0"], 0, k)
        for i in range(count):
            f.store("float", sums[i][0], f.gep("%a2", f.add(r, i)))

    end = f.round_down(lo, hi, GEMV_ROWS)
    with f.loop(lo, end, GEMV_ROWS, "r") as r:
        rows(r, GEMV_ROWS)
    with f.loop(end, hi, 1, "r") as r:
        rows(r, 1)


def _gemm(
    f: FunctionWriter, v: Vec, lo: str, hi: str, n_out: int, k: int, tn: int, tk: int
) -> None:
    toks = gemm_tokens(v.w)

    def block(
        rb: str, re: str, t: str, ntok: int, nrow: int, kb: str | int, klen: int, first: str | bool
    ) -> None:
        wrows = _row_ptrs(f, "%a1", rb, nrow, k)
        sums = _dots(f, v, wrows, _row_ptrs(f, "%a0", t, ntok, k), kb, klen)
        for i in range(nrow):
            for j in range(ntok):
                p = f.gep("%a2", f.add(f.mul(f.add(t, j), n_out), f.add(rb, i)))
                s = sums[i][j]
                if first is not True:
                    acc = f(f"fadd float {f.load('float', p)}, {s}", "acc")
                    s = acc if first is False else f(f"select i1 {first}, float {s}, float {acc}")
                f.store("float", s, p)

    def tile(rb: str, re: str, kb: str | int, klen: int, first: str | bool) -> None:
        def token_rows(t: str, ntok: int) -> None:
            rend = f.round_down(rb, re, GEMM_ROWS)
            with f.loop(rb, rend, GEMM_ROWS, "r") as r:
                block(r, re, t, ntok, GEMM_ROWS, kb, klen, first)
            with f.loop(rend, re, 1, "r") as r:
                block(r, re, t, ntok, 1, kb, klen, first)

        tend = f.round_down(0, "%n", toks)
        with f.loop(0, tend, toks, "t") as t:
            token_rows(t, toks)
        with f.loop(tend, "%n", 1, "t") as t:
            token_rows(t, 1)

    nfull, rem = divmod(k, tk)
    with f.loop(lo, hi, tn, "rb") as rb:
        re = f.min(f.add(rb, tn), hi)
        if nfull == 1:
            tile(rb, re, 0, tk, True)
        elif nfull > 1:
            with f.loop(0, nfull * tk, tk, "kb") as kb:
                tile(rb, re, kb, tk, f(f"icmp eq i64 {kb}, 0", "first"))
        if rem:
            tile(rb, re, nfull * tk, rem, nfull == 0)
