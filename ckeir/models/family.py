"""What a model family is: the blocks its graph template uses, and where its file says so.

A family is data, not a builder: `ckeir.models.transformer` builds every family's prefill and
decode programs from the same ops, and reads a `Family` for what differs (extra norms, the
FFN's gate, sliding-window layers, the embedding scale).  Adding a family is one module in
`ckeir/models/` that defines `FAMILY = Family(...)` (and the architecture string of its GGUF
files), plus its name in `ckeir.frontend.semantic.KNOWN_FAMILIES`.
"""

from __future__ import annotations

import importlib
import pkgutil

import attrs


@attrs.frozen
class Family:
    name: str
    gguf_arch: str  # `general.architecture` of its GGUF files; their keys are prefixed so
    post_norms: bool = False  # RMSNorm of the attention output and of the FFN output
    qk_norm: bool = False  # RMSNorm of each head of Q and K, before RoPE
    gate: str = "silu"  # the FFN's gate: silu(g) * u ("silu") or gelu_tanh(g) * u ("gelu")
    embed_scale: bool = False  # embeddings times sqrt(hidden)
    sliding_period: int = 0  # layer i attends in a window when i % period < period - 1
    window: int = 0  # that window (keys), unless the file or the config says otherwise
    local_rope_theta: float = 10000.0  # the RoPE base of the sliding-window layers
    gguf_rope_style: str = "interleaved"  # how its GGUF files pair RoPE lanes
    tied_by_default: bool = False
    # Hugging Face safetensors: the layer tensors' names (`model.layers.N.<name>.weight`) ->
    # GGUF's (`blk.N.<name>.weight`) where they differ from llama's, a name only this
    # family's files hold (how a file says which family it is), and what is added to every
    # stored norm weight (Gemma's RMSNorm computes with 1 + w; GGUF files hold 1 + w)
    hf_layer_names: tuple[tuple[str, str], ...] = ()
    hf_marker: str | None = None
    hf_norm_shift: float = 0.0

    def sliding(self, layer: int) -> bool:
        p = self.sliding_period
        return p > 0 and layer % p < p - 1


def family(name: str) -> Family:
    """The family named `name` (its module in ckeir.models)."""
    try:
        module = importlib.import_module(f"ckeir.models.{name}")
    except ModuleNotFoundError:
        module = None
    fam = getattr(module, "FAMILY", None)
    if not isinstance(fam, Family):
        raise ValueError(f"unknown model family '{name}' (known: {', '.join(known_families())})")
    return fam


def known_families() -> tuple[str, ...]:
    """Every module of ckeir.models that defines a FAMILY."""
    import ckeir.models

    names = []
    for info in pkgutil.iter_modules(ckeir.models.__path__):
        module = importlib.import_module(f"ckeir.models.{info.name}")
        if isinstance(getattr(module, "FAMILY", None), Family):
            names.append(info.name)
    return tuple(sorted(names))


def by_hf_names(names) -> Family:
    """The family whose Hugging Face tensor names `names` (a safetensors header's) are:
    the first whose marker name appears among them, else llama."""
    for name in known_families():
        fam = family(name)
        if fam.hf_marker and any(f".{fam.hf_marker}." in n for n in names):
            return fam
    return family("llama")


def by_arch(arch: str) -> Family | None:
    """The family whose GGUF files say `general.architecture = arch`."""
    for name in known_families():
        fam = family(name)
        if fam.gguf_arch == arch:
            return fam
    return None
