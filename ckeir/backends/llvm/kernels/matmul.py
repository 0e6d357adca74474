"""matmul: out[n, N] = x[n, K] @ w[N, K].T (weights stored N rows of K, GGML convention),
for f32, f16 and bf16 weights and the GGML block formats q8_0, q4_0, q4_1, q5_0, q5_1 (raw
blocks, bit-exact with `gguf.quants`; layouts in `ckeir.formats`).  x and out are f32; f16
and bf16 weights widen to f32 in registers (exactly: `fpext`, `vcvtph2ps` with F16C; bf16 is
the high half of an f32).

Parts of the op (`FunctionWriter.share`) take disjoint ranges of the N weight rows (each a
multiple of the vector width, so output rows of different parts never share a cache line).
The work unit is a register block of dot products over K with explicit `<W x float>` FMAs;
in prefill, quantized weights are dequantized in registers exactly as
`gguf.quants.dequantize` does (q8_0: d*q, q4_0: d*(q-8), q4_1: d*q+m, q5 likewise with
16 per fifth bit, in f32), so results match the f32 reference to rounding; f32 rows whose length W does not divide end with a
masked tail.

- n == 1 (decode GEMV): float weights `GEMV_ROWS` rows per step, streamed once (16-bit
  ones with the next block of rows prefetched while one is summed, `_next_block`); GGML blocks
  by `_BlockGemv` and K-quant super-blocks by `_KGemv`, which sum each block's (scale
  unit's) integer weights times x before scaling it once (dequantizing every element first
  cost 3x the int8 path's time per token on q4_1, 2x on Q4_K and Q6_K).
- n > 1 (prefill GEMM): the thread's rows in tiles of tile_n rows × tile_k columns; each tile
  is swept by every token, `GEMM_ROWS` rows × `gemm_tokens` tokens at a time, so it is read
  from DRAM once and reused from cache.  Partial sums over the k-tiles accumulate in `out`.
"""

from __future__ import annotations

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    FunctionWriter,
    Kernel,
    Var,
    Vec,
    ceil_to,
    finish_kernel,
    half_to_float,
    kernel_writer,
    prefetch_ahead,
    shuffle,
    vec,
    widen_halves,
)
from ckeir.backends.llvm.kernels.kquant import K_FORMATS, SuperBlock
from ckeir.backends.llvm.kernels.quant_matmul import block_scales, opaque
from ckeir.formats import FORMATS, QK_K, Format

GEMV_ROWS = 8  # independent FMA chains per step in decode
GEMM_ROWS = 4
WEIGHT_FORMATS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", *K_FORMATS)
HALF_FORMATS = ("f16", "bf16")  # 16-bit floats, widened to f32 per vector


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


def matmul(
    n_out: int,
    k: int,
    tile: tuple[int, int],
    host: HostCPU,
    fmt: str = "f32",
    rowwise: bool = False,
) -> Kernel:
    """With `rowwise` (batched decode), n > 1 runs the decode GEMV for every token row over
    tiles of ROWWISE_TILE weight rows (each tile read from DRAM once, then from cache): each
    row gets the bits a call of that row alone gives."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"matmul: no kernel for {fmt} weights (have {', '.join(WEIGHT_FORMATS)})")
    w = host.vector_width
    tn, tk = matmul_tile(k, tile, w, fmt)
    how = "_rw" if rowwise else ""
    f = kernel_writer(f"matmul_{fmt}_n{n_out}_k{k}_t{tn}x{tk}{how}_v{w}", 3)
    rows = _Rows(FORMATS[fmt], k, Vec(f, w), "f16c" in host.features)
    lo, hi = f.share(n_out, w)
    gemv, gemm, done = f.label("gemv"), f.label("gemm"), f.label("done")
    f.cbr(f("icmp eq i64 %n, 1", "decode"), gemv, gemm)
    f.start(gemv)
    _gemv(f, rows, lo, hi)
    f.br(done)
    f.start(gemm)
    if rowwise:
        _gemv_rows(f, rows, lo, hi, n_out)
    else:
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
        if self.fmt.name == "f32":
            return [self.v.load(row, kk, lanes)]
        if self.fmt.name in HALF_FORMATS:
            return [widen_halves(self.f, self.fmt.name, row, kk, self.v.w, lanes, self.f16c)]
        block = self.block(row, self.f(f"sdiv i64 {kk}, {self.fmt.block}", "blk"))
        if self.fmt.super_block:
            return self._super_block(block)
        d, m = self.scales(block)
        v, d = self.v, self.v.splat(d)
        if m is None:
            return [v.mul(q, d) for q in self.quants(block)]
        return [v.add(v.mul(q, d), v.splat(m)) for q in self.quants(block)]

    def _super_block(self, sb: str) -> list[str]:
        """A K-quant super-block's 256 values (bit-exact with gguf) as W-lane vectors."""
        f, w = self.f, self.v.w
        blocks = SuperBlock(f, self.fmt, self.f16c)
        scales, out = blocks.scales(sb), []
        for j in range(QK_K // 32):
            vals = blocks.values(sb, j, scales)
            for i in range(0, 32, w):
                idx = ", ".join(f"i32 {e}" for e in range(i, i + w))
                out.append(
                    f(
                        f"shufflevector <32 x float> {vals}, <32 x float> poison, <{w} x i32> <{idx}>",
                        "x",
                    )
                )
        return out

    def block(self, row: str, b: str | int) -> str:
        """The address of block b of a row."""
        return self.f.gep(row, self.f.mul(b, self.fmt.block_bytes), "i8")

    def scales(self, block: str) -> tuple[str, str | None]:
        """A block's scale d and, for q4_1 and q5_1, its min m, as f32 scalars."""
        f = self.f
        d = half_to_float(f, block, self.f16c)
        return d, half_to_float(f, f.gep(block, 2, "i8"), self.f16c) if self.fmt.mins else None

    def quants(self, block: str) -> list[str]:
        """A block's 32 integer weights as f32 vectors (exact): q8_0's q, q4_0's q - 8,
        q5_0's q - 16, q4_1's and q5_1's q; the block's value is d·quant (+ m)."""
        f = self.f
        if self.fmt.bits == 8:
            return self._lanes(f.load("<32 x i8>", f.gep(block, 2, "i8"), 1), 32, "sitofp")
        return self._nibbles(block)

    def _nibbles(self, block: str) -> list[str]:
        """32 4- or 5-bit values: element j is byte j's low nibble, j+16 its high one (q5:
        plus 16 times bit j of the mask), less the format's zero.  Each byte is widened to
        i32 once and both nibbles taken there."""
        f, w, fmt = self.f, self.v.w, self.fmt
        b = f.load("<16 x i8>", f.gep(block, fmt.quants_at, "i8"), 1)
        it = f"<{w} x i32>"
        qh = None
        if fmt.high_bits:
            qh = f.load("i32", f.gep(block, fmt.head, "i8"), 1)
            qh = f(
                f"shufflevector <1 x i32> {f(f'insertelement <1 x i32> poison, i32 {qh}, i64 0')}, <1 x i32> poison, <{w} x i32> zeroinitializer",
                "qh",
            )
        parts: list[list[str]] = [[], []]
        for i in range(0, 16, w):
            idx = ", ".join(f"i32 {j}" for j in range(i, i + w))
            z = f(f"shufflevector <16 x i8> {b}, <16 x i8> poison, <{w} x i32> <{idx}>", "q")
            z = f(f"zext <{w} x i8> {z} to {it}", "qz")
            for half, op, first in zip(parts, ("and", "lshr"), (i, 16 + i), strict=True):
                q = f(f"{op} {it} {z}, splat (i32 {15 if op == 'and' else 4})", "nib")
                if qh is not None:  # bit j of the mask, as 16
                    shifts = ", ".join(f"i32 {j}" for j in range(first, first + w))
                    hb = f(f"and {it} {f(f'lshr {it} {qh}, <{shifts}>')}, splat (i32 1)", "hb")
                    q = f(f"or {it} {q}, {f(f'shl {it} {hb}, splat (i32 4)')}", "q5")
                if fmt.zero:
                    q = f(f"sub {it} {q}, splat (i32 {fmt.zero})", "qz")
                half.append(f(f"sitofp {it} {q} to {self.v.t}", "qf"))
        return parts[0] + parts[1]

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
    f: FunctionWriter,
    rows: _Rows,
    wrows: list[str],
    xrows: list[str],
    k0: str | int,
    klen: int,
    ahead=None,
) -> list[list[str]]:
    """sums[i][j] = Σ_{k0 ≤ k < k0+klen} wrows[i][k] * xrows[j][k], vector accumulators.
    `ahead(kk)` (optional) is emitted at the start of every whole step."""
    v = rows.v
    accs = [[f.var(v.t, v.zero, "acc") for _ in xrows] for _ in wrows]

    def step(kk: str, lanes: int | None) -> None:
        if ahead is not None and lanes is None:
            ahead(kk)
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


def _gemv(
    f: FunctionWriter, rows: _Rows, lo: str, hi: str, x: str = "%a0", out: str = "%a2"
) -> None:
    """out[r] = w[r] · x for rows lo..hi-1."""
    if rows.fmt.super_block:
        _KGemv(f, rows.fmt, rows.k, rows.f16c, x, out).run(lo, hi)
        return
    if rows.fmt.block > 1:
        _BlockGemv(f, rows.fmt, rows.k, rows.f16c, x, out).run(lo, hi)
        return

    def block(r: str, count: int) -> None:
        wrows = [rows.row(f.add(r, i)) for i in range(count)]
        sums = _dots(f, rows, wrows, [x], 0, rows.k, _next_block(f, rows, wrows[0], count))
        for i in range(count):
            f.store("float", sums[i][0], f.gep(out, f.add(r, i)))

    end = f.round_down(lo, hi, GEMV_ROWS)
    with f.loop(lo, end, GEMV_ROWS, "r") as r:
        block(r, GEMV_ROWS)
    with f.loop(end, hi, 1, "r") as r:
        block(r, 1)


def _next_block(f: FunctionWriter, rows: _Rows, first: str, count: int):
    """The prefetches of a float decode GEMV's block of `count` rows from `first` (rows lie
    back to back, so a block is `count` row lengths of bytes): at every step over K, the
    lines of the block after it in proportion to the step, so that the whole next block is
    asked for while this one is summed.  On 16-bit weights the hardware prefetchers alone
    left a block waiting on DRAM (a step reads half a line of each of `count` rows; 0.4-0.7
    of read bandwidth at SmolLM2's 576-wide rows).  F32 rows (a whole line of each row per
    step, a block twice as far) ran slower with it, at 0.67-0.93 of their speed without it
    (A/B at SmolLM2's shapes on Ice Lake; benchmarks/float_gemv.py has the 16-bit A/B)."""
    if count == 1 or rows.fmt.name not in HALF_FORMATS:
        return None
    size = rows.fmt.row_bytes(rows.v.w) * count  # the block's bytes one step reads

    def ahead(kk: str) -> None:
        step = f.gep(first, f.mul(kk, size // rows.v.w), "i8")
        prefetch_ahead(f, step, size, count * rows.row_bytes)

    return ahead


ROWWISE_TILE = 64  # weight rows a rowwise call sweeps with every token (a multiple of 16)


def _gemv_rows(f: FunctionWriter, rows: _Rows, lo: str, hi: str, n_out: int) -> None:
    """Every token row through the decode GEMV, a tile of weight rows at a time."""
    with f.loop(lo, hi, ROWWISE_TILE, "rb") as rb:
        re = f.min(f.add(rb, ROWWISE_TILE), hi)
        with f.loop(0, "%n", 1, "t") as t:
            x, out = f.gep("%a0", f.mul(t, rows.k)), f.gep("%a2", f.mul(t, n_out))
            _gemv(f, rows, rb, re, x, out)


GROUP = 4  # blocks per decode step: one load of their scales, one accumulator per position


class _BlockGemv:
    """Decode GEMV on GGML blocks: per block, the integer weights (converted to f32, exact)
    times x summed over the block first, then scaled once by d; q4_1's m·Σx per block is a
    dot product of the scales with the blocks' sums of x, computed once per call.

    Each row is streamed alone (one sequential stream for the prefetchers), in steps of
    GROUP blocks.  The order of the float operations is fixed, so a row's sum is the same
    whichever thread or part computes it (and tests/backends/llvm/test_quant_kernels.py
    transcribes it): per block, 16 lanes p = q[0:16]·x[0:16], then p += q[16:32]·x[16:32]
    and acc[b mod GROUP] += p·d_b (both fused where the ISA has FMA), in block order; q4_1
    adds m_b·Σx_b (Σx_b: x[0:16] + x[16:32], its lanes in a halving tree) into lane
    2·(b mod GROUP) + 1 of an 8-lane accumulator M, whose even lanes add d_b·0.  The result
    is the halving-tree lane sum (lane i + lane i+8, then i + i+4, ...) of
    ((acc0 + acc1) + (acc2 + acc3)) [+ M in lanes 0..7].  Each step also prefetches the
    bytes `common.PREFETCH` ahead of it."""

    def __init__(
        self, f: FunctionWriter, fmt: Format, k: int, f16c: bool, x: str = "%a0", out: str = "%a2"
    ):
        self.f, self.v = f, Vec(f, 16)  # 16 lanes on every host: LLVM splits them as needed
        self.xrow, self.out = x, out
        self.rows = _Rows(fmt, k, self.v, f16c)
        self.fmt, self.f16c, self.blocks = fmt, f16c, k // fmt.block
        self.mins = fmt.mins
        if self.mins:  # per block [0, Σx_b]: the lanes the scales (d_b, m_b) multiply
            self.sums = f.var(f"[{2 * self.blocks} x float]", hint="xsums", align=64).ptr
        self.slot = f.var(f"<{2 * GROUP} x float>", hint="scales", align=32).ptr

    def run(self, lo: str, hi: str) -> None:
        """Rows lo..hi-1 of out."""
        f = self.f
        if self.mins:
            with f.loop(0, self.blocks, 1, "xs") as b:
                s = _lane_sum(self.v, self.v.add(*self.x(b)))
                pair = f(f"insertelement <2 x float> <float 0.0, float poison>, float {s}, i64 1")
                f.store("<2 x float>", pair, f.gep(self.sums, f.mul(b, 2)))
        # rows 16 at a time: their sums' lanes added by one transpose-and-add tree (the same
        # additions as each row's own halving tree), the 16 outputs stored as one vector
        v, batch = self.v, self.v.w
        sums = f.var(f"[{batch} x {v.t}]", hint="rowsums", align=64).ptr
        end = f.round_down(lo, hi, batch)
        with f.loop(lo, end, batch, "rb") as r0:
            with f.loop(0, batch, 1, "r") as i:
                f.store(v.t, self.row(self.rows.row(f.add(r0, i))), f.gep(sums, f.mul(i, batch)))
            rows = [f.load(v.t, f.gep(sums, i * batch)) for i in range(batch)]
            v.store(v.hsum_each(rows), self.out, r0)
        with f.loop(end, hi, 1, "r") as r:
            f.store("float", _lane_sum(v, self.row(self.rows.row(r))), f.gep(self.out, r))

    def x(self, b: str | int) -> list[str]:
        """Block b of the activation row as two 16-lane vectors."""
        base = self.f.mul(b, 32)
        return [self.v.load(self.xrow, self.f.add(base, i)) for i in (0, 16)]

    def row(self, row: str) -> str:
        """The row's sum as 16 lanes (to be added by the halving tree)."""
        f, v = self.f, self.v
        accs = [f.var(v.t, v.zero, "acc") for _ in range(GROUP)]
        mins = f.var(f"<{2 * GROUP} x float>", "zeroinitializer", "accm") if self.mins else None
        whole, rest = divmod(self.blocks, GROUP)
        if whole:  # an opaque trip count: LLVM would unroll short rows fully and interleave them
            with f.loop(0, opaque(f, whole * GROUP, "i64"), GROUP, "kb") as b0:
                self.step(row, b0, GROUP, accs, mins)
        if rest:
            self.step(row, whole * GROUP, rest, accs, mins)
        total = _tree(v.add, [f.get(a) for a in accs])
        if mins is None:
            return total
        m, idx = f.get(mins), ", ".join(f"i32 {min(i, 2 * GROUP)}" for i in range(16))
        m = f(f"shufflevector {mins.ty} {m}, {mins.ty} zeroinitializer, <16 x i32> <{idx}>", "m")
        return v.add(total, m)

    def step(self, row: str, b0: str | int, nb: int, accs: list[Var], mins: Var | None) -> None:
        """Blocks b0..b0+nb-1 of a row into its accumulators."""
        f, v, rows = self.f, self.v, self.rows
        lpb = 2 if self.mins else 1
        scales = block_scales(f, self.fmt, row, b0, nb, self.f16c)
        st = f"<{nb * lpb} x float>"
        if nb == GROUP:
            prefetch_ahead(f, f.gep(row, f.mul(b0, self.fmt.block_bytes), "i8"), 1)
        # the scales go through memory, each read back as the broadcast operand of its FMA
        # (an EVEX embedded broadcast); an opaque address keeps LLVM from forwarding the
        # store into lane shuffles, which cost more
        f.store(st, scales, self.slot)
        slot = opaque(f, self.slot)
        for j in range(nb):
            b = f.add(b0, j)
            q, x = rows.quants(rows.block(row, b)), self.x(b)
            p = v.fma(q[1], x[1], v.mul(q[0], x[0]))
            d = v.splat(f.load("float", f.gep(slot, j * lpb)))
            f.set(accs[j], v.fma(p, d, f.get(accs[j])))
        if mins is None:
            return
        sums = f.load(st, f.gep(self.sums, f.mul(b0, 2)))
        terms = f(f"fmul {st} {scales}, {sums}", "mterm")
        if nb < GROUP:  # widen with zero lanes
            idx = ", ".join(f"i32 {i if i < 2 * nb else 2 * nb}" for i in range(2 * GROUP))
            terms = f(
                f"shufflevector {st} {terms}, {st} zeroinitializer, <{2 * GROUP} x i32> <{idx}>",
                "mterm",
            )
        f.set(mins, f(f"fadd <{2 * GROUP} x float> {f.get(mins)}, {terms}", "accm"))


class _KGemv:
    """Decode GEMV on K-quant super-blocks with float activations, shaped as `_BlockGemv`:
    per scale unit u (a 32-piece, or a 16-half where the scales are per 16) the integer
    weights (exact in f32, Q6_K's and Q3_K's less their zero) times x summed first, then
    scaled once by d·sc_u into one of four accumulators (piece j's into j mod 4); the mins
    formats' dmin·m_u·Σx_u terms are one product per super-block of the dmin·m vector with
    the units' sums of x (made once per call), accumulated apart and subtracted at the end.
    Rows are streamed one after the other, each step prefetching ahead (as the int8 path)."""

    def __init__(
        self, f: FunctionWriter, fmt: Format, k: int, f16c: bool, x: str = "%a0", out: str = "%a2"
    ):
        self.f, self.v, self.fmt, self.k = f, Vec(f, 16), fmt, k
        self.xrow, self.out = x, out
        self.sb = SuperBlock(f, fmt, f16c)
        self.lanes = self.sb.scale_lanes  # scale units per super-block: 8 or 16
        self.unit = QK_K // self.lanes
        self.row_bytes = fmt.row_bytes(k)
        if self.sb.mins:  # Σx per scale unit, in super-block order
            self.sums = f.var(f"[{k // self.unit} x float]", hint="xsums", align=64).ptr
        self.slot = f.var(f"<{self.lanes} x float>", hint="scales", align=64).ptr

    def run(self, lo: str, hi: str) -> None:
        f, v = self.f, self.v
        if self.sb.mins:
            with f.loop(0, self.k // 32, 1, "xs") as b:
                x0, x1 = self.x(b)
                if self.unit == 32:
                    f.store("float", _lane_sum(v, v.add(x0, x1)), f.gep(self.sums, b))
                else:
                    for h, xh in enumerate((x0, x1)):
                        f.store("float", _lane_sum(v, xh), f.gep(self.sums, f.add(f.mul(b, 2), h)))
        with f.loop(lo, hi, 1, "r") as r:
            row = f.gep("%a1", f.mul(r, self.row_bytes), "i8")
            f.store("float", self.row(row), f.gep(self.out, r))

    def x(self, b: str | int) -> list[str]:
        """32-piece b of the activation row as two 16-lane vectors."""
        base = self.f.mul(b, 32)
        return [self.v.load(self.xrow, self.f.add(base, i)) for i in (0, 16)]

    def row(self, row: str) -> str:
        f, v = self.f, self.v
        accs = [f.var(v.t, v.zero, "acc") for _ in range(4)]
        mt = vec(self.lanes, "float")
        mins = f.var(mt, "zeroinitializer", "accm") if self.sb.mins else None
        # an opaque trip count: LLVM would unroll short rows fully and interleave them
        with f.loop(0, opaque(f, self.k // QK_K, "i64"), 1, "ks") as s:
            self.step(f.gep(row, f.mul(s, self.fmt.block_bytes), "i8"), s, accs, mins)
        total = _tree(v.add, [f.get(a) for a in accs])
        if mins is not None:
            m = f.get(mins)
            if self.lanes < 16:
                idx = [i if i < self.lanes else self.lanes for i in range(16)]
                m = shuffle(f, mt, m, "zeroinitializer", idx, "m")
            total = v.sub(total, m)
        return _lane_sum(v, total)

    def step(self, sb: str, s: str, accs: list[Var], mins: Var | None) -> None:
        f, v, blocks = self.f, self.v, self.sb
        prefetch_ahead(f, sb, self.fmt.block_bytes)
        ds, dm = blocks.scales(sb)
        mt = vec(self.lanes, "float")
        # each scale read back from memory as its FMA's broadcast operand (see _BlockGemv)
        f.store(mt, ds, self.slot)
        slot = opaque(f, self.slot)
        conv = "uitofp" if blocks.mins else "sitofp"
        for j in range(QK_K // 32):
            q = blocks.quants(sb, j)
            qs = [
                f(
                    f"{conv} <16 x i8> {shuffle(f, '<32 x i8>', q, 'poison', range(h, h + 16))}"
                    f" to {v.t}",
                    "qf",
                )
                for h in (0, 16)
            ]
            xs = self.x(f.add(f.mul(s, QK_K // 32), j))
            acc = f.get(accs[j % 4])
            if self.unit == 32:
                d = v.splat(f.load("float", f.gep(slot, j)))
                acc = v.fma(v.fma(qs[1], xs[1], v.mul(qs[0], xs[0])), d, acc)
            else:
                for h in (0, 1):
                    d = v.splat(f.load("float", f.gep(slot, 2 * j + h)))
                    acc = v.fma(v.mul(qs[h], xs[h]), d, acc)
            f.set(accs[j % 4], acc)
        if mins is not None:
            sums = f.load(mt, f.gep(self.sums, f.mul(s, self.lanes)))
            f.set(mins, f(f"fadd {mt} {f.get(mins)}, {f(f'fmul {mt} {dm}, {sums}')}", "accm"))


def _tree(add, vs: list[str]) -> str:
    """vs summed pairwise: ((v0 + v1) + (v2 + v3)) ..., a fixed order."""
    while len(vs) > 1:
        vs = [add(a, b) for a, b in zip(vs[::2], vs[1::2], strict=False)] + (
            [vs[-1]] if len(vs) % 2 else []
        )
    return vs[0]


def _lane_sum(v: Vec, x: str) -> str:
    """The lanes of x summed in a halving tree (lane i + lane i + W/2, ...), a fixed order."""
    f, lanes = v.f, v.w
    while lanes > 1:
        half = lanes // 2
        t = f"<{lanes} x float>"
        lo, hi = (
            f(
                f"shufflevector {t} {x}, {t} poison, <{half} x i32> <"
                + ", ".join(f"i32 {i}" for i in range(k, k + half))
                + ">",
                "h",
            )
            for k in (0, half)
        )
        x, lanes = f(f"fadd <{half} x float> {lo}, {hi}", "hs"), half
    return f(f"extractelement <1 x float> {x}, i64 0", "sum")


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
