"""Native (llvm) vs reference (numpy) on the same compiled IR and the same weights: logits agree
within 1e-4 of the logit scale at every step, and greedy tokens are identical.

Each case is a random-weight spec of a different shape: grouped-query attention, sizes that are
not multiples of any vector width, multi-head with tied embeddings and interleaved RoPE, and a
run that fills the context to its last position."""

import numpy as np
import pytest

import ckeir

SPEC = """
model m {{
  family llama; vocab {vocab}; hidden {hidden}; layers {layers}; heads {heads}
  kv_heads {kv_heads}; ffn {ffn}; context {context}; tie_embeddings {tied}
  rope_style {rope}; weights random(seed = {seed})
}}
cluster c {{ node n0 {{ cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run m on c; quantize weights {fmt}; quantize activations {act} }}
"""

CASES = {
    "gqa": dict(vocab=512, hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, context=64),
    "odd": dict(vocab=301, hidden=72, layers=3, heads=6, kv_heads=2, ffn=200, context=48),
    "mha-tied": dict(
        vocab=384,
        hidden=96,
        layers=2,
        heads=3,
        kv_heads=3,
        ffn=160,
        context=64,
        tied="true",
        rope="interleaved",
    ),
    "mqa-wide": dict(vocab=1000, hidden=160, layers=1, heads=5, kv_heads=1, ffn=480, context=40),
}
PROMPT = [5, 17, 3, 99, 42, 7, 1, 250]


def write_spec(tmp_path, name, fmt="f32", seed=1, **kw):
    params = dict(tied="false", rope="halves", seed=seed, fmt=fmt, act="q8_0") | kw
    path = tmp_path / f"{name}.cke"
    path.write_text(SPEC.format(**params))
    return path


def compare(spec, n_new, threads, prompt=PROMPT, tol=1e-4):
    native = ckeir.compile(spec, threads=threads)
    ref = ckeir.compile(spec, backend="reference")
    got, want = [], []
    try:
        a, b = native.engine, ref.engine
        a.reset(), b.reset()
        ta, la = a.prefill(np.array(prompt, np.int32), 0)
        tb, lb = b.prefill(np.array(prompt, np.int32), 0)
        pos = len(prompt)
        for _ in range(n_new):
            scale = float(np.abs(lb).max())
            assert np.abs(la - lb).max() <= tol * scale, (pos, np.abs(la - lb).max(), scale)
            top2 = np.sort(lb[0])[-2:]
            # Where the reference's winner leads by more than twice the logits' difference,
            # the native argmax must pick it too; closer calls are ties at this precision.
            if top2[1] - top2[0] > 2 * np.abs(la - lb).max():
                got.append(ta), want.append(tb)
            if pos == native.config.context:
                break
            ta, la = a.decode(tb, pos)  # both continue from the reference's token
            tb, lb = b.decode(tb, pos)
            pos += 1
    finally:
        native.close()
    assert got == want
    return got


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_32_tokens(tmp_path, case):
    spec = write_spec(tmp_path, case, **CASES[case])
    tokens = compare(spec, 32, threads=2)
    assert len(tokens) == 32


@pytest.mark.parametrize("threads", [1, 3])
def test_parity_thread_counts(tmp_path, threads):
    spec = write_spec(tmp_path, "gqa", **CASES["gqa"])
    compare(spec, 8, threads=threads)


def test_context_at_its_limit(tmp_path):
    kw = CASES["mqa-wide"]
    spec = write_spec(tmp_path, "full", **kw)
    tokens = compare(spec, kw["context"] - len(PROMPT) + 1, threads=2)
    # prefill gives 1 token, then one decode per remaining position up to the last one
    assert len(tokens) == kw["context"] - len(PROMPT) + 1


def test_generate_api_matches_reference(tmp_path):
    spec = write_spec(tmp_path, "gqa", **CASES["gqa"])
    with ckeir.compile(spec) as native:
        got = native.generate(PROMPT, max_new_tokens=32)
    want = ckeir.compile(spec, backend="reference").generate(PROMPT, max_new_tokens=32)
    assert got == want and len(got) == 32


def test_long_prompt_runs_in_prefill_chunks(tmp_path, monkeypatch):
    """A prompt longer than the prefill program's row bound is split into chunks."""
    from ckeir import driver

    monkeypatch.setattr(driver, "PREFILL_CHUNK", 3)
    spec = write_spec(tmp_path, "gqa", **CASES["gqa"])
    with ckeir.compile(spec) as native:
        assert native.engine.max_prefill == 3
        got = native.generate(PROMPT, max_new_tokens=6)
    monkeypatch.setattr(driver, "PREFILL_CHUNK", 256)
    want = ckeir.compile(spec, backend="reference").generate(PROMPT, max_new_tokens=6)
    assert got == want


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
def test_parity_quantized_weights(tmp_path, fmt):
    """With float activations, native kernels read the GGML blocks the reference dequantizes:
    the same numbers to float rounding."""
    kw = dict(CASES["gqa"], vocab=320, ffn=224)
    spec = write_spec(tmp_path, fmt, fmt=fmt, act="f32", **kw)
    prog = ckeir.compile(spec, backend="reference")
    assert set(prog.weight_formats.values()) == {"f32", fmt}
    assert 'act = "q8_0"' not in prog.mlir()
    assert len(compare(spec, 16, threads=2)) >= 14


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
def test_parity_quantized_activations(tmp_path, fmt):
    """With 8-bit activations (the default, as GGML), both backends round the same formula
    (ckeir.quant), but rounding to int8 is discontinuous: a last-bit difference upstream can
    move one value by a quantization step.  Logits agree within 2% of their scale, and the
    greedy token wherever the winner is clear."""
    kw = dict(CASES["gqa"], vocab=320, ffn=224)
    spec = write_spec(tmp_path, fmt, fmt=fmt, **kw)
    assert 'act = "q8_0"' in ckeir.compile(spec, backend="reference").mlir()
    assert len(compare(spec, 16, threads=2, tol=2e-2)) >= 8


def test_kernels_of_any_float_constant_link_together_and_match_numpy(tmp_path, monkeypatch):
    """A kernel's symbol names its float constants exactly: `1e+30` is no LLVM symbol, and at
    six digits 1e-5 and 1.0000001e-5 were one name for two kernels.  Every rmsnorm below is
    in one module and computes with its own epsilon (float64 numpy, float32 rounding)."""
    import ctypes

    from ckeir.backends.llvm import kernels as K
    from ckeir.backends.llvm.host import detect_host
    from ckeir.backends.llvm.jit import compile_ir
    from ckeir.backends.llvm.pool import Pool

    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path / "cache"))
    host = detect_host()
    eps = [1e-5, 1.0000001e-5, 1e30, 1e-30, 0.5]
    kernels = [K.rmsnorm(16, e, host) for e in eps]
    assert len({k.name for k in kernels}) == len(eps)
    entries = [K.kernel_entry_ir(k, f"entry{i}") for i, k in enumerate(kernels)]
    module = compile_ir(K.module_ir([*kernels, *entries]), host)
    x = np.linspace(-2, 2, 2 * 16, dtype=np.float32).reshape(2, 16)
    w = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    with Pool(1) as pool:
        for i, e in enumerate(eps):
            out = np.zeros_like(x)
            ctx = K.entry_ctx([a.ctypes.data for a in (x, w, out)], 2, 0)
            pool.run(module.address(f"entry{i}"), ctypes.addressof(ctx))
            x64 = x.astype(np.float64)
            want = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + np.float32(e)) * w
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-30)
