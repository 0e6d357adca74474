"""SmolLM2-135M's greedy ids, checked against an independent forward pass instead of ids
written down once: `benchmarks/numpy_llama.py` reads the same GGUF with the `gguf` package,
dequantizes every tensor to f32 and runs a plain numpy llama (none of ckeir's IR, passes or
backends).

Where two candidate tokens are nearly tied, rounding decides between them, so a check is
only made where numpy's top two logits are at least a margin apart:

- float activations (`quantize activations f32`): ckeir computes what numpy computes, up to
  the order of float additions; measured, the top-2 gap differs from numpy's by < 1e-3
  logits, so FLOAT_MARGIN = 0.01 leaves a tenfold guard and every generated id must match;
- the spec as shipped (8-bit activation blocks, as GGML does): each GEMV carries ~5e-3
  relative error, and measured over these prompts the top-2 gap moves by up to 0.35
  logits, so INT8_MARGIN = 0.5.  Near-ties at this margin are common in SmolLM2 (a quarter
  of the steps), so each step is checked with numpy's history fed to both (teacher forcing),
  not on a free-running continuation that would stop at the first near-tie.
"""

import sys

import numpy as np
import pytest
from smollm2 import ROOT, SPEC, float_activation_spec, gguf_path, needs_smollm2

import ckeir
from ckeir.models.files import open_model_file
from ckeir.runtime.tokenizer import Tokenizer

sys.path.insert(0, str(ROOT))  # benchmarks/ is beside the package, not installed with it
from benchmarks.numpy_llama import NumpyLlama  # noqa: E402

pytestmark = [needs_smollm2, pytest.mark.slow]

PROMPTS = ("Once upon a time", "The capital of France is", "Water boils at")
STEPS = 16
FLOAT_MARGIN = 0.01
INT8_MARGIN = 0.5


def top2_margin(logits: np.ndarray) -> float:
    second, first = np.partition(np.asarray(logits, np.float64).ravel(), -2)[-2:]
    return float(first - second)


def follow(engine, prompt: list[int], tokens: list[int] | int) -> tuple[list[int], list]:
    """Greedy ids and the logits each came from, over an engine's prefill and decode (the
    interface ckeir's engines and NumpyLlama share).  `tokens`, when a list, is the history
    fed back instead of the engine's own choices (teacher forcing); an int is a count."""
    assert len(prompt) <= engine.max_prefill
    steps = tokens if isinstance(tokens, int) else len(tokens)
    engine.reset()
    token, logits = engine.prefill(np.asarray(prompt, np.int32), 0)
    chosen, seen = [int(token)], [np.asarray(logits).ravel().copy()]
    for i in range(steps - 1):
        fed = chosen[-1] if isinstance(tokens, int) else tokens[i]
        token, logits = engine.decode(fed, len(prompt) + i)
        chosen.append(int(token))
        seen.append(np.asarray(logits).ravel().copy())
    return chosen, seen


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_gguf(open_model_file("gguf", gguf_path()))


@pytest.fixture(scope="module")
def numpy_greedy(tokenizer):
    """Per prompt: its ids, numpy's greedy ids and numpy's top-2 margin at each step."""
    model = NumpyLlama.from_gguf(gguf_path(), context=64)
    runs = {}
    for text in PROMPTS:
        prompt = tokenizer.encode(text)
        ids, logits = follow(model, prompt, STEPS)
        runs[text] = (prompt, ids, [top2_margin(lg) for lg in logits])
    return runs


def agreeing_prefix(ids: list[int], margins: list[float], margin: float) -> int:
    """How many of numpy's ids a free-running continuation must reproduce: up to the first
    step whose top two logits are closer than `margin`."""
    return next((i for i, m in enumerate(margins) if m < margin), len(ids))


@pytest.mark.parametrize("backend, prompts", [("llvm", PROMPTS), ("reference", PROMPTS[:1])])
def test_float_activations_generate_numpys_greedy_ids(numpy_greedy, backend, prompts, tmp_path):
    """(The numpy interpreter of the IR is slow: one prompt is enough to hold it to numpy.)"""
    with ckeir.compile(float_activation_spec(tmp_path), backend=backend) as prog:
        for text in prompts:
            prompt, ids, margins = numpy_greedy[text]
            n = agreeing_prefix(ids, margins, FLOAT_MARGIN)
            assert n >= STEPS // 2, (text, margins)  # the check is not vacuous
            assert prog.generate(prompt, max_new_tokens=STEPS)[:n] == ids[:n], text


def test_int8_activations_choose_numpys_token_wherever_it_is_clear(numpy_greedy):
    with ckeir.compile(SPEC) as prog:  # the spec as shipped, native backend
        checked = 0
        for text, (prompt, ids, margins) in numpy_greedy.items():
            chosen, _ = follow(prog.engine, prompt, ids)
            clear = [i for i, m in enumerate(margins) if m >= INT8_MARGIN]
            assert [chosen[i] for i in clear] == [ids[i] for i in clear], (text, margins)
            checked += len(clear)
        assert checked >= len(PROMPTS) * STEPS // 2
