"""The kernels of a batched decode step (issue 13): every row is one sequence's next token at
its own position in its own cache slot, and must get the bits that sequence's one-row
decode gets — the matmuls summed per row in the one-row order (`rowwise`), rope at each
row's position, the KV store and attention in each row's slot, argmax per row.  Each is
checked row by row against the one-row kernel, on 1 and 2 threads, and against numpy."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from isa_pairs import rotated

from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import (
    argmax,
    argmax_rows,
    entry_ctx,
    kernel_entry_ir,
    kv_store_rows,
    module_ir,
    rope,
)
from ckeir.backends.llvm.kernels.attention import (
    MAX_CHUNKS,
    attention_combine,
    attention_parts,
    attention_rows_combine,
    attention_rows_parts,
    rows_scratch_bytes,
    scratch_bytes,
    split,
)
from ckeir.backends.llvm.kernels.matmul import matmul
from ckeir.backends.llvm.kernels.quant_matmul import qmatmul
from ckeir.backends.reference import SEMANTICS
from ckeir.runtime.weights import quantize_rows


def one_row_each(run_kernel, host, kernel, x: np.ndarray, arrays, out_cols: int) -> np.ndarray:
    """The kernel called on each row of x alone (pos 0): the one-row results, stacked."""
    rows = []
    for t in range(x.shape[0]):
        out = np.full((1, out_cols), np.nan, np.float32)
        run_kernel(kernel, host, [np.ascontiguousarray(x[t : t + 1]), *arrays, out], 1)
        rows.append(out[0])
    return np.stack(rows)


# chunk 0 twice: with three ISA levels each format meets every level, each chunk every level
@pytest.mark.parametrize(
    "host,fmt,chunk",
    rotated(["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"], [0, 64, 0]),
    indirect=["host"],
)
def test_rowwise_qmatmul_gives_each_row_its_one_row_bits(host, run_kernel, fmt, chunk):
    """Without `rowwise`, rows in groups of 4 take prefill's order (d_x·q·d_w) and differ
    from the one-row GEMV (q·(d_w·d_x)) in the last bits; with it, every row of a call is
    the one-row call's, whichever part computed it and whatever group of rows it was in
    (9 rows: 4 + 4 + 1; 7: 4 + 2 + 1; 2: a pair)."""
    n_out, k = 80, 576
    rng = np.random.default_rng(len(fmt) + chunk)
    w = quantize_rows(rng.standard_normal((n_out, k), dtype=np.float32), fmt)
    x = rng.standard_normal((9, k), dtype=np.float32)
    alone = qmatmul(fmt, n_out, k, (64, k), host, chunk)
    want = one_row_each(run_kernel, host, alone, x, [w], n_out)
    kern = qmatmul(fmt, n_out, k, (64, k), host, chunk, rowwise=True)
    assert kern.name.endswith(("_rw_vnni", f"_rw_v{host.vector_width}"))
    for n in (9, 7, 2):
        for nth in (1, 2):
            out = np.full((n, n_out), np.nan, np.float32)
            run_kernel(kern, host, [np.ascontiguousarray(x[:n]), w, out], n, nth=nth)
            assert out.tobytes() == want[:n].tobytes()


def test_prefill_order_differs_from_the_one_row_order(run_kernel):
    """Why `rowwise` exists: on VNNI the multi-row path rounds differently."""
    from ckeir.backends.llvm.host import native_host

    host = native_host()
    if not host.has_vnni:
        pytest.skip("the prefill and decode orders differ on the VNNI path")
    n_out, k = 64, 576
    rng = np.random.default_rng(1)
    w = quantize_rows(rng.standard_normal((n_out, k), dtype=np.float32), "q4_1")
    x = rng.standard_normal((4, k), dtype=np.float32)
    kern = qmatmul("q4_1", n_out, k, (64, k), host)
    want = one_row_each(run_kernel, host, kern, x, [w], n_out)
    out = np.zeros((4, n_out), np.float32)
    run_kernel(kern, host, [x, w, out], 4)
    assert out.tobytes() != want.tobytes()
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16", "q8_0", "q4_1", "q5_0", "q5_1"])
def test_rowwise_float_matmul_gives_each_row_its_one_row_bits(host, run_kernel, fmt):
    """Float activations: the GEMM's tiles sum in another order than the GEMV; rowwise runs
    the GEMV per row over tiles of weight rows (100 rows: a ragged last tile)."""
    n_out, k = 100, 256
    rng = np.random.default_rng(7)
    w = rng.standard_normal((n_out, k), dtype=np.float32)
    w = w if fmt == "f32" else quantize_rows(w, fmt)
    x = rng.standard_normal((5, k), dtype=np.float32)
    want = one_row_each(run_kernel, host, matmul(n_out, k, (64, 256), host, fmt), x, [w], n_out)
    kern = matmul(n_out, k, (64, 256), host, fmt, rowwise=True)
    for nth in (1, 2):
        out = np.full((5, n_out), np.nan, np.float32)
        run_kernel(kern, host, [x, w, out], 5, nth=nth)
        assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("style", ["halves", "interleaved"])
def test_rope_per_row_positions(host, run_kernel, style):
    """Row t rotated at positions[t]: the bits of a one-row call at pos = positions[t]."""
    heads, hd = 3, 64
    positions = np.array([0, 517, 3, 3, 1999], np.int64)
    x = np.random.default_rng(2).standard_normal((5, heads * hd), dtype=np.float32)
    alone = rope(heads, hd, 10000.0, style, host)
    want = np.stack(
        [
            _rope_alone(run_kernel, host, alone, x[t : t + 1], int(p))
            for t, p in enumerate(positions)
        ]
    )
    kern = rope(heads, hd, 10000.0, style, host, per_row=True)
    assert kern.args == ("x", "positions", "out")
    for nth in (1, 2):
        out = np.full_like(x, np.nan)
        run_kernel(kern, host, [x, positions, out], 5, nth=nth)
        assert out.tobytes() == want.tobytes()


def _rope_alone(run_kernel, host, kern, x: np.ndarray, pos: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    run_kernel(kern, host, [np.ascontiguousarray(x), out], 1, pos=pos)
    return out[0]


def test_kv_store_rows_writes_each_row_in_its_slot(run_kernel):
    """Row t's k and v land at [slots[t], layer, positions[t]] and nowhere else."""
    from ckeir.backends.llvm.host import native_host

    host = native_host()
    slots_n, layers, context, kvd = 4, 3, 16, 32
    positions = np.array([5, 0, 15], np.int64)
    slots = np.array([2, 0, 3], np.int32)
    rng = np.random.default_rng(3)
    k, v = (rng.standard_normal((3, kvd), dtype=np.float32) for _ in range(2))
    for nth in (1, 2):
        kc, vc = (np.zeros((slots_n, layers, context, kvd), np.float32) for _ in range(2))
        layer = 1
        args = [k, v, positions, slots, kc[0, layer], vc[0, layer]]
        kern = kv_store_rows(kvd, layers, context, host)
        ctx = entry_ctx([a.ctypes.data for a in args], 3, 0)
        module = compile_ir(module_ir([kern, kernel_entry_ir(kern)]), host)
        run_kernel.pool(nth).run(module.address("entry"), ctypes.addressof(ctx))
        want_k, want_v = np.zeros_like(kc), np.zeros_like(vc)
        for t in range(3):
            want_k[slots[t], layer, positions[t]] = k[t]
            want_v[slots[t], layer, positions[t]] = v[t]
        assert (kc == want_k).all() and (vc == want_v).all()


def test_argmax_rows(run_kernel):
    """Every row's first index of its max (ties and a ragged vocabulary), as argmax gives the
    last row of a call."""
    from ckeir.backends.llvm.host import native_host

    host = native_host()
    vocab = 1000
    x = np.random.default_rng(4).standard_normal((6, vocab), dtype=np.float32)
    x[2, [7, 700]] = 50.0  # a tie: the first wins
    x[4, -1] = 60.0
    for nth in (1, 2):
        out = np.full(6, -1, np.int32)
        run_kernel(argmax_rows(vocab, host), host, [x, out], 6, nth=nth)
        assert out.tolist() == np.argmax(x, axis=1).tolist()
    one = np.full(1, -1, np.int32)
    run_kernel(argmax(vocab, host), host, [np.ascontiguousarray(x[2:3]), one], 1)
    assert one[0] == 7


# ---- attention ----------------------------------------------------------------------------

SLOTS, LAYERS, CONTEXT = 3, 2, 1200


class Attention:
    """The batched kernels and the one-row ones of one shape, compiled together."""

    def __init__(self, heads: int, kv_heads: int, hd: int, host):
        self.heads, self.kv_heads, self.hd, self.host = heads, kv_heads, hd, host
        kernels = {
            "rows_parts": attention_rows_parts(heads, kv_heads, hd, LAYERS, CONTEXT, host),
            "rows_combine": attention_rows_combine(heads, hd, host),
            "parts": attention_parts(heads, kv_heads, hd, CONTEXT, host),
            "combine": attention_combine(heads, hd, host),
        }
        entries = [kernel_entry_ir(k, name) for name, k in kernels.items()]
        self.module = compile_ir(module_ir([*kernels.values(), *entries]), host)

    def caches(self, seed: int):
        rng = np.random.default_rng(seed)
        shape = (SLOTS, LAYERS, CONTEXT, self.kv_heads * self.hd)
        return (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))

    def rows(self, pool, q, kc, vc, layer: int, positions, slots) -> np.ndarray:
        n = q.shape[0]
        out = np.full((n, self.heads * self.hd), np.nan, np.float32)
        partials = np.full(rows_scratch_bytes(self.heads, self.hd, n) // 4, np.nan, np.float32)
        positions, slots = np.asarray(positions, np.int64), np.asarray(slots, np.int32)
        kl, vl = kc[0, layer], vc[0, layer]  # slot 0's layer: the kernels offset by slot
        bufs = [q, kl, vl, positions, slots, partials, out]
        self._run(pool, "rows_parts", bufs, n, 0)
        self._run(pool, "rows_combine", [positions, partials, out], n, 0)
        return out

    def alone(self, pool, q_row, kc_layer, vc_layer, pos: int) -> np.ndarray:
        out = np.full((1, self.heads * self.hd), np.nan, np.float32)
        partials = np.full(scratch_bytes(self.heads, self.hd, 1) // 4, np.nan, np.float32)
        q_row = np.ascontiguousarray(q_row)
        self._run(pool, "parts", [q_row, kc_layer, vc_layer, partials, out], 1, pos)
        self._run(pool, "combine", [partials, out], 1, pos)
        return out[0]

    def _run(self, pool, entry: str, bufs, n: int, pos: int) -> None:
        ctx = entry_ctx([b.ctypes.data for b in bufs], n, pos)
        pool.run(self.module.address(entry), ctypes.addressof(ctx))


@pytest.fixture(scope="module")
def attention_kernels():
    cache: dict = {}

    def get(heads, kv_heads, hd, host) -> Attention:
        key = (heads, kv_heads, hd, host.isa)
        if key not in cache:
            cache[key] = Attention(heads, kv_heads, hd, host)
        return cache[key]

    return get


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 2), (8, 8)])
def test_attention_rows_each_row_in_its_slot_at_its_position(
    host, run_kernel, attention_kernels, assert_close, heads, kv_heads
):
    """Rows at positions of one chunk (0, 40) and of several (300, 1199), two rows in one
    slot's region at different positions: each row is the one-row call on its slot's cache
    at its position, bit for bit, on 1 and 2 threads; and the reference's attention."""
    a = attention_kernels(heads, kv_heads, 64, host)
    kc, vc = a.caches(heads)
    positions, slots, layer = [300, 0, 1199, 40, 64], [1, 0, 2, 0, 1], 1
    assert [split(p + 1, 1)[1] for p in positions] == [5, 1, 19, 1, 2]
    q = np.random.default_rng(5).standard_normal((5, heads * 64), dtype=np.float32)
    want = np.stack(
        [
            a.alone(run_kernel.pool(1), q[t : t + 1], kc[s, layer], vc[s, layer], p)
            for t, (p, s) in enumerate(zip(positions, slots, strict=True))
        ]
    )
    for nth in (1, 2):
        got = a.rows(run_kernel.pool(nth), q, kc, vc, layer, positions, slots)
        assert got.tobytes() == want.tobytes()
    for t, (p, s) in enumerate(zip(positions, slots, strict=True)):
        attrs = {"heads": heads, "kv_heads": kv_heads, "head_dim": 64, "layer": 0}
        k, v = kc[s, layer, p : p + 1], vc[s, layer, p : p + 1]
        cache = (kc[s, layer][None].copy(), vc[s, layer][None].copy())
        ref = SEMANTICS["cke.attention"]([q[t : t + 1], k, v, *cache, p], attrs, {})
        assert_close(got[t : t + 1], ref, np.abs(ref) + np.abs(vc[s, layer]).max() * 1e-2)


def test_attention_rows_scratch_holds_every_row_split():
    """Every row of a batched call may split into MAX_CHUNKS chunks."""
    assert rows_scratch_bytes(9, 64, 8) == 8 * 9 * MAX_CHUNKS * 80 * 4
