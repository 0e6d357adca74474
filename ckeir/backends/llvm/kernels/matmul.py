"""matmul: out[n, N] = x[n, K] @ w[N, K].T (weights stored N rows of K, GGML convention),
for f32 weights and the GGML block formats q8_0, q4_0, q4_1 (raw blocks, bit-exact with
`gguf.quants`; layouts in `ckeir.formats`).  x and out are f32.

Threads split the N weight rows (each share a multiple of the vector width, so output rows
of different threads never share a cache line).  The work unit is a register block of dot
products over K with explicit `<W x float>` FMAs: quantized weights are dequantized in
registers exactly as `gguf.quants.dequantize` does (q8_0: d*q, q4_0: d*(q-8), q4_1: d*q+m,
in f32), so results match the f32 reference to rounding; f32 rows whose length W does not
divide end with a masked tail.

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
    half_to_float,
    kernel_writer,
)
from ckeir.formats import FORMATS, Format

GEMV_ROWS = 8  # independent FMA chains per step in decode
GEMM_ROWS = 4
WEIGHT_FORMATS = ("f32", "q8_0", "q4_0", "q4_1")


def gemm_tokens(width: int) -> int:
    """Token rows per GEMM register block: 4x3 accumulators fit 32 zmm, 4x2 fit 16 ymm/xmm."""
    return 3 if width >= 16 else 2


def _step(fmt: Format, width: int) -> int:
    """Elements of K consumed per inner step: one vector (f32) or one block (GGML)."""
    return width if fmt.block == 1 else fmt.block


def matmul_tile(k: int, tile: tuple[int, int], width: int, fmt: str = "f32") -> tuple[int, int]:
    """The tile actually used: tile_k a multiple of the step (W, or the block) and at most K
    rounded up to it; tile_n ≥ GEMM_ROWS."""
    step = _step(FORMATS[fmt], width)
    tn, tk = tile
    return max(tn, GEMM_ROWS), min(ceil_to(max(tk, step), step), ceil_to(k, step))


def matmul(n_out: int, k: int, tile: tuple[int, int], host: HostCPU, fmt: str = "f32") -> Kernel:
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"matmul: no kernel for {fmt} weights (have {', '.join(WEIGHT_FORMATS)})")
    w = host.vector_width
    tn, tk = matmul_tile(k, tile, w, fmt)
    f = kernel_writer(f"matmul_{fmt}_n{n_out}_k{k}_t{tn}x{tk}_v{w}", 3)
    rows = _Rows(FORMATS[fmt], k, Vec(f, w), "f16c" in host.features)
    lo, hi = f.share(n_out, w)
    gemv, gemm, done = f.label("gemv"), f.label("gemm"), f.label("done")
    f.cbr(f("icmp eq i64 %n, 1", "decode"), gemv, gemm)
    f.start(gemv)
    _gemv(f, rows, lo, hi)
    f.br(done)
    f.start(gemm)
    _gemm(f, rows, lo, hi, n_out, tn, tk)
    f.br(done)
    f.start(done)
    return finish_kernel(f, ("x", "w", "out"))


class _Rows:
    """How to address weight rows of one format and load one step of them as vectors."""

    def __init__(self, fmt: Format, k: int, v: Vec, f16c: bool):
        if fmt.block > 1 and (k % fmt.block or fmt.block % v.w):
            raise ValueError(f"matmul {fmt.name}: K={k} must be a multiple of {fmt.block}")
        self.fmt, self.k, self.v, self.f, self.f16c = fmt, k, v, v.f, f16c
        self.step = _step(fmt, v.w)
        self.row_bytes = fmt.row_bytes(k)

    def row(self, r: str) -> str:
        return self.f.gep("%a1", self.f.mul(r, self.row_bytes), "i8")

    def load(self, row: str, kk: str, lanes: int | None) -> list[str]:
        """The weights row[kk : kk+step] as f32 vectors (`lanes` only for an f32 tail)."""
        f, v, name = self.f, self.v, self.fmt.name
        if name == "f32":
            return [v.load(row, kk, lanes)]
        block = f.gep(
            row, f.mul(f(f"sdiv i64 {kk}, {self.fmt.block}", "blk"), self.fmt.block_bytes), "i8"
        )
        d = v.splat(half_to_float(f, block, self.f16c))
        if name == "q8_0":
            q = self._lanes(f.load("<32 x i8>", f.gep(block, 2, "i8"), 1), 32, "sitofp")
            return [v.mul(x, d) for x in q]
        if name == "q4_0":
            q = self._nibbles(f.gep(block, 2, "i8"))
            return [v.mul(v.sub(x, v.const(8.0)), d) for x in q]
        m = v.splat(half_to_float(f, f.gep(block, 2, "i8"), self.f16c))
        return [v.add(v.mul(x, d), m) for x in self._nibbles(f.gep(block, 4, "i8"))]

    def _nibbles(self, qs: str) -> list[str]:
        """32 4-bit values from 16 bytes: element j is byte j's low nibble, j+16 its high one."""
        f = self.f
        b = f.load("<16 x i8>", qs, 1)
        lo = f(f"and <16 x i8> {b}, splat (i8 15)", "lo")
        hi = f(f"lshr <16 x i8> {b}, splat (i8 4)", "hi")
        return self._lanes(lo, 16, "uitofp") + self._lanes(hi, 16, "uitofp")

    def _lanes(self, ints: str, count: int, conv: str) -> list[str]:
        """`count` i8 lanes as count/W float vectors."""
        f, w = self.f, self.v.w
        out = []
        for i in range(0, count, w):
            idx = ", ".join(f"i32 {j}" for j in range(i, i + w))
            part = f(
                f"shufflevector <{count} x i8> {ints}, <{count} x i8> poison, <{w} x i32> <{idx}>",
                "q",
            )
            out.append(f(f"{conv} <{w} x i8> {part} to {self.v.t}", "qf"))
        return out


def _dots(
    f: FunctionWriter, rows: _Rows, wrows: list[str], xrows: list[str], k0: str | int, klen: int
) -> list[list[str]]:
    """sums[i][j] = Σ_{k0 ≤ k < k0+klen} wrows[i][k] * xrows[j][k], vector accumulators."""
    v = rows.v
    accs = [[f.var(v.t, v.zero, "acc") for _ in xrows] for _ in wrows]

    def step(kk: str, lanes: int | None) -> None:
        offsets = [kk] if rows.step == v.w else [f.add(kk, i) for i in range(0, rows.step, v.w)]
        xs = [[v.load(x, o, lanes) for o in offsets] for x in xrows]
        for i, wr in enumerate(wrows):
            ws = rows.load(wr, kk, lanes)
            for j, xv in enumerate(xs):
                acc = f.get(accs[i][j])
                for wpart, xpart in zip(ws, xv, strict=True):
                    acc = v.fma(wpart, xpart, acc)
                f.set(accs[i][j], acc)

    full = klen // rows.step * rows.step
    if full:
        with f.loop(k0, f.add(k0, full), rows.step, "k") as kk:
            step(kk, None)
    if full < klen:  # f32 only: quantized K is a whole number of blocks
        step(f.add(k0, full), klen - full)
    return [[v.hsum(f.get(a)) for a in row] for row in accs]


def _gemv(f: FunctionWriter, rows: _Rows, lo: str, hi: str) -> None:
    def block(r: str, count: int) -> None:
        sums = _dots(f, rows, [rows.row(f.add(r, i)) for i in range(count)], ["%a0"], 0, rows.k)
        for i in range(count):
            f.store("float", sums[i][0], f.gep("%a2", f.add(r, i)))

    end = f.round_down(lo, hi, GEMV_ROWS)
    with f.loop(lo, end, GEMV_ROWS, "r") as r:
        block(r, GEMV_ROWS)
    with f.loop(end, hi, 1, "r") as r:
        block(r, 1)


def _gemm(f: FunctionWriter, rows: _Rows, lo: str, hi: str, n_out: int, tn: int, tk: int) -> None:
    toks, k = gemm_tokens(rows.v.w), rows.k

    def block(
        rb: str, re: str, t: str, ntok: int, nrow: int, kb: str | int, klen: int, first: str | bool
    ) -> None:
        wrows = [rows.row(f.add(rb, i)) for i in range(nrow)]
        xrows = [f.gep("%a0", f.mul(f.add(t, j), k)) for j in range(ntok)]
        sums = _dots(f, rows, wrows, xrows, kb, klen)
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
