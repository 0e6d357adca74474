"""K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): 256-element super-blocks whose sub-blocks have
scales of their own (layouts in `ckeir.formats.K_LAYOUTS`).  What the kernels share: reading a
super-block's scales and a 32-element piece's integer quants (`SuperBlock`), the dequantized
values (the embedding table and the float-activation matmul), and `kqmatmul`, the
int8-activation matmul.

kqmatmul quantizes activations per 32 elements, as every other int8 path does (the numpy
oracle, `ckeir.quant`, and the reference backend state that rule once for every format), so
each 32-piece j of a super-block contributes

    d_x,j · (Σ_l q_w q_x · d·sc_j  -  dmin·m_j · Σ_l q_x)       Q4_K, Q5_K
    d_x,j · Σ_{16-halves h} (d·sc_h · Σ_l q_w q_x  -  dmin·m_h · Σ_l q_x)    Q2_K
    d_x,j · Σ_{16-halves h} d·sc_h · Σ_l q_w q_x                Q3_K, Q6_K (q_w less its zero)

with exact int32 sums; d·sc and dmin·m are the f32 products gguf's dequantization forms.  Per
piece, the products are summed in pairs (the shape LLVM lowers to `pmaddwd`), or, on VNNI
hosts, by one 256-bit `vpdpbusd` (Q6_K's and Q3_K's weights are offset to q ≥ 0 and the lanes
start from -zero·Σq_x, which the quantizer stored).  The dmin·m·σ terms of a super-block
(σ_j = d_x,j·Σq_x) are one 8-lane product.  On VNNI, Q2_K and Q3_K (2-3 bits a weight: a
super-block is little memory for much unpacking) keep each 16-element sub-block in one int32
lane across the super-block (`Plan.grouped`), so the float work is one product per super-block.

A step of two pieces takes both as one 64-byte operand (`SuperBlock.pair`); in decode each
super-block also prefetches the lines `common.PREFETCH` bytes ahead of it.

Work split: threads take disjoint output rows (multiples of 16).  Token rows are quantized a
batch at a time; each weight row is then swept by `TOKENS` token rows at a time (one in
decode), each token row summed in the same order whatever its group: a batched decode step
(`rowwise`) gets the bits of one row alone.  `chunk` restarts the reduction every `chunk`
elements (a multiple of 256, or 32, 64 or 128) and folds the chunk sums left to right, as
`qmatmul` does (see there).
"""

from __future__ import annotations

import attrs

from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import (
    FunctionWriter,
    Kernel,
    finish_kernel,
    half_to_float,
    kernel_writer,
    prefetch_ahead,
    quantize_block,
    scratch_layout,
    shuffle,
    splat,
    vec,
)
from ckeir.formats import FORMATS, K_LAYOUTS, QK_K, Format

QK = 32  # elements per activation block and per quants piece
PIECES = QK_K // QK  # 32-element pieces per super-block
TOKENS = 4  # token rows sharing each weight super-block in prefill
SCRATCH_BYTES = 96 * 1024  # per thread, on its stack
K_FORMATS = tuple(K_LAYOUTS)


class SuperBlock:
    """Reads super-blocks of one K-quant format."""

    def __init__(self, f: FunctionWriter, fmt: Format, f16c: bool):
        self.f, self.fmt, self.lay, self.f16c = f, fmt, K_LAYOUTS[fmt.name], f16c

    @property
    def scale_lanes(self) -> int:
        """Scales per super-block: 8 (Q4_K, Q5_K) or 16 (Q6_K)."""
        return QK_K // self.lay.sub

    @property
    def mins(self) -> bool:
        return self.lay.dmin is not None

    def scales(self, sb: str) -> tuple[str, str | None]:
        """(d·sc per sub-block, dmin·m per sub-block or None) as f32 vectors, each an f32
        product as gguf forms it."""
        f, lay = self.f, self.lay
        n = self.scale_lanes
        d = splat(f, "float", half_to_float(f, f.gep(sb, lay.d, "i8"), self.f16c), n)
        if self.fmt.name == "q2_k":  # sixteen bytes: 4-bit scale (low), 4-bit min (high)
            raw = f.load("<16 x i8>", f.gep(sb, lay.scales, "i8"), 1)
            sc = f(f"uitofp <16 x i8> {f(f'and <16 x i8> {raw}, splat (i8 15)')} to <16 x float>")
            m = f(f"uitofp <16 x i8> {f(f'lshr <16 x i8> {raw}, splat (i8 4)')} to <16 x float>")
            dmin = splat(f, "float", half_to_float(f, f.gep(sb, lay.dmin, "i8"), self.f16c), n)
            return f(f"fmul <16 x float> {d}, {sc}", "ds"), f(f"fmul <16 x float> {dmin}, {m}")
        if self.fmt.name == "q3_k":  # sixteen 6-bit scales, less 32
            scf = f(f"sitofp <16 x i8> {self.q3_scales(sb)} to <16 x float>", "sc")
            return f(f"fmul <16 x float> {d}, {scf}", "ds"), None
        if not self.mins:  # Q6_K: sixteen int8 scales
            sc = f.load("<16 x i8>", f.gep(sb, lay.scales, "i8"), 1)
            scf = f(f"sitofp <16 x i8> {sc} to <16 x float>", "sc")
            return f(f"fmul <16 x float> {d}, {scf}", "ds"), None
        raw = f.load("<12 x i8>", f.gep(sb, lay.scales, "i8"), 1)
        v4 = "<4 x i8>"
        dq, mq, mdq = (shuffle(f, "<12 x i8>", raw, "poison", range(i, i + 4)) for i in (0, 4, 8))

        def op(o: str, a: str, c: int) -> str:
            return f(f"{o} {v4} {a}, splat (i8 {c})")

        hi_sc = f(f"or {v4} {op('and', mdq, 15)}, {op('and', op('lshr', dq, 2), 48)}")
        hi_m = f(f"or {v4} {op('lshr', mdq, 4)}, {op('and', op('lshr', mq, 2), 48)}")
        sc = shuffle(f, v4, op("and", dq, 63), hi_sc, range(8), "sc")
        m = shuffle(f, v4, op("and", mq, 63), hi_m, range(8), "m")
        dmin = splat(f, "float", half_to_float(f, f.gep(sb, lay.dmin, "i8"), self.f16c), 8)
        ds = f(f"fmul <8 x float> {d}, {f(f'uitofp <8 x i8> {sc} to <8 x float>')}", "ds")
        dm = f(f"fmul <8 x float> {dmin}, {f(f'uitofp <8 x i8> {m} to <8 x float>')}", "dm")
        return ds, dm

    def q3_scales(self, sb: str) -> str:
        """Q3_K's sixteen scales as signed <16 x i8> (sc - 32): scale i's low nibble is byte
        i mod 8's low (i < 8) or high nibble, its high pair bits 2(i div 4) of byte 8 + i mod
        4."""
        f, v = self.f, "<16 x i8>"
        raw = f.load("<12 x i8>", f.gep(sb, self.lay.scales, "i8"), 1)
        lo8 = shuffle(f, "<12 x i8>", raw, "poison", range(8))
        lo = shuffle(
            f,
            "<8 x i8>",
            f(f"and <8 x i8> {lo8}, splat (i8 15)"),
            f(f"lshr <8 x i8> {lo8}, splat (i8 4)"),
            range(16),
        )
        hi = shuffle(f, "<12 x i8>", raw, "poison", [8 + i % 4 for i in range(16)])
        shifts = "<" + ", ".join(f"i8 {2 * (i // 4)}" for i in range(16)) + ">"
        hi = f(f"and {v} {f(f'lshr {v} {hi}, {shifts}')}, splat (i8 3)")
        sc = f(f"or {v} {lo}, {f(f'shl {v} {hi}, splat (i8 4)')}")
        return f(f"sub {v} {sc}, splat (i8 32)", "sc3")

    def quants(self, sb: str, j: int, offset: bool = True) -> str:
        """Piece j's 32 quants as <32 x i8>: Q4_K 0..15, Q5_K 0..31, Q6_K q - 32, Q3_K q - 4
        (without `offset`: Q6_K's q, 0..63, Q3_K's, 0..7)."""
        return self.pieces(sb, j, 1, offset)

    def pair(self, sb: str, j: int, offset: bool = True) -> str:
        """Pieces j and j+1 (j even) as one <64 x i8>, as `quants` gives each."""
        return self.pieces(sb, j, 2, offset)

    def pieces(self, sb: str, j: int, n: int, offset: bool) -> str:
        """Pieces j..j+n-1 (n = 1, or 2 from an even j) as <32n x i8>.  A pair's bytes are
        one load (its pieces share their packed bytes, or lie side by side: Q6_K's), and
        each piece's bit field is one 16-bit shift (by each half's own count) and one byte
        mask: no extraction per piece and insertion of the two."""
        f, lay, name = self.f, self.lay, self.fmt.name
        b = vec(QK * n, "i8")

        def load(at: int, side_by_side: bool = False) -> str:  # each piece's 32 bytes
            if n == 1 or side_by_side:
                return f.load(b, f.gep(sb, at, "i8"), 1)
            v = f.load("<32 x i8>", f.gep(sb, at, "i8"), 1)
            return shuffle(f, "<32 x i8>", v, "poison", [*range(32), *range(32)], "two")

        def field(v: str, shift, mask: int) -> str:
            """(byte >> shift(piece)) & mask: 16-bit shifts, whose bits from the next
            byte the mask clears."""
            counts = [shift(j + i) for i in range(n)]
            if any(counts):
                h = vec(16 * n, "i16")
                cv = "<" + ", ".join(f"i16 {counts[i // 16]}" for i in range(16 * n)) + ">"
                w = f(f"lshr {h} {f(f'bitcast {b} {v} to {h}')}, {cv}")
                v = f(f"bitcast {h} {w} to {b}")
            return f(f"and {b} {v}, splat (i8 {mask})", "fld")

        def with_high(q: str, hi: str, at: int, hint: str) -> str:
            return f(f"or {b} {q}, {f(f'shl {b} {hi}, splat (i8 {at})')}", hint)

        if name in ("q2_k", "q3_k"):  # 2-bit pairs of 128-halves (Q3_K: a third bit)
            q = field(load(lay.qs + QK * (j // 4)), lambda i: 2 * (i % 4), 3)
            if name == "q2_k":
                return q
            q = with_high(q, field(load(lay.qh), lambda i: i, 1), 2, "q3")
            return f(f"sub {b} {q}, splat (i8 4)", "q3") if offset else q
        if self.mins:  # Q4_K, Q5_K: the pair of pieces 2i, 2i+1 shares 32 bytes
            q = field(load(lay.qs + QK * (j // 2)), lambda i: 4 * (i % 2), 15)
            if lay.qh is not None:
                q = with_high(q, field(load(lay.qh), lambda i: i, 1), 4, "q5")
            return q
        # Q6_K: 128-element halves; parts p, p+1 (p even) of a half are 64 bytes side by side
        half, part = divmod(j, 4)
        ql = load(lay.qs + 64 * half + QK * (part % 2), side_by_side=True)
        lo = field(ql, lambda i: 4 * (i % 4 >= 2), 15)
        q = with_high(lo, field(load(lay.qh + QK * half), lambda i: 2 * (i % 4), 3), 4, "q6")
        return f(f"sub {b} {q}, splat (i8 32)", "q6") if offset else q

    def values(self, sb: str, j: int, scales: tuple[str, str | None]) -> str:
        """Piece j dequantized as <32 x float>, bit-exact with `gguf.quants`: (d·sc)·q -
        dmin·m, or (d·scale)·(q - 32)."""
        f, v = self.f, "<32 x float>"
        ds, dm = scales
        q = f(f"{'uitofp' if self.mins else 'sitofp'} <32 x i8> {self.quants(sb, j)} to {v}")
        st = vec(self.scale_lanes, "float")
        idx = [j] * 32 if self.scale_lanes == 8 else [2 * j] * 16 + [2 * j + 1] * 16
        y = f(f"fmul {v} {q}, {shuffle(f, st, ds, 'poison', idx, 's')}", "x")
        if self.mins:
            y = f(f"fsub {v} {y}, {shuffle(f, st, dm, 'poison', idx, 'm')}", "x")
        return y


def kembed(fmt: str, vocab: int, dim: int, host: HostCPU) -> Kernel:
    """Kernel (ids: i32[n], table: [V, D/256 super-blocks], out: f32[n, D]); threads split
    each row's super-blocks."""
    q = FORMATS[fmt]
    row_bytes = q.row_bytes(dim)
    f16c = "f16c" in host.features
    f = kernel_writer(f"kembed_{fmt}_v{vocab}_d{dim}{'' if f16c else '_sw16'}", 3)
    blocks = SuperBlock(f, q, f16c)
    lo, hi = f.share(dim // QK_K, 1)
    with f.loop(0, "%n", 1, "t") as t:
        row = f(f"sext i32 {f.load('i32', f.gep('%a0', t, 'i32'))} to i64", "id")
        src = f.gep("%a1", f.mul(row, row_bytes), "i8")
        dst = f.gep("%a2", f.mul(t, dim))
        with f.loop(lo, hi, 1, "s") as s:
            sb = f.gep(src, f.mul(s, q.block_bytes), "i8")
            scales = blocks.scales(sb)
            for j in range(PIECES):
                out = f.gep(dst, f.add(f.mul(s, QK_K), QK * j))
                f.store("<32 x float>", blocks.values(sb, j, scales), out)
    return finish_kernel(f, ("ids", "table", "out"))


# ---- kqmatmul -----------------------------------------------------------------------------


@attrs.frozen
class Plan:
    fmt: Format
    k: int
    vnni: bool
    f16c: bool
    batch: int  # token rows quantized at once
    chunk: int = 0
    separate: bool = False
    rowwise: bool = False
    gfni: bool = False  # the host has GF(2) affine byte transforms (`grouped` bit fields)

    @property
    def blocks(self) -> int:
        return self.k // QK

    @property
    def step(self) -> int:
        """Pieces per dot product: two on VNNI (one 512-bit `vpdpbusd`), unless a chunk is a
        single piece."""
        return 2 if self.vnni and (not self.chunk or self.chunk >= 2 * QK) else 1

    @property
    def grouped(self) -> bool:
        """VNNI on Q2_K and Q3_K over whole super-blocks (no chunk, or chunks of them): each
        int32 lane of one `vpdpbusd` chain sums one 16-element sub-block over the super-block's
        four steps, so its scale is one float product per super-block, not one per step.  The
        activations are stored in that order (`quantize`); the weights' 2-bit fields are
        gathered into it by one dword permute per step, their bit fields sit at the same place
        in every dword they gather."""
        return (
            self.vnni
            and self.fmt.name in ("q2_k", "q3_k")
            and (not self.chunk or self.chunk % QK_K == 0)
        )

    @property
    def accumulators(self) -> int:
        """Accumulators per token row, taking the steps of a super-block in turn: four
        independent FMA chains on VNNI (one left the super-block latency-bound), two on the
        narrower vectors, one when `grouped` (one FMA per super-block); the same count
        whatever the token group (rowwise bits)."""
        return 1 if self.grouped else 4 if self.vnni else 2

    @property
    def lanes(self) -> int:
        """Float lanes of a step's partial sums: 8 per piece on VNNI, else 16 (pairs)."""
        return 8 * self.step if self.vnni else 16

    @property
    def corrected(self) -> bool:
        """VNNI on Q6_K, Q3_K: the weights offset to q ≥ 0, each lane starting from
        -zero·Σq_x."""
        return self.vnni and K_LAYOUTS[self.fmt.name].dmin is None

    @property
    def sigmas(self) -> int:
        """σ per piece: one (d_x·Σq_x), or Q2_K's two (each 16-half's, for its mins)."""
        return 2 if self.fmt.name == "q2_k" else 1

    def offsets(self) -> dict[str, int]:
        """One token's scratch: q_x, d_x per piece, σ = d_x·Σq_x per piece, VNNI Q6_K's lane
        corrections (8 i32 per piece; `grouped` Q3_K: 2, one per sub-block), `grouped` d_x per
        sub-block, and the `stride` between tokens."""
        b = self.blocks
        sizes = {
            "q": QK * b,
            "dx": 4 * b,
            "sigma": 4 * b * self.sigmas,
            "corr": 32 * b if self.corrected else 0,
            "dxx": 8 * b if self.grouped else 0,  # d_x per sub-block: 16 floats a super-block
        }
        return scratch_layout(sizes)


def plan(
    fmt: str,
    k: int,
    host: HostCPU,
    chunk: int = 0,
    separate: bool = False,
    rowwise: bool = False,
) -> Plan:
    if fmt not in K_FORMATS:
        raise ValueError(f"kqmatmul: no kernel for {fmt} weights (have {', '.join(K_FORMATS)})")
    if k % QK_K:
        raise ValueError(f"kqmatmul {fmt}: K={k} must be a multiple of {QK_K}")
    if chunk and (k % chunk or not (chunk % QK_K == 0 or QK_K % chunk == 0 and chunk % QK == 0)):
        raise ValueError(
            f"kqmatmul {fmt}: k_chunk {chunk} must divide K={k} and be a multiple of {QK_K} "
            f"or one of 32, 64, 128"
        )
    vnni = host.has_vnni and {"avx512vl", "avx512bw", "f16c"} <= host.features
    probe = Plan(
        FORMATS[fmt],
        k,
        vnni,
        "f16c" in host.features,
        1,
        chunk,
        separate,
        rowwise,
        "gfni" in host.features,
    )
    per = SCRATCH_BYTES // probe.offsets()["stride"]
    return attrs.evolve(probe, batch=max(TOKENS, min(32, per) // TOKENS * TOKENS))


def kqmatmul(
    fmt: str,
    n_out: int,
    k: int,
    host: HostCPU,
    chunk: int = 0,
    separate: bool = False,
    rowwise: bool = False,
) -> Kernel:
    """Kernel (x: f32[n, K], w: [N, K/256 super-blocks], out: f32[n, N]; with `separate`,
    f32[chunks, n, N])."""
    p = plan(fmt, k, host, chunk, separate, rowwise)
    how = f"_c{p.chunk}{'s' if p.separate else ''}" if p.chunk else ""
    how += "_rw" if p.rowwise else ""
    path = "vnni" if p.vnni else f"v{host.vector_width}"
    path += "_gf" if p.grouped and p.gfni else ""
    f = kernel_writer(f"kqmatmul_{fmt}_n{n_out}_k{k}{how}_{path}", 3)
    _KWriter(f, p, n_out).body()
    return finish_kernel(f, ("x", "w", "out"))


class _KWriter:
    def __init__(self, f: FunctionWriter, p: Plan, n_out: int):
        self.f, self.p, self.n_out = f, p, n_out
        self.at = p.offsets()
        self.stride = self.at["stride"]
        self.scratch = f.var(f"[{p.batch * self.stride} x i8]", hint="scratch", align=64).ptr
        self.sb = SuperBlock(f, p.fmt, p.f16c)
        self.row_bytes = p.fmt.row_bytes(p.k)

    def body(self) -> None:
        f, p = self.f, self.p
        lo, hi = f.share(self.n_out, 16)
        with f.if_(f(f"icmp slt i64 {lo}, {hi}", "mine")):
            with f.loop(0, "%n", p.batch, "tg") as tg:
                ng = f.min(p.batch, f.sub("%n", tg))
                with f.loop(0, ng, 1, "qt") as j:
                    self.quantize(f.gep("%a0", f.mul(f.add(tg, j), p.k)), self.token(j))
                with f.loop(lo, hi, 1, "r") as r:
                    tfull = f.round_down(0, ng, TOKENS)
                    with f.loop(0, tfull, TOKENS, "t") as t:
                        self.dots(r, tg, t, TOKENS)
                    with f.loop(tfull, ng, 1, "t") as t:
                        self.dots(r, tg, t, 1)

    def token(self, j) -> str:
        return self.f.gep(self.scratch, self.f.mul(j, self.stride), "i8")

    def region(self, tok: str, name: str, b, per: int) -> str:
        f = self.f
        return f.gep(tok, f.add(self.at[name], f.mul(b, per)), "i8")

    def quantize(self, x: str, s: str) -> None:
        f, p = self.f, self.p
        zero = K_LAYOUTS[p.fmt.name].zero
        with f.loop(0, p.blocks, 1, "qb") as b:
            q, q32, d = quantize_block(f, x, b)
            f.store("<32 x i8>", q, f.gep(s, f.mul(b, QK), "i8"), 16)
            f.store("float", d, self.region(s, "dx", b, 4))
            halves = None  # Σq_x per 16-element sub-block: Q2_K's σ, grouped Q3_K's lanes
            if p.sigmas == 2 or (p.corrected and p.grouped):
                halves = [
                    _sum(f, shuffle(f, "<32 x i32>", q32, "poison", range(h, h + 16)), 16)
                    for h in (0, 16)
                ]
            for h, qsum in enumerate(halves if p.sigmas == 2 else [_sum(f, q32, 32)]):
                sigma = f(f"fmul float {d}, {f(f'sitofp i32 {qsum} to float')}", "sigma")
                at = f.add(f.mul(b, p.sigmas), h)
                f.store("float", sigma, self.region(s, "sigma", at, 4))
            if p.corrected and p.grouped:  # each sub-block's lane starts from -zero·Σq_x
                two = f(f"insertelement <2 x i32> poison, i32 {halves[0]}, i64 0")
                two = f(f"insertelement <2 x i32> {two}, i32 {halves[1]}, i64 1")
                corr = f(f"mul <2 x i32> {two}, splat (i32 -{zero})", "corr")
                f.store("<2 x i32>", corr, self.region(s, "corr", b, 8), 8)
            elif p.corrected:  # lane l of vpdpbusd multiplies elements 4l..4l+3
                parts = [shuffle(f, "<32 x i32>", q32, "poison", range(i, 32, 4)) for i in range(4)]
                a = f(f"add <8 x i32> {parts[0]}, {parts[1]}")
                c = f(f"add <8 x i32> {parts[2]}, {parts[3]}")
                corr = f(f"mul <8 x i32> {f(f'add <8 x i32> {a}, {c}')}, splat (i32 -{zero})")
                f.store("<8 x i32>", corr, self.region(s, "corr", b, 32), 16)
        if p.grouped:  # step t's lane g: elements 16g + 4t .. 16g + 4t + 3 of the super-block
            v = "<64 x i32>"
            with f.loop(0, p.k // QK_K, 1, "qp") as sbi:
                at = f.gep(s, f.mul(sbi, QK_K), "i8")
                order = [4 * g + t for t in range(4) for g in range(16)]
                f.store(v, shuffle(f, v, f.load(v, at, 16), "poison", order, "qg"), at, 16)
                b0 = f.mul(sbi, PIECES)
                dx = f.load("<8 x float>", self.region(s, "dx", b0, 4), 4)
                dxx = shuffle(f, "<8 x float>", dx, "poison", [i // 2 for i in range(16)], "dxx")
                f.store("<16 x float>", dxx, self.region(s, "dxx", b0, 8), 16)

    # -- one weight row against `ntok` token rows

    def dots(self, r: str, tg: str, t: str, ntok: int) -> None:
        f, p = self.f, self.p
        row = f.gep("%a1", f.mul(r, self.row_bytes), "i8")
        toks = [self.token(f.add(t, j)) for j in range(ntok)]
        lt = vec(p.lanes, "float")
        acc = [[f.var(lt, "zeroinitializer", "acc") for _ in range(p.accumulators)] for _ in toks]
        fold = [f.var("float", "-0.0", "fold") for _ in toks] if p.chunk else None
        nsb = p.k // QK_K
        chunk_pieces = (p.chunk or p.k) // QK

        def end_chunk(c) -> None:
            for j, a in enumerate(acc):
                total = self.total(a)
                for v in a:
                    f.set(v, "zeroinitializer")
                if p.separate:
                    out = f.gep("%a2", f.mul(f.mul(c, "%n"), self.n_out))
                    out = f.gep(out, f.add(f.mul(f.add(f.add(tg, t), j), self.n_out), r))
                    f.store("float", total, out)
                else:
                    f.set(fold[j], f(f"fadd float {f.get(fold[j])}, {total}", "fold"))

        if chunk_pieces >= PIECES:  # whole super-blocks per chunk
            per = chunk_pieces // PIECES
            with f.loop(0, nsb // per, 1, "kc") as c:
                with f.loop(0, per, 1, "ks") as i:
                    self.super_block(row, f.add(f.mul(c, per), i), toks, acc, [])
                if p.chunk:
                    end_chunk(c)
        else:
            ends = list(range(chunk_pieces - 1, PIECES, chunk_pieces))
            parts = PIECES // chunk_pieces
            with f.loop(0, nsb, 1, "ks") as s:
                self.super_block(
                    row, s, toks, acc, ends, lambda q: end_chunk(f.add(f.mul(s, parts), q))
                )
        for j, a in enumerate(acc):
            if fold is None:
                total = self.total(a)
            elif p.separate:
                continue
            else:
                total = f.get(fold[j])
            out = f.gep("%a2", f.add(f.mul(f.add(f.add(tg, t), j), self.n_out), r))
            f.store("float", total, out)

    def super_block(self, row: str, s, toks: list[str], acc, ends: list[int], at_end=None):
        """Super-block s of the row into the tokens' accumulators; after piece e in `ends`,
        its min terms are in and `at_end(its index in ends)` runs."""
        f, p, blocks = self.f, self.p, self.sb
        sb = f.gep(row, f.mul(s, p.fmt.block_bytes), "i8")
        if len(toks) == 1:
            prefetch_ahead(f, sb, p.fmt.block_bytes)
        ds, dm = blocks.scales(sb)
        b0 = f.mul(s, PIECES)
        if p.grouped:
            return self.grouped_block(sb, b0, toks, acc, ds, dm)
        cs, mins = [], []
        for tok in toks:
            dx = f.load("<8 x float>", self.region(tok, "dx", b0, 4), 4)
            if blocks.scale_lanes == 8:
                cs.append(f(f"fmul <8 x float> {ds}, {dx}", "c"))
            else:  # 16 scales: piece j's two halves take d_x,j each
                dxx = shuffle(f, "<8 x float>", dx, "poison", [i // 2 for i in range(16)])
                cs.append(f(f"fmul <16 x float> {ds}, {dxx}", "c"))
            if blocks.mins and blocks.scale_lanes == 8:
                sig = f.load("<8 x float>", self.region(tok, "sigma", b0, 4), 4)
                mins.append(f(f"fmul <8 x float> {dm}, {sig}", "mt"))
            elif blocks.mins:  # Q2_K: min terms per 16, added in pairs to one per piece
                sig = f.load("<16 x float>", self.region(tok, "sigma", f.mul(b0, 2), 4), 4)
                m16 = f(f"fmul <16 x float> {dm}, {sig}", "mt")
                even, odd = (
                    shuffle(f, "<16 x float>", m16, "poison", range(i, 16, 2)) for i in (0, 1)
                )
                mins.append(f(f"fadd <8 x float> {even}, {odd}", "mt"))
        start, step = 0, p.step
        bt = vec(QK * step, "i8")
        for j0 in range(0, PIECES, step):
            if step == 2:
                w = blocks.pair(sb, j0, offset=not p.corrected)
            else:
                w = blocks.quants(sb, j0, offset=not p.corrected)
            for k, tok in enumerate(toks):
                x = f.load(bt, f.gep(tok, f.mul(f.add(b0, j0), QK), "i8"), 16)
                lanes = self.dot(w, x, tok, f.add(b0, j0))
                a = acc[k][j0 // step % p.accumulators]
                f.set(a, self.fma(a, lanes, self.piece_scale(cs[k], j0)))
            j = j0 + step - 1
            if j in ends or (not ends and j == PIECES - 1):
                if mins:  # minus the min terms of pieces start..j
                    for k in range(len(toks)):
                        idx = [i if start <= i <= j else 8 for i in range(p.lanes)]
                        m = shuffle(f, "<8 x float>", mins[k], "zeroinitializer", idx, "mins")
                        lt = vec(p.lanes, "float")
                        f.set(acc[k][0], f(f"fsub {lt} {f.get(acc[k][0])}, {m}", "acc"))
                if at_end is not None:
                    at_end(ends.index(j))
                start = j + 1

    def grouped_block(self, sb: str, b0, toks: list[str], acc, ds: str, dm: str | None):
        """A `grouped` super-block: per step t, lane g takes bytes 4t..4t+3 of sub-block g,
        whose 16 bytes of 2-bit fields are quarter g mod 2 of its 128-half's 32 bytes, at bit
        2·((g mod 8) div 2); Q3_K's third bits are bit 4·(g div 8) + (g mod 8) div 2 of the
        same bytes of the 32-byte mask.  The int32 lanes (Q3_K's from -4·Σq_x) are each
        sub-block's exact Σ q_w q_x, scaled once by d·sc_g·d_x and, Q2_K, less its min term."""
        f, lay, q3 = self.f, self.sb.lay, self.p.fmt.name == "q3_k"
        i16, b64, f16 = "<16 x i32>", "<64 x i8>", "<16 x float>"
        qs = f.load(i16, f.gep(sb, lay.qs, "i8"), 1)
        hm = f.load("<8 x i32>", f.gep(sb, lay.qh, "i8"), 1) if q3 else None

        sums = []
        for tok in toks:
            init = "zeroinitializer"
            if q3:
                init = f.load(i16, self.region(tok, "corr", b0, 8), 16)
            sums.append(init)
        for t in range(4):
            lo = shuffle(f, i16, qs, "poison", [8 * (g // 8) + 4 * (g % 2) + t for g in range(16)])
            w = self.bit_field(lo, [2 * (g % 8 // 2) for g in range(16)], 2, 0)
            if q3:
                hi = shuffle(f, "<8 x i32>", hm, "poison", [4 * (g % 2) + t for g in range(16)])
                hi = self.bit_field(hi, [4 * (g // 8) + g % 8 // 2 for g in range(16)], 1, 2)
                w = f(f"or {b64} {w}, {hi}", "q3")
            for k, tok in enumerate(toks):
                x = f.load(b64, f.gep(tok, f.add(f.mul(b0, QK), 64 * t), "i8"), 16)
                args = [(i16, sums[k]), (b64, w), (b64, x)]
                sums[k] = f.intrinsic(i16, "llvm.x86.avx512.vpdpbusd.512", args)
        ndm = f(f"fneg {f16} {dm}", "ndm") if dm is not None else None
        for k, tok in enumerate(toks):
            a = acc[k][0]
            c = f(f"fmul {f16} {ds}, {f.load(f16, self.region(tok, 'dxx', b0, 8), 16)}", "c")
            lanes = f(f"sitofp {i16} {sums[k]} to {f16}", "df")
            f.set(a, self.fmadd(lanes, c, f.get(a)))
            if ndm is not None:  # less dmin·m_g · d_x·Σq_x
                sig = f.load(f16, self.region(tok, "sigma", f.mul(b0, 2), 4), 4)
                f.set(a, self.fmadd(ndm, sig, f.get(a)))

    def fmadd(self, a: str, b: str, c: str) -> str:
        """a·b + c on <16 x float>."""
        t = "<16 x float>"
        return self.f.intrinsic(t, "llvm.fmuladd.v16f32", [(t, a), (t, b), (t, c)])

    def bit_field(self, v: str, first: list[int], width: int, at: int) -> str:
        """Each byte of dword lane g of `v` (<16 x i32>): its bits first[g] .. first[g] +
        width - 1, moved to bit `at`, the rest clear (<64 x i8>).  With GFNI one affine byte
        transform (a bit matrix per qword: lanes 2i, 2i+1 share their `first`); else a
        per-lane rotate and a mask."""
        f, i16, b64 = self.f, "<16 x i32>", "<64 x i8>"
        mask = ((1 << width) - 1) << at
        if self.p.gfni and all(first[2 * i] == first[2 * i + 1] for i in range(8)):
            # output bit o of a byte is the parity of (matrix byte 7 - o) & input byte
            qwords = [
                sum((1 << (first[2 * i] + o - at)) << (8 * (7 - o)) for o in range(at, at + width))
                for i in range(8)
            ]
            m = "<" + ", ".join(f"i64 {q - (1 << 64) if q >= 1 << 63 else q}" for q in qwords) + ">"
            matrix = f(f"bitcast <8 x i64> {m} to {b64}", "gf")
            x = f(f"bitcast {i16} {v} to {b64}")
            args = [(b64, x), (b64, matrix), ("i8", "0")]
            return f.intrinsic(b64, "llvm.x86.vgf2p8affineqb.512", args)
        rot = "<" + ", ".join(f"i32 {(at - s) % 32}" for s in first) + ">"
        v = f.intrinsic(i16, "llvm.fshl.v16i32", [(i16, v), (i16, v), (i16, rot)])
        return f(f"and {b64} {f(f'bitcast {i16} {v} to {b64}')}, splat (i8 {mask})", "fld")

    def total(self, accs: list) -> str:
        """A token's accumulators summed: pairwise, then the lanes in a halving tree."""
        f, lt = self.f, vec(self.p.lanes, "float")
        vs = [f.get(a) for a in accs]
        while len(vs) > 1:
            vs = [f(f"fadd {lt} {a}, {b}", "t") for a, b in zip(vs[::2], vs[1::2], strict=True)]
        return _lane_sum(f, vs[0], self.p.lanes)

    def piece_scale(self, c: str, j: int) -> str:
        """The scale of each lane of the step from piece j: its sub-block's c (Q6_K: the
        first half of a piece's lanes its first 16 elements')."""
        f, n = self.f, self.p.lanes
        per = n // self.p.step  # lanes per piece
        if self.sb.scale_lanes == 8:
            return shuffle(f, "<8 x float>", c, "poison", [j + i // per for i in range(n)], "cj")
        idx = [2 * j + i // (per // 2) for i in range(n)]
        return shuffle(f, "<16 x float>", c, "poison", idx, "cj")

    def fma(self, acc, lanes: str, c: str) -> str:
        f, n = self.f, self.p.lanes
        t = vec(n, "float")
        return f.intrinsic(t, f"llvm.fmuladd.v{n}f32", [(t, lanes), (t, c), (t, f.get(acc))])

    def dot(self, w: str, x: str, tok: str, b) -> str:
        """Σ q_w q_x of the step's pieces from b as float lanes, each piece's in lanes of its
        own, the first half of them its first 16 elements."""
        f = self.f
        if self.p.vnni:
            n, bits = self.p.lanes, 32 * self.p.lanes
            it, bt = vec(n, "i32"), vec(4 * n, "i8")
            init = "zeroinitializer"
            if self.p.corrected:
                init = f.load(it, self.region(tok, "corr", b, 32), 16)
            fn = f"llvm.x86.avx512.vpdpbusd.{bits}"
            s = f.intrinsic(it, fn, [(it, init), (bt, w), (bt, x)])
            return f(f"sitofp {it} {s} to {vec(n, 'float')}", "df")
        w32 = f(f"sext <32 x i8> {w} to <32 x i32>", "w32")
        x32 = f(f"sext <32 x i8> {x} to <32 x i32>", "x32")
        prod = f(f"mul nsw <32 x i32> {w32}, {x32}", "prod")
        even, odd = (shuffle(f, "<32 x i32>", prod, "poison", range(i, 32, 2)) for i in (0, 1))
        pairs = f(f"add nsw <16 x i32> {even}, {odd}", "pairs")
        return f(f"sitofp <16 x i32> {pairs} to <16 x float>", "df")


def _sum(f: FunctionWriter, v: str, n: int) -> str:
    """The lanes of an `<n x i32>` summed."""
    return f.intrinsic("i32", f"llvm.vector.reduce.add.v{n}i32", [(f"<{n} x i32>", v)])


def _lane_sum(f: FunctionWriter, v: str, n: int) -> str:
    """The lanes of an n-lane vector summed in a halving tree (a fixed order)."""
    while n > 1:
        half = n // 2
        t = vec(n, "float")
        lo = shuffle(f, t, v, "poison", range(half), "h")
        hi = shuffle(f, t, v, "poison", range(half, n), "h")
        v, n = f(f"fadd <{half} x float> {lo}, {hi}", "hs"), half
    return f(f"extractelement <1 x float> {v}, i64 0", "sum")
