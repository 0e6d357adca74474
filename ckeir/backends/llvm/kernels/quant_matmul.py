"""qmatmul: out[n, N] = x[n, K] @ W[N, K].T with GGML-block weights (q8_0, q4_0, q4_1, q5_0,
q5_1) as int8 dot products, the semantics of `ckeir.quant` (the numpy oracle):

- each x row is quantized per 32-block to int8 with an f32 scale (GGML's Q8_0 rule, scale
  kept in f32), by every thread for itself, into its own stack scratch;
- each block contributes  d_w·d_x · Σ q_w q_x  (an exact int32 sum), plus m_w·d_x·Σ q_x for
  q4_1 and q5_1, accumulated in f32.

Two code paths compute the same integer sums:

- VNNI (AVX-512 with avx512vnni): `vpdpbusd` multiplies unsigned by signed bytes into i32
  lanes.  q4 nibbles (0..15) are the unsigned side as they are, q5's with their fifth bit
  ORed on (a mask bit as 16, by a `select` on the bitcast mask); q8_0 weights become
  unsigned with their sign bit flipped (w + 128).  The lanes start from a correction the
  quantizer stored, -128·Σq_x (q8_0), -8·Σq_x (q4_0, whose weights are nibble - 8) or
  -16·Σq_x (q5_0), so
  they end at exact partial sums.  A *group* of blocks fills one 512-bit dot product: two
  q8_0 blocks (8 lanes each), or four q4 blocks whose low nibbles and high nibbles are two
  `vpdpbusd` into the same lanes (4 per block).  A row's group is one or two unaligned
  64-byte loads, one byte shuffle to gather its quants and one to gather its f16 scales;
  the quantizer lays the activations out in the matching order (for q4, per group: every
  block's first 16 values, then every block's last 16).
- generic (any other host): per block, sign-extended bytes multiplied as i32 vectors and
  reduced (`llvm.vector.reduce.add`); LLVM lowers it to AVX2 or SSE.

Work split: threads take disjoint output rows (multiples of 16, so no two threads write to
one cache line).  Token rows are quantized `batch` at a time; then the thread's rows are
swept in tiles of TN rows, each tile by `tokens` token rows at a time, so a tile is read
from DRAM once per batch and reused from cache (prefill, `prefill_rows` rows interleaved
per register block).  n == 1 (decode GEMV) is the same structure with one token: `rows`
rows streamed one after the other (one sequential stream for the prefetchers), their sums
reduced together; per block the scales combine as c = d_w·d_x, q4_1's min terms on the side;
each group prefetches the row's lines `common.PREFETCH` bytes ahead of it.

Measured (Zen 4, 1 thread, weights in L2): decode 2.2-2.6 cycles per q4 block, 3.6-3.9 per
q8_0 block; prefill (16 tokens) 1.5-1.8 cycles per q4 block and token.  From DRAM, decode
reaches ~0.65-0.8 of a plain read loop's bandwidth on one thread (benchmarks/gemv.py).
"""

from __future__ import annotations

import attrs

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    FunctionWriter,
    Kernel,
    ceil_to,
    fifth_bits,
    finish_kernel,
    halves_to_floats,
    kernel_writer,
    prefetch_ahead,
    quantize_block,
    scratch_layout,
    shuffle,
    splat,
    vec,
)
from ckeir.backends.llvm.kernels.kquant import K_FORMATS, kqmatmul
from ckeir.formats import FORMATS, QUANT_FORMATS, Format

QK = 32  # elements per block (weights and activations)
SCRATCH_BYTES = 96 * 1024  # per thread, on its stack: one quantized batch of token rows


@attrs.frozen
class Plan:
    """Compile-time shape of one qmatmul kernel."""

    fmt: Format
    k: int
    vnni: bool
    f16c: bool
    tile_rows: int  # TN: weight rows per tile, a multiple of both row counts below
    rows: int  # weight rows per register block in decode
    prefill_rows: int  # ... and in prefill, with `tokens` token rows
    tokens: int
    batch: int  # token rows quantized at once, a multiple of `tokens`
    chunk: int = 0  # K elements per chunk of the reduction (0: K is one chunk)
    separate: bool = False  # write each chunk's sums to its own slot instead of folding
    rowwise: bool = False  # every token row's sums in decode's order (batched decode)

    @property
    def blocks(self) -> int:
        return self.k // QK

    @property
    def chunk_blocks(self) -> int:
        return (self.chunk or self.k) // QK

    @property
    def chunks(self) -> int:
        return self.blocks // self.chunk_blocks

    @property
    def packed(self) -> bool:
        """VNNI with chunks shorter than a group (a divisor of it): each group holds whole
        chunks side by side, each in lanes of its own."""
        return self.vnni and bool(self.chunk) and self.chunk_blocks < self.group_blocks

    @property
    def padded_chunk_blocks(self) -> int:
        """Blocks of one chunk in the scratch: VNNI pads a chunk's last group with zero
        blocks (each chunk is laid out as a K = chunk kernel lays out its whole row);
        packed chunks lie one after the other."""
        gm = self.group_blocks if self.vnni and not self.packed else 1
        return ceil_to(self.chunk_blocks, gm)

    @property
    def padded_blocks(self) -> int:
        """Blocks in the scratch: every chunk padded to whole groups (packed: the row)."""
        if self.packed:
            return ceil_to(self.blocks, self.group_blocks)
        return self.chunks * self.padded_chunk_blocks

    @property
    def nibbles(self) -> bool:
        """4- or 5-bit quants, two per byte (q4_x, q5_x)."""
        return self.fmt.bits != 8

    @property
    def scale_lanes(self) -> int:
        """f16 values at the head of a block: d, or d and m (q4_1, q5_1)."""
        return 2 if self.fmt.mins else 1

    @property
    def dot_lanes(self) -> int:
        """VNNI i32 lanes per block: 8 for q8_0; 4 for q4 (both nibble halves add there)."""
        return 4 if self.nibbles else 8

    @property
    def group_blocks(self) -> int:
        """VNNI blocks per 16-lane dot product."""
        return 16 // self.dot_lanes

    @property
    def correction(self) -> int:
        """VNNI: where each dot-product lane starts, per Σq_x: the unsigned side is q8_0's
        q + 128, or the stored nibbles (q4_0, q5_0: q - zero)."""
        if not self.vnni:
            return 0
        return -128 if self.fmt.bits == 8 else -self.fmt.zero

    def offsets(self) -> dict[str, int]:
        """Byte offsets of the regions of one token's scratch, and its `stride`: q_x; VNNI
        lane corrections (i32); per block d_x (and d_x·Σq_x for q4_1) (`dxs`); VNNI: d_x
        once per dot lane (`pattern`) and q4_1's d_x·Σq_x alone (`sigma`)."""
        b, vnni = self.padded_blocks, self.vnni
        sizes = {
            "q": QK * b,
            "corr": 4 * self.dot_lanes * b if self.correction else 0,
            "dxs": 4 * self.scale_lanes * b,
            "pattern": 4 * self.dot_lanes * b if vnni else 0,
            "sigma": 4 * b if vnni and self.scale_lanes == 2 else 0,
        }
        return scratch_layout(sizes)


def plan(
    fmt: str,
    k: int,
    tile: tuple[int, int],
    host: HostCPU,
    chunk: int = 0,
    separate: bool = False,
    rowwise: bool = False,
) -> Plan:
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"qmatmul: no kernel for {fmt} weights (have {', '.join(QUANT_FORMATS)})")
    if k % QK:
        raise ValueError(f"qmatmul {fmt}: K={k} must be a multiple of {QK}")
    if chunk and (chunk % QK or k % chunk):
        raise ValueError(
            f"qmatmul {fmt}: k_chunk {chunk} must be a multiple of {QK} that divides K={k}"
        )
    vnni = host.has_vnni and {"avx512vl", "avx512bw", "f16c"} <= host.features
    # prefill: 2 rows x 4 tokens, whose 8 accumulators and 4 tokens' activations (12
    # vectors) fit the 32 registers unspilled (4 x 4 spilled)
    rows, prefill_rows, tokens = (4, 2, 4) if vnni else (4, 4, 2)
    if rowwise and vnni:  # one weight row per block: decode's order keeps a c vector (and
        # q4_1's min sums) per row and token, and 2 rows x 4 tokens spilled (SmolLM2's LM
        # head, 4 rows: 5.7 ms against 3.5 ms, q4_1 3.4 against 2.5, one thread)
        prefill_rows = 1
    tn = max(4, tile[0] // 4 * 4)
    probe = Plan(
        FORMATS[fmt],
        k,
        vnni,
        "f16c" in host.features,
        tn,
        rows,
        prefill_rows,
        tokens,
        tokens,
        chunk,
        separate,
        rowwise,
    )
    per_batch = SCRATCH_BYTES // probe.offsets()["stride"]
    return attrs.evolve(probe, batch=max(tokens, min(32, per_batch) // tokens * tokens))


def qmatmul(
    fmt: str,
    n_out: int,
    k: int,
    tile: tuple[int, int],
    host: HostCPU,
    chunk: int = 0,
    separate: bool = False,
    rowwise: bool = False,
) -> Kernel:
    """Kernel (x: f32[n, K], w: GGML blocks [N, K/32 * block bytes], out: f32[n, N]).

    With `chunk` (K elements, a multiple of 32 dividing K), the reduction over K restarts at
    every multiple of `chunk`: each chunk's lanes are summed to one float, and the chunk sums
    fold left to right, ``((c0 + c1) + c2) + ...`` (the canonical order a matmul split along
    K reproduces: see `passes.place`).  With `separate`, chunk c's sums go to slot c of
    out instead (f32[chunks, n, N]: a later rank of a row-parallel matmul delivers them
    unfolded).

    With `rowwise`, several token rows still share each weight tile and register block, but
    each row's sums are computed in the one-row (decode) order, so a row gets the bits a
    call of that row alone gives: a batched decode step computes for each sequence what
    its one-sequence decode computes.  (Prefill's order, d_x per dot lane times d_w, and
    q4_1's min terms of all tokens in one accumulator, round differently.)"""
    if fmt in K_FORMATS:
        return kqmatmul(fmt, n_out, k, host, chunk, separate, rowwise)
    p = plan(fmt, k, tile, host, chunk, separate, rowwise)
    path = "vnni" if p.vnni else f"v{host.vector_width}"
    how = f"_c{p.chunk}{'s' if p.separate else ''}" if p.chunk else ""
    how += "_rw" if p.rowwise else ""
    f = kernel_writer(f"qmatmul_{fmt}_n{n_out}_k{k}_t{p.tile_rows}{how}_{path}", 3)
    _Writer(f, p, n_out).body()
    return finish_kernel(f, ("x", "w", "out"))


# ---- IR snippets --------------------------------------------------------------------------


def opaque(f: FunctionWriter, value: str | int, ty: str = "ptr") -> str:
    """`value`, through an empty asm statement LLVM cannot see through or move."""
    return f(f'call {ty} asm sideeffect "", "=r,0"({ty} {value})', "opq")


def block_scales(
    f: FunctionWriter, fmt: Format, row: str, b0: str | int, nb: int, f16c: bool
) -> str:
    """The f16 scale(s) of blocks b0..b0+nb-1 of a row as one f32 vector (d0[, m0], d1...).
    When one 64-byte load inside the blocks holds them all (four q4 blocks), they are one
    shuffle of it; its address is opaque, or LLVM rebuilds the blocks' quants out of the
    same load with more shuffles than the loads they save.  Otherwise one load per block
    (two loads and a two-source shuffle measured slower for q8_0)."""
    lpb, bb = (2 if fmt.mins else 1), fmt.block_bytes
    start = f.gep(row, f.mul(b0, bb), "i8")
    n = nb * lpb
    if nb * bb >= 64 and (nb - 1) * bb + 2 * lpb <= 64:
        idx = [i * bb + j for i in range(nb) for j in range(2 * lpb)]
        wide = f.load("<64 x i8>", opaque(f, start), 1)
        halves, ty = shuffle(f, "<64 x i8>", wide, "poison", idx, "hb"), vec(2 * n, "i8")
    else:
        it = "i32" if lpb == 2 else "i16"
        halves, ty = "poison", vec(nb, it)
        for j in range(nb):
            h = f.load(it, f.gep(start, j * bb, "i8"), 2)
            halves = f(f"insertelement {ty} {halves}, {it} {h}, i64 {j}", "hs")
    halves = f(f"bitcast {ty} {halves} to {vec(n, 'i16')}", "hs")
    return halves_to_floats(f, halves, n, f16c)


# ---- the kernel's structure ---------------------------------------------------------------


class _Writer:
    def __init__(self, f: FunctionWriter, p: Plan, n_out: int):
        self.f, self.p, self.n_out = f, p, n_out
        self.stride = p.offsets()["stride"]
        self.scratch = f.var(f"[{p.batch * self.stride} x i8]", hint="scratch", align=64).ptr
        self.path = _Vnni(f, p) if p.vnni else _Generic(f, p)

    def body(self) -> None:
        f, p = self.f, self.p
        lo, hi = f.share(self.n_out, 16)
        with f.if_(f(f"icmp slt i64 {lo}, {hi}", "mine")):
            with f.loop(0, "%n", p.batch, "tg") as tg:
                ng = f.min(p.batch, f.sub("%n", tg))
                with f.loop(0, ng, 1, "qt") as j:
                    self.path.quantize(f.gep("%a0", f.mul(f.add(tg, j), p.k)), self.token(j))
                with f.loop(lo, hi, p.tile_rows, "rb") as rb:
                    re = f.min(f.add(rb, p.tile_rows), hi)
                    tfull = f.round_down(0, ng, p.tokens)
                    with f.loop(0, tfull, p.tokens, "t") as t:
                        self.rows(rb, re, tg, t, p.tokens)
                    if p.rowwise:  # pairs too (a step of 2 rows or 6): each row's order is
                        # decode's whatever its group, so the group sizes are free to choose
                        pairs = f.round_down(tfull, ng, 2)
                        with f.loop(tfull, pairs, 2, "t") as t:
                            self.rows(rb, re, tg, t, 2)
                        tfull = pairs
                    with f.loop(tfull, ng, 1, "t") as t:
                        self.rows(rb, re, tg, t, 1)

    def token(self, j: str | int) -> str:
        return self.f.gep(self.scratch, self.f.mul(j, self.stride), "i8")

    def rows(self, rb: str, re: str, tg: str, t: str, ntok: int) -> None:
        f, rows = self.f, self.p.rows if ntok == 1 else self.p.prefill_rows
        rend = f.round_down(rb, re, rows)
        with f.loop(rb, rend, rows, "r") as r:
            self.dots(r, rows, tg, t, ntok)
        with f.loop(rend, re, 1, "r") as r:
            self.dots(r, 1, tg, t, ntok)

    def dots(self, r: str, nrow: int, tg: str, t: str, ntok: int) -> None:
        """out[tg+t+j, r+i] for i < nrow, j < ntok."""
        f, row_bytes = self.f, self.p.fmt.row_bytes(self.p.k)
        wrows = [f.gep("%a1", f.mul(f.add(r, i), row_bytes), "i8") for i in range(nrow)]
        # opaque to LLVM: otherwise, once it unrolls a short K loop, it hoists every
        # activation load out of the row loop and spills them (slower than reloading)
        toks = [opaque(f, self.token(f.add(t, j))) for j in range(ntok)]
        ft = vec(nrow * ntok, "float")
        if not self.p.chunk:  # lane i*ntok + j: output row r+i of token t+j
            self.store(self.path.dots(wrows, toks), r, nrow, tg, t, ntok, "%a2")
            return
        # chunk by chunk from fresh accumulators; -0.0 + c0 is c0, bit for bit
        fold = None if self.p.separate else f.var(ft, "splat (float -0.0)", "fold")

        def take(c: str | int, sums: str) -> None:
            if fold is None:
                slot = f.gep("%a2", f.mul(f.mul(c, "%n"), self.n_out))
                self.store(sums, r, nrow, tg, t, ntok, slot)
            else:
                f.set(fold, f(f"fadd {ft} {f.get(fold)}, {sums}", "fold"))

        if self.p.packed:
            self.packed(wrows, toks, take)
        else:
            with f.loop(0, self.p.chunks, 1, "kc") as c:
                wb, sb = f.mul(c, self.p.chunk_blocks), f.mul(c, self.p.padded_chunk_blocks)
                take(c, self.path.dots(wrows, toks, wb, sb))
        if fold is not None:
            self.store(f.get(fold), r, nrow, tg, t, ntok, "%a2")

    def packed(self, wrows: list[str], toks: list[str], take) -> None:
        """Group by group, each group's chunks in order (the last group may be short)."""
        f, p = self.f, self.p
        gm, cb = p.group_blocks, p.chunk_blocks
        per = gm // cb
        whole, rest = divmod(p.blocks, gm)
        with f.loop(0, whole, 1, "kg") as g:
            b0 = f.mul(g, gm)
            for q, sums in enumerate(self.path.packed_group(wrows, toks, b0, gm)):
                take(f.add(f.mul(g, per), q), sums)
        if rest:
            for q, sums in enumerate(self.path.packed_group(wrows, toks, whole * gm, rest)):
                take(whole * per + q, sums)

    def store(self, sums: str, r: str, nrow: int, tg: str, t: str, ntok: int, out0: str) -> None:
        """Lane i*ntok + j of `sums` to out0[tg+t+j, r+i]."""
        f = self.f
        ft = vec(nrow * ntok, "float")
        for j in range(ntok):
            out = f.gep(out0, f.add(f.mul(f.add(f.add(tg, t), j), self.n_out), r))
            if nrow == 1:
                f.store("float", f(f"extractelement {ft} {sums}, i64 {j}"), out)
            else:
                lanes = [i * ntok + j for i in range(nrow)]
                row = sums if ntok == 1 else shuffle(f, ft, sums, "poison", lanes, "o")
                f.store(vec(nrow, "float"), row, out)


class _Path:
    """What both code paths share: scratch addresses, quantizing one activation block, and
    the sweep over K."""

    def __init__(self, f: FunctionWriter, p: Plan):
        self.f, self.p, self.at = f, p, p.offsets()
        self.bb = p.fmt.block_bytes

    def one_row_order(self, toks: list[str]) -> bool:
        """Whether these token rows are summed as a row alone is (decode's order)."""
        return len(toks) == 1 or self.p.rowwise

    def region(self, tok: str, name: str, b: str | int, per_block: int) -> str:
        """Address of block b's entry (`per_block` bytes each) in a scratch region."""
        return self.f.gep(tok, self.f.add(self.at[name], self.f.mul(b, per_block)), "i8")

    def q8(self, x: str, b: str | int) -> tuple[str, str, str]:
        return quantize_block(self.f, x, b)

    def sweep(self, wrows: list[str], toks: list[str], per_step: int, step, wb0=0, sb0=0) -> None:
        """step(rows, wb, sb, nb) over one chunk of K (all of it, unchunked) in steps of
        `per_step` blocks (the last may be short): weight block wb0 + o, scratch block
        sb0 + o; rows are (index, pointer) pairs.  Decode streams the rows one after the
        other: a single sequential stream is what the hardware prefetchers follow at full
        DRAM speed (4 rows interleaved ran at half of it on Zen 4; on Ice Lake, prefetching,
        q8_0 at 0.75 of the read kernel's bandwidth against 0.95), and the opaque trip
        count keeps LLVM from unrolling the loops fully and interleaving the rows again.  Prefill
        interleaves its rows, each weight step shared by several token rows."""
        f, decode = self.f, len(toks) == 1
        whole, rest = divmod(self.p.chunk_blocks, per_step)
        parts = [[(i, w)] for i, w in enumerate(wrows)] if decode else [list(enumerate(wrows))]

        def at(base, o):
            return o if base == 0 else f.add(base, o)

        for part in parts:
            with f.loop(0, opaque(f, whole, "i64") if decode else whole, 1, "ks") as i:
                o = f.mul(i, per_step)
                step(part, at(wb0, o), at(sb0, o), per_step)
            if rest:
                step(part, at(wb0, whole * per_step), at(sb0, whole * per_step), rest)

    def sigma(self, q32: str, d: str) -> str:
        """d_x·Σq_x (q4_1's min term per unit m_w)."""
        f = self.f
        qsum = f.intrinsic("i32", "llvm.vector.reduce.add.v32i32", [("<32 x i32>", q32)])
        return f(f"fmul float {d}, {f(f'sitofp i32 {qsum} to float')}", "sigma")


# ---- VNNI ---------------------------------------------------------------------------------


@attrs.frozen
class _Acts:
    """One token's operands for one group: q_x bytes (low and high halves for q4), lane
    corrections, and d_x per block (decode) or per dot lane (prefill)."""

    x: tuple[str, ...]
    init: str
    scale: str


class _Vnni(_Path):
    """Groups of `group_blocks` blocks; a last partial group is a whole one whose missing
    blocks read as zero (weights by a masked load, activations zero-filled by `quantize`)."""

    # -- activations

    def quantize(self, x: str, s: str) -> None:
        f, p = self.f, self.p
        if not p.chunk or p.packed:
            self.quantize_chunk(x, s, 0, p.blocks, p.padded_blocks)
            return
        with f.loop(0, p.chunks, 1, "qc") as c:
            self.quantize_chunk(x, s, c, p.chunk_blocks, p.padded_chunk_blocks)

    def quantize_chunk(self, x: str, s: str, c: str | int, cb: int, pcb: int) -> None:
        """Chunk c (cb blocks) of row x into its place in the scratch, padded to pcb."""
        f, p = self.f, self.p
        gm = p.group_blocks
        src0, dst0 = (0, 0) if c == 0 else (f.mul(c, cb), f.mul(c, pcb))

        def at(base, o):
            return o if base == 0 else f.add(base, o)

        with f.loop(0, cb // gm, 1, "qg") as g:
            for i in range(gm):
                o = f.add(f.mul(g, gm), i)
                self.quantize_block(x, s, at(src0, o), at(dst0, o))
        for b in range(cb // gm * gm, pcb):
            if b < cb:
                self.quantize_block(x, s, at(src0, b), at(dst0, b))
            else:
                self.zero_block(s, at(dst0, b))

    def q_offsets(self, b: str | int) -> tuple[str | int, str | int]:
        """Where block b's q_x go: q8_0 all 32 at the first offset; q4: per group of G,
        every block's first 16 values, then every block's last 16."""
        f, gm = self.f, self.p.group_blocks
        if not self.p.nibbles:
            return f.mul(b, QK), 0
        i = f(f"and i64 {b}, {gm - 1}", "bi")
        lo = f.add(f.mul(f.sub(b, i), QK), f.mul(i, 16))
        return lo, f.add(lo, 16 * gm)

    def quantize_block(self, x: str, s: str, src: str | int, b: str | int) -> None:
        """Block `src` of row x into scratch block b: q_x, lane corrections, d_x (+ σ), d_x
        per dot lane, σ."""
        f, p = self.f, self.p
        q, q32, d = self.q8(x, src)
        lo, hi = self.q_offsets(b)
        if not p.nibbles:
            f.store("<32 x i8>", q, f.gep(s, lo, "i8"), 16)
        else:
            for off, first in ((lo, 0), (hi, 16)):
                half = shuffle(f, "<32 x i8>", q, "poison", range(first, first + 16), "qh")
                f.store("<16 x i8>", half, f.gep(s, off, "i8"), 16)
        lanes = p.dot_lanes
        if p.correction:
            corr = f(f"mul {vec(lanes, 'i32')} {self.lane_sums(q32)}, splat (i32 {p.correction})")
            f.store(vec(lanes, "i32"), corr, self.region(s, "corr", b, 4 * lanes), 16)
        pattern = splat(f, "float", d, lanes)
        f.store(vec(lanes, "float"), pattern, self.region(s, "pattern", b, 4 * lanes), 16)
        if p.scale_lanes == 1:
            f.store("float", d, self.region(s, "dxs", b, 4))
            return
        sigma = self.sigma(q32, d)
        pair = f(f"insertelement <2 x float> <float poison, float 0.0>, float {d}, i64 0")
        pair = f(f"insertelement <2 x float> {pair}, float {sigma}, i64 1")
        f.store("<2 x float>", pair, self.region(s, "dxs", b, 8))
        f.store("float", sigma, self.region(s, "sigma", b, 4))

    def zero_block(self, s: str, b: int) -> None:
        """A padding block: zero q_x and zero scales, so it adds exactly 0."""
        f, p = self.f, self.p
        lo, hi = self.q_offsets(b)
        for off in (lo,) if hi == 0 else (lo, hi):
            f.store(vec(16 if p.nibbles else 32, "i8"), "zeroinitializer", f.gep(s, off, "i8"), 16)
        for region, size in (
            ("corr", 4 * p.dot_lanes if p.correction else 0),
            ("dxs", 4 * p.scale_lanes),
            ("pattern", 4 * p.dot_lanes),
            ("sigma", 4 if p.scale_lanes == 2 else 0),
        ):
            if size:
                ptr = self.region(s, region, b, size)
                f.store(vec(size, "i8"), "zeroinitializer", ptr, 4)

    def lane_sums(self, q32: str) -> str:
        """Σq_x over the bytes each dot lane of the block multiplies: q8_0 lane l has
        values 4l..4l+3; a q4 lane has 4l..4l+3 (low nibbles) and 16+4l..16+4l+3 (high)."""
        f, lanes = self.f, self.p.dot_lanes
        parts = [
            shuffle(
                f,
                "<32 x i32>",
                q32,
                "poison",
                [4 * lane + k % 4 + 16 * (k // 4) for lane in range(lanes)],
            )
            for k in range(32 // lanes)
        ]
        while len(parts) > 1:
            parts = [
                f(f"add {vec(lanes, 'i32')} {a}, {b}", "ls")
                for a, b in zip(parts[::2], parts[1::2], strict=True)
            ]
        return parts[0]

    def activations(self, tok: str, g0: str | int, decode: bool) -> _Acts:
        f, p = self.f, self.p
        base = f.gep(tok, f.mul(g0, QK), "i8")
        if p.nibbles:
            x = tuple(f.load("<64 x i8>", f.gep(base, 64 * h, "i8"), 16) for h in (0, 1))
        else:
            x = (f.load("<64 x i8>", base, 16),)
        init = "zeroinitializer"
        if p.correction:
            init = f.load("<16 x i32>", self.region(tok, "corr", g0, 4 * p.dot_lanes), 16)
        if decode:
            nl = p.group_blocks * p.scale_lanes
            scale = f.load(vec(nl, "float"), self.region(tok, "dxs", g0, 4 * p.scale_lanes), 4)
        else:
            scale = f.load("<16 x float>", self.region(tok, "pattern", g0, 4 * p.dot_lanes), 16)
        return _Acts(x, init, scale)

    def sigmas(self, toks: list[str], g0: str | int, width: int) -> str:
        """<width x float>: lane j·G + i is σ of block g0+i for token j (G = group_blocks)."""
        f, gm = self.f, self.p.group_blocks
        parts = [f.load(vec(gm, "float"), self.region(tok, "sigma", g0, 4), 4) for tok in toks]
        parts += ["zeroinitializer"] * (width // gm - len(parts))
        n = gm
        while len(parts) > 1:
            parts = [
                shuffle(f, vec(n, "float"), a, b, range(2 * n), "sig")
                for a, b in zip(parts[::2], parts[1::2], strict=True)
            ]
            n *= 2
        return parts[0]

    # -- weights

    def weights(self, row: str, g0: str | int, span: int) -> tuple[tuple[str, ...], str]:
        """A row's group of `span` bytes (less than a whole group's: the last, partial one):
        the unsigned dot operand(s) (q4: low and high nibbles) and the f16 scales as f32
        (d0[, m0], d1, ...)."""
        f, p, bb, gm = self.f, self.p, self.bb, self.p.group_blocks
        start = f.gep(row, f.mul(g0, bb), "i8")
        full = gm * bb  # 68 to 96: two overlapping 64-byte loads cover it
        bt = "<64 x i8>"
        if span == full:
            a = f.load(bt, start, 1)
            b = f.load(bt, f.gep(start, full - 64, "i8"), 1)
        else:  # never read past the row: load its bytes, the rest reads as zero
            a = self.masked_bytes(start, span)
            b = "zeroinitializer"
            if span > 64:
                b = self.masked_bytes(f.gep(start, full - 64, "i8"), span - (full - 64))

        def at(byte: int) -> int:  # where byte of the group is in (a, b)
            return byte if byte < 64 else 64 + byte - (full - 64)

        head, per = p.fmt.quants_at, 16 if p.nibbles else 32
        idx = [at(i * bb + head + j) for i in range(gm) for j in range(per)]
        quants = shuffle(f, bt, a, b, idx, "wq")
        if p.nibbles:
            ops = (
                f(f"and {bt} {quants}, splat (i8 15)", "lo"),
                f(f"lshr {bt} {quants}, splat (i8 4)", "hi"),
            )
            if p.fmt.high_bits:  # the lo operand's fifth bits are each mask's bits 0-15
                at_mask = p.fmt.head
                ops = tuple(
                    f(f"or {bt} {op}, {self.fifth_bits(a, b, at, at_mask + 2 * h)}", "q5")
                    for h, op in enumerate(ops)
                )
        else:
            ops = (f(f"xor {bt} {quants}, splat (i8 -128)", "wu"),)
        nh = gm * p.scale_lanes
        idx = [at(i * bb + j) for i in range(gm) for j in range(2 * p.scale_lanes)]
        halves = f(
            f"bitcast {vec(2 * nh, 'i8')} {shuffle(f, bt, a, b, idx, 'hb')} to {vec(nh, 'i16')}",
            "hs",
        )
        return ops, halves_to_floats(f, halves, nh, p.f16c)

    def masked_bytes(self, start: str, count: int) -> str:
        """64 bytes from `start` of which only the first `count` are read (the rest 0)."""
        bt = "<64 x i8>"
        mask = "<" + ", ".join(f"i1 {str(i < count).lower()}" for i in range(64)) + ">"
        return self.f.intrinsic(
            bt,
            "llvm.masked.load.v64i8.p0",
            [("ptr", start), ("i32", "1"), ("<64 x i1>", mask), (bt, "zeroinitializer")],
        )

    def fifth_bits(self, a: str, b: str, at, first: int) -> str:
        """16 where the group's blocks' q5 mask bits are set, for 16 quants per block: the two
        mask bytes at offset `first` of each block, as 64 bits."""
        f, bb, bt = self.f, self.bb, "<64 x i8>"
        # quant j of block i takes mask byte j // 8 (one byte shuffle), tested at bit j % 8:
        # a vptestmb into a mask register, no trip of the bits through memory
        idx = [at(i * bb + first + j // 8) for i in range(self.p.group_blocks) for j in range(16)]
        bits = "<" + ", ".join(f"i8 {1 << (j % 8)}" for _ in range(4) for j in range(16)) + ">"
        each = f(f"and {bt} {shuffle(f, bt, a, b, idx, 'qhb')}, {bits}", "qhb")
        on = f(f"icmp ne {bt} {each}, zeroinitializer", "qh")
        return f(f"select <64 x i1> {on}, {bt} splat (i8 16), {bt} zeroinitializer", "q5h")

    def dot(self, w: tuple[str, ...], acts: _Acts) -> str:
        """The group's exact partial sums (16 i32 lanes) as floats."""
        f, it, bt = self.f, "<16 x i32>", "<64 x i8>"
        acc = acts.init
        for wv, xv in zip(w, acts.x, strict=True):
            acc = f.intrinsic(it, "llvm.x86.avx512.vpdpbusd.512", [(it, acc), (bt, wv), (bt, xv)])
        return f(f"sitofp {it} {acc} to <16 x float>", "df")

    # -- the dot products

    def dots(self, wrows: list[str], toks: list[str], wb0=0, sb0=0) -> str:
        f, p = self.f, self.p
        gm, decode = p.group_blocks, self.one_row_order(toks)
        acc = _Sums(f, 16, len(wrows), len(toks), "acc")
        mins = None
        if p.scale_lanes == 2:  # decode: c vectors summed whole; prefill: lanes per token
            width = 2 * gm if decode else gm * (1 << (len(toks) - 1).bit_length())
            mins = _Sums(f, width, len(wrows), len(toks) if decode else 1, "accm")
        self.sweep(
            wrows,
            toks,
            gm,
            lambda rows, wb, sb, nb: self.group(rows, toks, wb, sb, nb * self.bb, acc, mins),
            wb0,
            sb0,
        )
        if mins is not None:  # add the min terms into the main accumulators
            for i in range(len(wrows)):
                for j in range(len(toks)):
                    lanes = range(1, mins.width, 2) if decode else range(j * gm, (j + 1) * gm)
                    acc.fold(i, j, mins.get(i, j if decode else 0), mins.width, lanes)
        return acc.totals(exact=bool(p.chunk))

    def packed_group(self, wrows: list[str], toks: list[str], b0: str | int, nb: int) -> list[str]:
        """The sums of each chunk of the nb blocks from b0 (one group, or the short last
        one), from fresh accumulators: chunk q's dot lanes are lanes q·L..q·L+L-1 (L = its
        blocks x dot_lanes), its q4_1 min terms go to its first lanes, and its lanes are
        summed apart — the same operations wherever the chunk lies in its group."""
        f, p = self.f, self.p
        gm, cb, decode = p.group_blocks, p.chunk_blocks, self.one_row_order(toks)
        acc = _Sums(f, 16, len(wrows), len(toks), "acc")
        mins = None
        if p.scale_lanes == 2:
            width = 2 * gm if decode else gm * (1 << (len(toks) - 1).bit_length())
            mins = _Sums(f, width, len(wrows), len(toks) if decode else 1, "accm")
        self.group(list(enumerate(wrows)), toks, b0, b0, nb * self.bb, acc, mins)
        lanes = cb * p.dot_lanes
        if mins is not None:  # block b's min term: to lane b of its chunk's lanes
            for i in range(len(wrows)):
                for j in range(len(toks)):
                    src = [2 * b + 1 if decode else j * gm + b for b in range(gm)]
                    where = {b // cb * lanes + b % cb: src[b] for b in range(gm)}
                    acc.place(i, j, mins.get(i, j if decode else 0), mins.width, where)
        sums, n, per = acc.group_totals(lanes), len(wrows) * len(toks), 16 // lanes
        ty = vec(n * per, "float")
        return [shuffle(f, ty, sums, "poison", range(q, n * per, per)) for q in range(nb // cb)]

    def group(
        self,
        wrows: list[tuple[int, str]],
        toks: list[str],
        wb: str | int,
        sb: str | int,
        span: int,
        acc: _Sums,
        mins: _Sums | None,
    ) -> None:
        """The group at weight block wb, scratch block sb."""
        f, p = self.f, self.p
        decode, gm, lpb = self.one_row_order(toks), p.group_blocks, p.scale_lanes
        # rowwise without min terms: c = d_w·d_x per dot lane as one product of d_w (per
        # row) and d_x (per token) spread over the lanes, the same products as decode's
        spread = decode and len(toks) > 1 and mins is None
        acts = [self.activations(tok, sb, decode and not spread) for tok in toks]
        per_lane = [b * lpb for b in range(gm) for _ in range(p.dot_lanes)]  # scale of each lane
        ht = vec(gm * lpb, "float")
        sig = None if decode or mins is None else self.sigmas(toks, sb, mins.width)
        for i, row in wrows:
            if decode and len(toks) == 1:
                prefetch_ahead(f, f.gep(row, f.mul(wb, self.bb), "i8"), span)
            w, hv = self.weights(row, wb, span)
            if spread:
                dw = shuffle(f, ht, hv, "poison", per_lane, "dw")
                for j, a in enumerate(acts):
                    c = f(f"fmul <16 x float> {dw}, {a.scale}", "c")
                    acc.fma(i, j, self.dot(w, a), c, 16)
                continue
            if decode:  # c = d_w·d_x per block (q4_1: interleaved with m_w·σ)
                for j, a in enumerate(acts):
                    c = f(f"fmul {ht} {hv}, {a.scale}", "c")
                    acc.fma(i, j, self.dot(w, a), shuffle(f, ht, c, "poison", per_lane), 16)
                    if mins is not None:
                        mins.add(i, j, c, mins.width)
                continue
            dw = shuffle(f, ht, hv, "poison", per_lane, "dw")
            for j, a in enumerate(acts):
                acc.fma(i, j, f(f"fmul <16 x float> {self.dot(w, a)}, {a.scale}", "sd"), dw, 16)
            if mins is not None:  # lane j·G + b: m_w of block b (times σ of token j)
                idx = [
                    2 * (k % gm) + 1 if k // gm < len(toks) else 2 * gm for k in range(mins.width)
                ]
                mw = shuffle(f, ht, hv, "zeroinitializer", idx, "mw")
                mins.fma(i, 0, mw, sig, mins.width)


# ---- generic ------------------------------------------------------------------------------


class _Generic(_Path):
    """Per block: Σ q_w q_x as a reduced product of sign-extended i32 vectors."""

    def steps(self, ntok: int) -> int:
        """Blocks per step: 4 in decode (and rowwise: q4_1's min terms add up per lane of
        a step), 2 when several tokens share each weight block."""
        return 4 if ntok == 1 or self.p.rowwise else 2

    def quantize(self, x: str, s: str) -> None:
        f = self.f
        with f.loop(0, self.p.blocks, 1, "qb") as b:
            q, q32, d = self.q8(x, b)
            f.store("<32 x i8>", q, f.gep(s, f.mul(b, QK), "i8"), 16)
            f.store("float", d, self.region(s, "dxs", b, 4 * self.p.scale_lanes))
            if self.p.scale_lanes == 2:
                f.store("float", self.sigma(q32, d), f.gep(self.region(s, "dxs", b, 8), 4, "i8"))

    def dots(self, wrows: list[str], toks: list[str], wb0=0, sb0=0) -> str:
        """(The scratch holds every block unpadded: sb0 is wb0.)"""
        f, p = self.f, self.p
        nb = self.steps(len(toks))
        acc = _Sums(f, 8, len(wrows), len(toks), "acc")
        mins = _Sums(f, 2 * nb, len(wrows), len(toks), "accm") if p.scale_lanes == 2 else None
        self.sweep(
            wrows, toks, nb, lambda rows, b0, _sb, n: self.step(rows, toks, b0, n, acc, mins), wb0
        )
        if mins is not None:
            for i in range(len(wrows)):
                for j in range(len(toks)):
                    acc.fold(i, j, mins.get(i, j), mins.width, range(1, mins.width, 2))
        return acc.totals(exact=bool(p.chunk))

    def step(
        self,
        wrows: list[tuple[int, str]],
        toks: list[str],
        b0: str | int,
        nb: int,
        acc: _Sums,
        mins: _Sums | None,
    ) -> None:
        """Blocks b0..b0+nb-1: 8 lanes of each block's integer sum, times its d_w·d_x, into
        `acc`; q4_1: m_w·σ per block into `mins` (the odd lanes of the scale vector c)."""
        f, lpb = self.f, self.p.scale_lanes
        nl = nb * lpb
        scales = [self.scales(w, b0, nb) for _, w in wrows]
        weights = [[self.block(w, f.add(b0, j)) for j in range(nb)] for _, w in wrows]
        for j, tok in enumerate(toks):
            xs = f.load(vec(nl, "float"), self.region(tok, "dxs", b0, 4 * lpb))
            acts = [
                f(
                    f"sext <32 x i8> {f.load('<32 x i8>', f.gep(tok, f.mul(f.add(b0, i), QK), 'i8'), 16)} to <32 x i32>",
                    "x32",
                )
                for i in range(nb)
            ]
            for k, (i, _) in enumerate(wrows):
                c = f(f"fmul {vec(nl, 'float')} {scales[k]}, {xs}", "c")
                for b, (w, x32) in enumerate(zip(weights[k], acts, strict=True)):
                    lanes = f(f"sitofp <8 x i32> {self.partial_sums(w, x32)} to <8 x float>", "sf")
                    acc.fma(
                        i, j, lanes, shuffle(f, vec(nl, "float"), c, "poison", [b * lpb] * 8), 8
                    )
                if mins is not None:
                    mins.add(i, j, c, nl)

    def partial_sums(self, w: str, x32: str) -> str:
        """Σ q_w q_x of one block as 8 i32 lanes.  Adding the even and odd products first
        is the shape LLVM turns into `pmaddwd` (SSE2/AVX2)."""
        f = self.f
        w32 = f(f"sext <32 x i8> {w} to <32 x i32>", "w32")
        prod = f(f"mul nsw <32 x i32> {w32}, {x32}", "prod")
        even, odd = (shuffle(f, "<32 x i32>", prod, "poison", range(k, 32, 2)) for k in (0, 1))
        pairs = f(f"add nsw <16 x i32> {even}, {odd}", "pairs")
        lo, hi = (shuffle(f, "<16 x i32>", pairs, "poison", range(k, k + 8)) for k in (0, 8))
        return f(f"add nsw <8 x i32> {lo}, {hi}", "ps")

    def scales(self, row: str, b0: str | int, nb: int) -> str:
        return block_scales(self.f, self.p.fmt, row, b0, nb, self.p.f16c)

    def block(self, row: str, b: str) -> str:
        """A block's 32 integer weights as <32 x i8> holding q_w (signed, exact)."""
        f, fmt = self.f, self.p.fmt
        block = f.gep(row, f.mul(b, self.bb), "i8")
        start = f.gep(block, fmt.quants_at, "i8")
        if fmt.bits == 8:
            return f.load("<32 x i8>", start, 1)
        raw = f.load("<16 x i8>", start, 1)
        lo = f(f"and <16 x i8> {raw}, splat (i8 15)", "lo")
        hi = f(f"lshr <16 x i8> {raw}, splat (i8 4)", "hi")
        q = shuffle(f, "<16 x i8>", lo, hi, range(32), "wq")
        if fmt.high_bits:
            qh = f.load("i32", f.gep(block, fmt.head, "i8"), 1)
            q = f(f"or <32 x i8> {q}, {fifth_bits(f, 'i32', qh, 32)}", "q5")
        return f(f"sub <32 x i8> {q}, splat (i8 {fmt.zero})", "wq") if fmt.zero else q


# ---- accumulators -------------------------------------------------------------------------


class _Sums:
    """One `<width x float>` accumulator per (row, token)."""

    def __init__(self, f: FunctionWriter, width: int, nrow: int, ntok: int, hint: str):
        self.f, self.width, self.ty = f, width, vec(width, "float")
        self.vars = [
            [f.var(self.ty, "zeroinitializer", hint) for _ in range(ntok)] for _ in range(nrow)
        ]

    def get(self, i: int, j: int) -> str:
        return self.f.get(self.vars[i][j])

    def set(self, i: int, j: int, value: str) -> None:
        self.f.set(self.vars[i][j], value)

    def widen(self, v: str, n: int) -> str:
        """An n-lane vector as `width` lanes, the rest zero."""
        if n == self.width:
            return v
        idx = list(range(n)) + [n] * (self.width - n)
        return shuffle(self.f, vec(n, "float"), v, "zeroinitializer", idx, "wide")

    def add(self, i: int, j: int, v: str, n: int) -> None:
        self.set(i, j, self.f(f"fadd {self.ty} {self.get(i, j)}, {self.widen(v, n)}", "acc"))

    def fma(self, i: int, j: int, a: str, b: str, n: int) -> None:
        """acc += a*b (n lanes; fused when they fill the accumulator)."""
        t = vec(n, "float")
        if n != self.width:
            self.add(i, j, self.f(f"fmul {t} {a}, {b}", "prod"), n)
            return
        fma = self.f.intrinsic(t, f"llvm.fmuladd.v{n}f32", [(t, a), (t, b), (t, self.get(i, j))])
        self.set(i, j, fma)

    def place(self, i: int, j: int, v: str, n: int, where: dict[int, int]) -> None:
        """acc lane t += lane where[t] of an n-lane vector v (the other lanes += 0)."""
        idx = [where.get(t, n) for t in range(self.width)]
        self.add(
            i, j, shuffle(self.f, vec(n, "float"), v, "zeroinitializer", idx, "pl"), self.width
        )

    def group_totals(self, lanes: int) -> str:
        """<rows·tokens·G x float>: lane (i·tokens + j)·G + g sums lanes g·L..g·L+L-1 of
        accumulator (i, j) (L = `lanes`, G = width / L), each in the same exact tree."""
        f = self.f
        vs = [self.get(i, j) for i in range(len(self.vars)) for j in range(len(self.vars[0]))]
        per = self.width // lanes
        batch = min(len(vs), lanes)  # at most `width` sums per tree
        parts = [
            _hsums(f, vs[k : k + batch], self.width, "", lanes) for k in range(0, len(vs), batch)
        ]
        n = batch * per
        while len(parts) > 1:  # concatenated, in order
            parts = [
                shuffle(f, vec(n, "float"), a, b, range(2 * n), "cat")
                for a, b in zip(parts[::2], parts[1::2], strict=True)
            ]
            n *= 2
        return parts[0]

    def fold(self, i: int, j: int, v: str, n: int, lanes: range) -> None:
        """acc += the `lanes` of an n-lane vector v (in the low lanes, the rest zero)."""
        idx = list(lanes) + [n] * (self.width - len(lanes))
        self.add(
            i, j, shuffle(self.f, vec(n, "float"), v, "zeroinitializer", idx, "fold"), self.width
        )

    def totals(self, exact: bool = False) -> str:
        """<rows·tokens x float>: lane i·tokens + j is the sum of accumulator (i, j)'s lanes
        (`exact`: in the tree's order, which LLVM may not reassociate)."""
        return _hsums(
            self.f,
            [self.get(i, j) for i in range(len(self.vars)) for j in range(len(self.vars[0]))],
            self.width,
            "" if exact else " reassoc",
        )


def _hsums(
    f: FunctionWriter, vs: list[str], width: int, flags: str = " reassoc", group: int = 0
) -> str:
    """<n·G x float> whose lane i·G + g sums lane group g (`group` lanes, all `width` by
    default; G = width / group) of vs[i] (n·G a power of two ≤ width): pairs of vectors
    merge into one whose lane groups add each input group's halves (a transpose-and-add
    tree), then each group left sums within itself.  Every group's sum is the same halving
    tree, whichever group or vector it is."""
    n, ty = len(vs), vec(width, "float")
    lanes = group or width
    assert n & (n - 1) == 0 and n * (width // lanes) <= width, n
    n *= width // lanes
    while len(vs) > 1:
        half, groups = lanes // 2, width // lanes
        lo = [
            g * lanes + i if g < groups else width + (g - groups) * lanes + i
            for g in range(2 * groups)
            for i in range(half)
        ]
        merged = []
        for a, b in zip(vs[::2], vs[1::2], strict=True):
            x, y = (
                shuffle(f, ty, a, b, lo, "lo"),
                shuffle(f, ty, a, b, [m + half for m in lo], "hi"),
            )
            merged.append(f(f"fadd{flags} {ty} {x}, {y}", "hs"))
        vs, lanes = merged, half
    v = vs[0]
    while lanes > 1:
        half = lanes // 2
        idx = [i + half if i % lanes < half else i for i in range(width)]
        v = f(f"fadd{flags} {ty} {v}, {shuffle(f, ty, v, 'poison', idx, 'sw')}", "hs")
        lanes = half
    return shuffle(f, ty, v, "poison", [g * (width // n) for g in range(n)], "sums")
