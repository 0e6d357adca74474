"""`qmatmul` with a chunked K reduction (`k_chunk`): the canonical order a matmul split along K
reproduces, bit for bit.

A row-parallel matmul (attention output, FFN down) gives each rank a range of whole chunks of
K.  The first rank's kernel folds its chunks, ``(c0 + c1)``; a later rank's kernel delivers
each chunk's sums apart (`separate`); folding those after the first rank's, in K order, is
the single-rank kernel's ``((c0 + c1) + c2) + c3``.  Checked on each code path the host has
(VNNI, the generic integer path), each meeting every format and every case (`isa_pairs`),
for decode (one token row) and prefill (several, with ragged token groups), with chunks
shorter than a VNNI group span and longer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from isa_pairs import rotated

from ckeir.backends.llvm.kernels.quant_matmul import qmatmul
from ckeir.quant import qmatmul_reference
from ckeir.runtime.weights import quantize_rows

FORMATS = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
rng = np.random.default_rng(12)

# (K, chunk, shards in chunks): SmolLM2's attention output (576 = 3 x 192, split 2 | 1) and
# FFN down (1536 = 6 x 256, split 4 | 2); three ranks over a chunk shorter than a q4 group.
CASES = [
    (576, 192, (2, 1)),
    (1536, 256, (4, 2)),
    (576, 64, (6, 3)),  # SmolLM2's attention output by head: two chunks per q4 group
    (1536, 512, (2, 1)),
    (384, 64, (2, 3, 1)),  # a shard starting mid-group
    (320, 32, (3, 5, 2)),  # one block per chunk, odd starts
]


def _run(run_kernel, host, kernel, x, w, n_out, slots=1):
    out = np.full((slots, len(x), n_out), np.nan, np.float32)
    run_kernel(kernel, host, [np.ascontiguousarray(x), w, out], len(x), nth=2)
    return out


def _columns(w: np.ndarray, fmt: str, k: int, c0: int, c1: int) -> np.ndarray:
    """Columns c0..c1 of GGML rows: whole blocks, so a byte range of each row."""
    bb = w.shape[1] // (k // 32)
    return np.ascontiguousarray(w[:, c0 // 32 * bb : c1 // 32 * bb])


@pytest.mark.parametrize(
    ("host", "fmt", "k", "chunk", "shards"), rotated(FORMATS, CASES), indirect=["host"]
)
@pytest.mark.parametrize("n", [1, 7])
def test_chunked_equals_folded_shards(host, run_kernel, fmt, k, chunk, shards, n):
    n_out = 48
    w = quantize_rows(rng.standard_normal((n_out, k)).astype(np.float32), fmt)
    x = rng.standard_normal((n, k)).astype(np.float32)
    whole = _run(run_kernel, host, qmatmul(fmt, n_out, k, (16, 256), host, chunk), x, w, n_out)[0]

    at, parts = 0, []
    for i, m in enumerate(shards):
        c0, c1 = at * chunk, (at + m) * chunk
        at += m
        kern = qmatmul(fmt, n_out, c1 - c0, (16, 256), host, chunk, separate=i > 0)
        out = _run(run_kernel, host, kern, x[:, c0:c1], _columns(w, fmt, k, c0, c1), n_out, m)
        parts += [out[0]] if i == 0 else list(out)
    folded = parts[0].copy()
    for p in parts[1:]:
        folded += p  # float32, in K order: the all-reduce's fold
    assert np.array_equal(whole.view(np.uint32), folded.view(np.uint32))

    # the unfolded chunk sums are each chunk's own product
    want = qmatmul_reference(x, w, fmt)
    assert np.abs(whole - want).max() <= 1e-4 * np.abs(want).max()


def test_chunking_changes_the_order_not_the_unchunked_kernel(host, run_kernel):
    """Without a chunk the kernel is today's (one reduction over K), and it differs from the
    chunked one in some last bits: the order is what the chunk fixes."""
    fmt, n_out, k = "q4_1", 64, 1536
    w = quantize_rows(rng.standard_normal((n_out, k)).astype(np.float32), fmt)
    x = rng.standard_normal((3, k)).astype(np.float32)
    plain = qmatmul(fmt, n_out, k, (16, 256), host)
    assert "_c" not in plain.name.split("_t")[-1]
    a = _run(run_kernel, host, plain, x, w, n_out)[0]
    b = _run(run_kernel, host, qmatmul(fmt, n_out, k, (16, 256), host, 256), x, w, n_out)[0]
    assert np.allclose(a, b, rtol=1e-5, atol=1e-4)
    assert not np.array_equal(a, b)


def test_chunk_must_divide_k(host):
    with pytest.raises(ValueError, match="k_chunk 96 must be a multiple of 32 that divides"):
        qmatmul("q8_0", 16, 256, (16, 256), host, 96)
    with pytest.raises(ValueError, match="k_chunk 48"):
        qmatmul("q8_0", 16, 192, (16, 256), host, 48)


def test_float_activation_kernels_refuse_a_chunk(tmp_path):
    """The float-activation matmuls keep one reduction over K: a k_chunk on one is refused
    by the lowering with a located error (place never sets it there)."""
    import ckeir
    from ckeir.backends.llvm.host import detect_host
    from ckeir.backends.llvm.lower import lower_module
    from ckeir.errors import BackendError
    from ckeir.ir.core import Rewriter

    root = Path(__file__).resolve().parents[3]
    spec = tmp_path / "tiny-f32act.cke"
    text = (root / "specs/tiny.cke").read_text()
    spec.write_text(text.replace("batch 1", "quantize activations f32\n  batch 1", 1))
    assert spec.read_text() != text
    prog = ckeir.compile(spec, backend="reference")
    matmuls = [op for op in prog.module.walk() if op.name == "cke.matmul"]
    assert matmuls and not any(op.attr("k_chunk") for op in matmuls)
    Rewriter().set_attr(matmuls[0], "k_chunk", 32)
    with pytest.raises(BackendError, match="k_chunk needs int8 activations"):
        lower_module(prog.module, detect_host())
