"""qmatmul: out[n, N] = x[n, K] @ W[N, K].T with GGML-block weights (q8_0, q4_0, q4_1) as
int8 dot products, the semantics of `ckeir.quant` (the numpy oracle):

- each x row is quantized per 32-block to int8 with an f32 scale (GGML's Q8_0 rule, scale
  kept in f32), by every thread for itself, into its own stack scratch;
- each block contributes  d_w·d_x · Σ q_w q_x  (exact int32 sum)  (+ m_w·d_x·Σ q_x for q4_1),
  accumulated in f32.

Two code paths with identical integer sums:

- VNNI (AVX-512 + avx512vnni): `vpdpbusd` multiplies unsigned bytes by signed bytes.  q4
  nibbles (0..15) are the unsigned side; q8_0 weights become unsigned by flipping their
  sign bit (w + 128).  The dot product's i32 lanes start from a correction the
  quantization stored per lane, -128·Σq_x (q8_0) or -8·Σq_x (q4_0, whose weights are
  nibble - 8), so they end at exact partial sums.  One 512-bit vector holds two blocks;
  each step takes `pairs` of them per row for `ROWS` rows.
- generic (any other host): per block, sign-extended bytes multiplied as i32 vectors and
  reduced (`llvm.vector.reduce.add`); LLVM lowers it to AVX2 or SSE.

Per step and row, the f16 scales of the step's blocks are converted as one vector and
multiplied by the token's activation scales: lane c_b = d_w·d_x for every block, and for
q4_1 the interleaved lane m_w·(d_x Σq_x) is the block's whole min term.

Work split: threads take disjoint output rows (multiples of 16, so no two threads write to
one cache line).  Tokens are quantized in groups of up to `group` rows; then the thread's
rows are swept in tiles of TN rows, each tile by `tokens` token rows at a time, so a tile is
read from DRAM once per group and reused from cache (prefill).  n == 1 is the same code with
one token: weights stream once (decode GEMV).
"""

from __future__ import annotations

import attrs

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    FunctionWriter,
    Kernel,
    ceil_to,
    f32,
    finish_kernel,
    kernel_writer,
)
from ckeir.formats import FORMATS, QUANT_FORMATS, Format

QK = 32  # elements per block (weights and activations)
ROWS = 4  # weight rows per step
SCRATCH_BYTES = 96 * 1024  # per thread, on its stack: the quantized token group
_CORRECTION = {"q8_0": -128, "q4_0": -8}  # VNNI: per-lane start of the dot products


@attrs.frozen
class Plan:
    """Compile-time shape of one qmatmul kernel."""

    fmt: Format
    k: int
    vnni: bool
    f16c: bool
    tile_rows: int  # TN: rows per tile, a multiple of ROWS
    tokens: int  # token rows per step in prefill
    group: int  # token rows quantized at once (a multiple of `tokens`)

    @property
    def blocks(self) -> int:
        return self.k // QK

    @property
    def lanes_per_block(self) -> int:
        """Scale lanes per block: d (q8_0, q4_0) or d, m (q4_1)."""
        return 2 if self.fmt.name == "q4_1" else 1

    @property
    def correction(self) -> int:
        return _CORRECTION.get(self.fmt.name, 0) if self.vnni else 0

    # scratch layout of one token row: q_x bytes, per-lane corrections (i32, VNNI q8_0/q4_0),
    # then per block d_x (and d_x·Σq_x for q4_1) as f32
    @property
    def corr_offset(self) -> int:
        return self.k

    @property
    def scale_offset(self) -> int:
        return self.k * (2 if self.correction else 1)

    @property
    def stride(self) -> int:
        return ceil_to(self.scale_offset + 4 * self.lanes_per_block * self.blocks, 64)

    def blocks_per_step(self, ntok: int) -> int:
        """Blocks per step: 2 pairs (4 blocks) per row in decode; 1 pair when `tokens` rows
        share each weight vector (their accumulators fill the registers)."""
        return 4 if ntok == 1 else 2


def plan(fmt: str, k: int, tile: tuple[int, int], host: HostCPU) -> Plan:
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"qmatmul: no kernel for {fmt} weights (have {', '.join(QUANT_FORMATS)})")
    if k % QK:
        raise ValueError(f"qmatmul {fmt}: K={k} must be a multiple of {QK}")
    vnni = host.has_vnni and {"avx512vl", "avx512bw", "f16c"} <= host.features
    tokens = 4 if vnni else 2
    tn = max(ROWS, tile[0] // ROWS * ROWS)
    probe = Plan(FORMATS[fmt], k, vnni, "f16c" in host.features, tn, tokens, tokens)
    group = max(tokens, min(32, SCRATCH_BYTES // probe.stride) // tokens * tokens)
    return attrs.evolve(probe, group=group)


def qmatmul(fmt: str, n_out: int, k: int, tile: tuple[int, int], host: HostCPU) -> Kernel:
    """Kernel (x: f32[n, K], w: GGML blocks [N, K/32 * block bytes], out: f32[n, N])."""
    p = plan(fmt, k, tile, host)
    path = "vnni" if p.vnni else f"v{host.vector_width}"
    f = kernel_writer(f"qmatmul_{fmt}_n{n_out}_k{k}_t{p.tile_rows}_{path}", 3)
    _Writer(f, p, n_out).body()
    return finish_kernel(f, ("x", "w", "out"))


def _vec(n: int, ty: str) -> str:
    return f"<{n} x {ty}>"


def _mask(idx: list[int]) -> str:
    return f"<{len(idx)} x i32> <" + ", ".join(f"i32 {i}" for i in idx) + ">"


class _Writer:
    def __init__(self, f: FunctionWriter, p: Plan, n_out: int):
        self.f, self.p, self.n_out = f, p, n_out
        self.bb = p.fmt.block_bytes
        self.row_bytes = p.fmt.row_bytes(p.k)
        self.scratch = f.var(f"[{p.group * p.stride} x i8]", hint="scratch", align=64).ptr

    # ---- structure ----------------------------------------------------------------------

    def body(self) -> None:
        f, p = self.f, self.p
        lo, hi = f.share(self.n_out, 16)
        with f.if_(f(f"icmp slt i64 {lo}, {hi}", "mine")):
            with f.loop(0, "%n", p.group, "tg") as tg:
                ng = f.min(p.group, f.sub("%n", tg))
                with f.loop(0, ng, 1, "qt") as j:
                    x = f.gep("%a0", f.mul(f.add(tg, j), p.k))
                    self.quantize(x, self.token(j))
                with f.loop(lo, hi, p.tile_rows, "rb") as rb:
                    re = f.min(f.add(rb, p.tile_rows), hi)
                    tfull = f.round_down(0, ng, p.tokens)
                    with f.loop(0, tfull, p.tokens, "t") as t:
                        self.rows(rb, re, tg, t, p.tokens)
                    with f.loop(tfull, ng, 1, "t") as t:
                        self.rows(rb, re, tg, t, 1)

    def token(self, j: str | int) -> str:
        return self.f.gep(self.scratch, self.f.mul(j, self.p.stride), "i8")

    def rows(self, rb: str, re: str, tg: str, t: str, ntok: int) -> None:
        f = self.f
        rend = f.round_down(rb, re, ROWS)
        with f.loop(rb, rend, ROWS, "r") as r:
            self.dots(r, ROWS, tg, t, ntok)
        with f.loop(rend, re, 1, "r") as r:
            self.dots(r, 1, tg, t, ntok)

    def dots(self, r: str, nrow: int, tg: str, t: str, ntok: int) -> None:
        """out[tg+t+j, r+i] for i < nrow, j < ntok: the whole K, then one store each."""
        f, p = self.f, self.p
        wrows = [f.gep("%a1", f.mul(f.add(r, i), self.row_bytes), "i8") for i in range(nrow)]
        toks = [self.token(f.add(t, j)) for j in range(ntok)]
        nb = p.blocks_per_step(ntok)
        acc = _Accumulators(f, p, nrow, ntok, nb)
        steps, rest = divmod(p.blocks, nb)
        if steps:
            with f.loop(0, steps, 1, "ks") as i:
                self.step(wrows, toks, f.mul(i, nb), nb, acc)
        if rest:
            self.step(wrows, toks, steps * nb, rest, acc)
        for i in range(nrow):
            for j in range(ntok):
                row = f.add(f.add(tg, t), j)
                out = f.gep("%a2", f.add(f.mul(row, self.n_out), f.add(r, i)))
                f.store("float", acc.total(i, j), out)

    # ---- activations --------------------------------------------------------------------

    def quantize(self, x: str, s: str) -> None:
        """One f32 row as int8 blocks + scales (+ VNNI lane corrections) in scratch `s`."""
        f, p = self.f, self.p
        v32 = _vec(32, "float")
        with f.loop(0, p.blocks, 1, "qb") as b:
            xv = f.load(v32, f.gep(x, f.mul(b, QK)))
            ax = f.intrinsic(v32, "llvm.fabs.v32f32", [(v32, xv)])
            amax = f.intrinsic("float", "llvm.vector.reduce.fmax.v32f32", [(v32, ax)], "nnan")
            d = f(f"fdiv float {amax}, {f32(127.0)}", "dx")
            inv = f(f"fdiv float {f32(1.0)}, {d}", "inv")
            inv = f(f"select i1 {f(f'fcmp oeq float {d}, 0.0')}, float 0.0, float {inv}", "id")
            one = f(f"insertelement <1 x float> poison, float {inv}, i64 0")
            inv32 = f(
                f"shufflevector <1 x float> {one}, <1 x float> poison, <32 x i32> zeroinitializer"
            )
            scaled = f(f"fmul {v32} {xv}, {inv32}", "sx")
            rounded = f.intrinsic(v32, "llvm.round.v32f32", [(v32, scaled)])
            q = f(f"fptosi {v32} {rounded} to <32 x i8>", "q")
            f.store("<32 x i8>", q, f.gep(s, f.mul(b, QK), "i8"), 32)
            q32 = f(f"sext <32 x i8> {q} to <32 x i32>", "q32")
            if p.correction:
                quads = [
                    f(
                        f"shufflevector <32 x i32> {q32}, <32 x i32> poison, {_mask(list(range(i, 32, 4)))}"
                    )
                    for i in range(4)
                ]
                s4 = f(
                    f"add <8 x i32> {f(f'add <8 x i32> {quads[0]}, {quads[1]}')}, "
                    f"{f(f'add <8 x i32> {quads[2]}, {quads[3]}')}",
                    "sum4",
                )
                corr = f(f"mul <8 x i32> {s4}, splat (i32 {p.correction})", "corr")
                f.store("<8 x i32>", corr, f.gep(s, f.add(p.corr_offset, f.mul(b, QK)), "i8"), 32)
            sp = f.gep(s, f.add(p.scale_offset, f.mul(b, 4 * p.lanes_per_block)), "i8")
            f.store("float", d, sp)
            if p.lanes_per_block == 2:
                qsum = f.intrinsic("i32", "llvm.vector.reduce.add.v32i32", [("<32 x i32>", q32)])
                sigma = f(f"fmul float {d}, {f(f'sitofp i32 {qsum} to float')}", "sigma")
                f.store("float", sigma, f.gep(sp, 4, "i8"))

    # ---- one step: `nb` blocks from block b0, for every row and token --------------------

    def step(
        self, wrows: list[str], toks: list[str], b0: str | int, nb: int, acc: _Accumulators
    ) -> None:
        f, p = self.f, self.p
        nl = nb * p.lanes_per_block
        scales = [self.scales(w, b0, nb) for w in wrows]
        if p.vnni:
            weights = [self.vnni_weights(w, b0, nb) for w in wrows]
        else:
            weights = [[self.block_bytes(w, f.add(b0, j)) for j in range(nb)] for w in wrows]
        for j, tok in enumerate(toks):
            xs = f.load(
                _vec(nl, "float"),
                f.gep(tok, f.add(p.scale_offset, f.mul(b0, 4 * p.lanes_per_block)), "i8"),
            )
            if p.vnni:
                acts = self.vnni_activations(tok, b0, nb)
            else:
                acts = [
                    f.load("<32 x i8>", f.gep(tok, f.mul(f.add(b0, i), QK), "i8"), 32)
                    for i in range(nb)
                ]
            for i in range(len(wrows)):
                c = f(f"fmul {_vec(nl, 'float')} {scales[i]}, {xs}", "c")
                if p.vnni:
                    self.vnni_dot(acc, i, j, weights[i], acts, c, nb)
                else:
                    self.generic_dot(acc, i, j, weights[i], acts, c, nb)

    def scales(self, row: str, b0: str | int, nb: int) -> str:
        """The f16 scale(s) of blocks b0..b0+nb-1 of a row as one f32 vector (d0[, m0], d1...)."""
        f, lpb = self.f, self.p.lanes_per_block
        ity = "i32" if lpb == 2 else "i16"
        vec = "poison"
        for j in range(nb):
            h = f.load(ity, f.gep(row, f.mul(f.add(b0, j), self.bb), "i8"), 2)
            vec = f(f"insertelement {_vec(nb, ity)} {vec}, {ity} {h}, i64 {j}", "hs")
        halves = f(f"bitcast {_vec(nb, ity)} {vec} to {_vec(nb * lpb, 'i16')}", "hs")
        return halves_to_floats(f, halves, nb * lpb, self.p.f16c)

    # -- VNNI

    def vnni_weights(self, row: str, b0: str | int, nb: int) -> list[str]:
        """<64 x u8> per pair of blocks (+ <32 x u8> for an odd last block), in the order
        of the activations' bytes."""
        f = self.f
        out = []
        for j in range(0, nb - 1, 2):
            a, b = (self.raw_block(row, f.add(b0, j + i)) for i in (0, 1))
            ty = "<32 x i8>" if self.p.fmt.name == "q8_0" else "<16 x i8>"
            n = 32 if self.p.fmt.name == "q8_0" else 16
            ab = f(f"shufflevector {ty} {a}, {ty} {b}, {_mask(list(range(2 * n)))}", "wab")
            out.append(self.unsigned(ab, 2))
        if nb % 2:
            out.append(self.unsigned(self.raw_block(row, f.add(b0, nb - 1)), 1))
        return out

    def raw_block(self, row: str, b: str) -> str:
        """A block's quants as stored: <32 x i8> (q8_0) or <16 x i8> of nibble pairs."""
        fmt = self.p.fmt.name
        head = {"q8_0": 2, "q4_0": 2, "q4_1": 4}[fmt]
        ty = "<32 x i8>" if fmt == "q8_0" else "<16 x i8>"
        return self.f.load(ty, self.f.gep(row, self.f.add(self.f.mul(b, self.bb), head), "i8"), 1)

    def unsigned(self, raw: str, nblocks: int) -> str:
        """`nblocks` consecutive raw blocks as the u8 operand: q8_0 with the sign bit flipped,
        nibbles as bytes (each block's low nibbles, then its high ones)."""
        f = self.f
        if self.p.fmt.name == "q8_0":
            ty = _vec(32 * nblocks, "i8")
            return f(f"xor {ty} {raw}, splat (i8 -128)", "wu")
        ty = _vec(16 * nblocks, "i8")
        lo = f(f"and {ty} {raw}, splat (i8 15)", "lo")
        hi = f(f"lshr {ty} {raw}, splat (i8 4)", "hi")
        idx = [
            half * 16 * nblocks + blk * 16 + i
            for blk in range(nblocks)
            for half in (0, 1)
            for i in range(16)
        ]
        return f(f"shufflevector {ty} {lo}, {ty} {hi}, {_mask(idx)}", "wn")

    def vnni_activations(self, tok: str, b0: str | int, nb: int) -> list[tuple[str, str]]:
        """(q_x bytes, lane corrections) per pair of blocks (+ the odd last block)."""
        f, p = self.f, self.p
        out = []
        for j in range(0, nb, 2):
            width = 2 if j + 1 < nb else 1
            vt = _vec(32 * width, "i8")
            ct = _vec(8 * width, "i32")
            off = f.mul(f.add(b0, j), QK)
            q = f.load(vt, f.gep(tok, off, "i8"), 32)
            corr = (
                f.load(ct, f.gep(tok, f.add(p.corr_offset, off), "i8"), 32)
                if p.correction
                else "zeroinitializer"
            )
            out.append((q, corr))
        return out

    def vnni_dot(
        self,
        acc: _Accumulators,
        i: int,
        j: int,
        weights: list[str],
        acts: list[tuple[str, str]],
        c: str,
        nb: int,
    ) -> None:
        f, lpb = self.f, self.p.lanes_per_block
        nl = nb * lpb
        a = acc.main.get(i, j)
        for pair, (w, (q, corr)) in enumerate(zip(weights, acts, strict=True)):
            blocks = [2 * pair, 2 * pair + 1] if 2 * pair + 1 < nb else [2 * pair]
            lanes = 8 * len(blocks)
            it, bt = _vec(lanes, "i32"), _vec(4 * lanes, "i8")
            name = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
            dot = f.intrinsic(it, name, [(it, corr), (bt, w), (bt, q)])
            ft = _vec(lanes, "float")
            df = f(f"sitofp {it} {dot} to {ft}", "df")
            cb = f(
                f"shufflevector {_vec(nl, 'float')} {c}, {_vec(nl, 'float')} poison, "
                f"{_mask([b * lpb for b in blocks for _ in range(8)])}",
                "cb",
            )
            if lanes == 16:
                a = f.intrinsic(ft, "llvm.fmuladd.v16f32", [(ft, df), (ft, cb), (ft, a)])
            else:  # the odd block: into the low half of the accumulator
                prod = f(f"fmul {ft} {df}, {cb}", "odd")
                wide = f(
                    f"shufflevector {ft} {prod}, {ft} zeroinitializer, {_mask(list(range(16)))}",
                    "odd",
                )
                a = f(f"fadd <16 x float> {a}, {wide}", "acc")
        if lpb == 2:  # q4_1: the odd lanes of c are the min terms
            if acc.mins is not None:
                acc.mins.add(i, j, c, nl)
            else:
                idx = [2 * b + 1 for b in range(nb)] + [nl] * (16 - nb)
                mins = f(
                    f"shufflevector {_vec(nl, 'float')} {c}, {_vec(nl, 'float')} zeroinitializer, {_mask(idx)}",
                    "m",
                )
                a = f(f"fadd <16 x float> {a}, {mins}", "acc")
        acc.main.set(i, j, a)

    # -- generic

    def block_bytes(self, row: str, b: str) -> str:
        """A block's 32 integer weights as <32 x i8> holding q_w (signed, exact)."""
        f, fmt = self.f, self.p.fmt.name
        raw = self.raw_block(row, b)
        if fmt == "q8_0":
            return raw
        lo = f(f"and <16 x i8> {raw}, splat (i8 15)", "lo")
        hi = f(f"lshr <16 x i8> {raw}, splat (i8 4)", "hi")
        q = f(f"shufflevector <16 x i8> {lo}, <16 x i8> {hi}, {_mask(list(range(32)))}", "wq")
        return f(f"sub <32 x i8> {q}, splat (i8 8)", "wq") if fmt == "q4_0" else q

    def generic_dot(
        self,
        acc: _Accumulators,
        i: int,
        j: int,
        weights: list[str],
        acts: list[str],
        c: str,
        nb: int,
    ) -> None:
        f, lpb = self.f, self.p.lanes_per_block
        nl = nb * lpb
        sums = "splat (float 1.0)" if lpb == 2 else "poison"
        for b, (w, q) in enumerate(zip(weights, acts, strict=True)):
            w32 = f(f"sext <32 x i8> {w} to <32 x i32>", "w32")
            q32 = f(f"sext <32 x i8> {q} to <32 x i32>", "x32")
            prod = f(f"mul nsw <32 x i32> {w32}, {q32}", "prod")
            s = f.intrinsic("i32", "llvm.vector.reduce.add.v32i32", [("<32 x i32>", prod)])
            sf = f(f"sitofp i32 {s} to float", "sf")
            sums = f(f"insertelement {_vec(nl, 'float')} {sums}, float {sf}, i64 {b * lpb}", "sums")
        acc.main.fma(i, j, c, sums, nl)


class _Sums:
    """One `<width x float>` accumulator per (row, token)."""

    def __init__(self, f: FunctionWriter, width: int, nrow: int, ntok: int, hint: str):
        self.f, self.width, self.ty = f, width, _vec(width, "float")
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
        t = _vec(n, "float")
        idx = list(range(n)) + [n] * (self.width - n)
        return self.f(f"shufflevector {t} {v}, {t} zeroinitializer, {_mask(idx)}", "wide")

    def add(self, i: int, j: int, v: str, n: int) -> None:
        self.set(i, j, self.f(f"fadd {self.ty} {self.get(i, j)}, {self.widen(v, n)}", "acc"))

    def fma(self, i: int, j: int, a: str, b: str, n: int) -> None:
        """acc += a*b (n lanes; fused when they fill the accumulator)."""
        t = _vec(n, "float")
        if n != self.width:
            self.add(i, j, self.f(f"fmul {t} {a}, {b}", "prod"), n)
            return
        self.set(
            i,
            j,
            self.f.intrinsic(t, f"llvm.fmuladd.v{n}f32", [(t, a), (t, b), (t, self.get(i, j))]),
        )

    def total(self, i: int, j: int, lanes: range | None = None) -> str:
        """The sum of the accumulator's lanes (of `lanes` only, when given)."""
        f, v = self.f, self.get(i, j)
        lanes = lanes or range(self.width)
        if len(lanes) != self.width:
            v = f(f"shufflevector {self.ty} {v}, {self.ty} poison, {_mask(list(lanes))}", "sel")
        t = _vec(len(lanes), "float")
        return f.intrinsic(
            "float",
            f"llvm.vector.reduce.fadd.v{len(lanes)}f32",
            [("float", "-0.0"), (t, v)],
            "reassoc",
        )


class _Accumulators:
    """`main`: the dot products' accumulators (16 lanes on VNNI, one lane per scale lane of
    a full step on the generic path); `mins`, q4_1 decode on VNNI only: the step's scale
    vectors summed whole, whose odd lanes are the min terms."""

    def __init__(self, f: FunctionWriter, p: Plan, nrow: int, ntok: int, nb: int):
        nl = nb * p.lanes_per_block
        self.main = _Sums(f, 16 if p.vnni else nl, nrow, ntok, "acc")
        self.mins = None
        if p.vnni and p.lanes_per_block == 2 and ntok == 1:
            self.mins = _Sums(f, nl, nrow, ntok, "accm")
        self.f = f

    def total(self, i: int, j: int) -> str:
        s = self.main.total(i, j)
        if self.mins is None:
            return s
        m = self.mins.total(i, j, range(1, self.mins.width, 2))
        return self.f(f"fadd float {s}, {m}", "tot")


def halves_to_floats(f: FunctionWriter, halves: str, n: int, f16c: bool) -> str:
    """<n x i16> f16 bit patterns as <n x float>: `fpext` with F16C, else the integer
    conversion of `common.half_to_float`, lane-wise (exact for every half)."""
    it, ft = _vec(n, "i32"), _vec(n, "float")
    if f16c:
        h = f(f"bitcast {_vec(n, 'i16')} {halves} to {_vec(n, 'half')}", "h")
        return f(f"fpext {_vec(n, 'half')} {h} to {ft}", "hf")
    h = f(f"zext {_vec(n, 'i16')} {halves} to {it}", "h")
    mag = f(f"shl {it} {f(f'and {it} {h}, splat (i32 32767)')}, splat (i32 13)", "mag")
    val = f(f"fmul {ft} {f(f'bitcast {it} {mag} to {ft}')}, splat (float {f32(2.0**112)})", "val")
    special = f(f"icmp uge {it} {mag}, splat (i32 {31 << 23})", "infnan")
    infnan = f(f"or {it} {mag}, splat (i32 {255 << 23})")
    bits = f(f"select <{n} x i1> {special}, {it} {infnan}, {it} {f(f'bitcast {ft} {val} to {it}')}")
    sign = f(f"shl {it} {f(f'and {it} {h}, splat (i32 32768)')}, splat (i32 16)", "sign")
    return f(f"bitcast {it} {f(f'or {it} {bits}, {sign}')} to {ft}", "hf")
