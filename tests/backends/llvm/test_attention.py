"""Attention split by keys (`attention_parts` + `attention_combine`) against the numpy
reference backend's attention, at contexts from 1 to 2048 keys, for grouped-query, multi-head
and wide heads; the same bits on 1 and 2 threads and with parts run in any order; the
partials a part leaves; and a model lowered with it against the reference backend."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import ckeir
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels import entry_ctx, kernel_entry_ir, module_ir
from ckeir.backends.llvm.kernels.attention import (
    attention_combine,
    attention_parts,
    scratch_bytes,
    split,
)
from ckeir.backends.reference import SEMANTICS
from ckeir.passes.manager import funcs

CAPACITY = 2048  # rows of the test's KV cache
HEADS = [(9, 3), (4, 2), (8, 8)]  # query heads, kv heads


class Split:
    """One shape's two kernels, compiled once, with entries `parts` and `combine`."""

    def __init__(self, heads: int, kv_heads: int, hd: int, host):
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        p = attention_parts(heads, kv_heads, hd, CAPACITY, host)
        c = attention_combine(heads, hd, host)
        text = module_ir([p, c, kernel_entry_ir(p, "parts"), kernel_entry_ir(c, "combine")])
        self.module = compile_ir(text, host)

    def buffers(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        kvd = self.kv_heads * self.hd
        q = rng.standard_normal((n, self.heads * self.hd), dtype=np.float32)
        kc = rng.standard_normal((CAPACITY, kvd), dtype=np.float32)
        vc = rng.standard_normal((CAPACITY, kvd), dtype=np.float32)
        return q, kc, vc

    def ctxs(self, q, kc, vc, partials, out, pos: int):
        n = q.shape[0]
        return (
            entry_ctx([a.ctypes.data for a in (q, kc, vc, partials, out)], n, pos),
            entry_ctx([partials.ctypes.data, out.ctypes.data], n, pos),
        )

    def scratch(self, n: int) -> np.ndarray:
        return np.full(scratch_bytes(self.heads, self.hd, n) // 4, np.nan, np.float32)

    def run(self, pool, q, kc, vc, pos: int) -> np.ndarray:
        """The output, the two kernels run on `pool` with a wait for every thread between."""
        out = np.full((q.shape[0], self.heads * self.hd), np.nan, np.float32)
        partials = self.scratch(q.shape[0])  # alive while the kernels run
        parts, combine = self.ctxs(q, kc, vc, partials, out, pos)
        pool.run(self.module.address("parts"), ctypes.addressof(parts))
        pool.run(self.module.address("combine"), ctypes.addressof(combine))
        return out

    def entry(self, name: str):
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)
        return proto(self.module.address(name))


@pytest.fixture(scope="module")
def compiled():
    cache: dict = {}

    def get(heads: int, kv_heads: int, hd: int, host) -> Split:
        key = (heads, kv_heads, hd, host.isa)
        if key not in cache:
            cache[key] = Split(heads, kv_heads, hd, host)
        return cache[key]

    return get


def reference(q, kc, vc, pos: int, heads: int, kv_heads: int, hd: int) -> np.ndarray:
    """The reference backend's cke.attention (its KV store rewrites the rows it reads)."""
    n = q.shape[0]
    k, v = kc[pos : pos + n], vc[pos : pos + n]
    attrs = {"heads": heads, "kv_heads": kv_heads, "head_dim": hd, "layer": 0}
    return SEMANTICS["cke.attention"]([q, k, v, kc[None].copy(), vc[None].copy(), pos], attrs, {})


@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("hd", [64, 128])
@pytest.mark.parametrize("keys", [1, 2, 31, 128, 1024, 2048])
def test_decode_matches_reference_on_1_and_2_threads(
    host, run_kernel, compiled, assert_close, heads, kv_heads, hd, keys
):
    s = compiled(heads, kv_heads, hd, host)
    q, kc, vc = s.buffers(1, seed=keys)
    one, two = (s.run(run_kernel.pool(t), q, kc, vc, keys - 1) for t in (1, 2))
    want = reference(q, kc, vc, keys - 1, heads, kv_heads, hd)
    assert_close(one, want, np.abs(want) + np.abs(vc[:keys]).max() * 1e-2)
    assert one.tobytes() == two.tobytes()  # chunks merged in one order, whoever ran them


@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("n,keys", [(3, 3), (3, 200), (4, 2048), (5, 300), (7, 1024)])
def test_rows_match_reference(host, run_kernel, compiled, assert_close, heads, kv_heads, n, keys):
    """Calls of several rows: split when there are few (row t's last chunk is shorter, or
    empty), one chunk per row in longer calls."""
    s = compiled(heads, kv_heads, 64, host)
    q, kc, vc = s.buffers(n, seed=n)
    one, two = (s.run(run_kernel.pool(t), q, kc, vc, keys - n) for t in (1, 2))
    want = reference(q, kc, vc, keys - n, heads, kv_heads, 64)
    assert_close(one, want, np.abs(want) + np.abs(vc[:keys]).max() * 1e-2)
    assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("parts", [2, 5, 64])
def test_parts_in_any_order_on_one_thread(run_kernel, compiled, parts):
    """The scheduler may hand any part to any thread, several to one, in any order: every
    part of both kernels run in a shuffled order on this thread gives the pool's bits."""
    from ckeir.backends.llvm.host import native_host

    s = compiled(9, 3, 64, native_host())
    q, kc, vc = s.buffers(1)
    want = s.run(run_kernel.pool(2), q, kc, vc, 1500)
    out = np.full_like(want, np.nan)
    partials = s.scratch(1)
    ctx = s.ctxs(q, kc, vc, partials, out, 1500)
    order = np.random.default_rng(parts).permutation(parts)
    for name, c in zip(("parts", "combine"), ctx, strict=True):
        fn = s.entry(name)
        for part in order:
            fn(ctypes.addressof(c), int(part), parts)
    assert out.tobytes() == want.tobytes()


def test_two_parts_share_the_chunks_of_three_kv_heads(compiled):
    """A decode row of 3 kv heads at 1024 keys: part 0 of 2 leaves the partials of half the
    (kv head, chunk) items — before the split it had 2 of the 3 items and part 1 had 1 —
    and each partial is its chunk's softmax state: max score m, Σ e**(s-m), Σ e**(s-m) v."""
    from ckeir.backends.llvm.host import native_host

    heads, kv_heads, hd, keys = 9, 3, 64, 1024
    s = compiled(heads, kv_heads, hd, native_host())
    q, kc, vc = s.buffers(1)
    partials = s.scratch(1)
    out = np.full((1, heads * hd), np.nan, np.float32)
    ctx, _ = s.ctxs(q, kc, vc, partials, out, keys - 1)
    s.entry("parts")(ctypes.addressof(ctx), 0, 2)
    span, count = split(keys, 1)
    block = -(-(hd + 2) // 16) * 16
    blocks = partials[: heads * count * block].reshape(heads, count, block)
    written = ~np.isnan(blocks[:, :, hd])
    assert count > 1 and written.sum() == heads * count // 2
    by_kv_head = written.reshape(kv_heads, heads // kv_heads, count)
    assert (by_kv_head == by_kv_head[:, :1]).all()  # one item serves a kv head's query heads
    for h, c in zip(*np.nonzero(written), strict=True):
        g = h // (heads // kv_heads)
        rows = slice(c * span, min((c + 1) * span, keys))
        scores = kc[rows, g * hd : (g + 1) * hd].astype(np.float64) @ q[0, h * hd : (h + 1) * hd]
        scores /= np.sqrt(hd)
        m = scores.max()
        p = np.exp(scores - m)
        np.testing.assert_allclose(blocks[h, c, hd], m, rtol=1e-5)
        np.testing.assert_allclose(blocks[h, c, hd + 1], p.sum(), rtol=1e-4)
        np.testing.assert_allclose(
            blocks[h, c, :hd], p @ vc[rows, g * hd : (g + 1) * hd], rtol=1e-4, atol=1e-4
        )


SPEC = """
model m {
  family llama; vocab 256; hidden 256; layers 2; heads 4; kv_heads 2; ffn 256
  context 320; weights random(seed = 3)
}
cluster c { node n0 { cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB } }
schedule s { run m on c; quantize weights f32 }
"""


def test_model_with_split_attention_matches_reference(tmp_path):
    """A model lowered by lower-llvm, past one chunk of keys: a 197-row prefill (one chunk
    per row), a 3-row prefill at position 197 (split), then decode steps at positions
    200.. (split into 4 chunks): logits agree with the reference backend at every step."""
    spec = tmp_path / "m.cke"
    spec.write_text(SPEC)
    native, ref = ckeir.compile(spec, threads=2), ckeir.compile(spec, backend="reference")
    prompt = np.random.default_rng(0).integers(1, 256, 200).astype(np.int32)
    try:
        a, b = native.engine, ref.engine
        assert "attention_parts" in native.llvm_ir() and "attention_combine" in native.llvm_ir()
        for func in funcs(native.module):  # the partials live past the func's own buffers
            abi = native.lowered.programs[func.attr("sym_name")]
            rows = func.attr("max_tokens", 1)
            assert abi.arena_bytes >= func.attr("arena_bytes") + scratch_bytes(4, 64, rows)
        a.prefill(prompt[:197], 0), b.prefill(prompt[:197], 0)
        steps = [(a.prefill(prompt[197:], 197), b.prefill(prompt[197:], 197))]
        token = steps[0][1][0]
        for pos in range(200, 206):
            steps.append((a.decode(token, pos), b.decode(token, pos)))
            token = steps[-1][1][0]
    finally:
        native.close()
    assert split(206, 1)[1] == 4
    for (_, got), (_, want) in steps:
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
