"""Model weights: where the numbers come from (random, GGUF, safetensors) and how they are
stored (f32 arrays, or GGML blocks as raw bytes)."""

from __future__ import annotations

import numpy as np

from ckeir.errors import CkeError, ModelFileError
from ckeir.formats import FORMATS
from ckeir.models.llama import LlamaConfig


def random_weights(cfg: LlamaConfig, seed: int) -> dict[str, np.ndarray]:
    """Deterministic f32 weights for a synthetic model: matrices ~ N(0, 1/K) (so activations
    keep their scale through each projection), norm gains near 1, embeddings ~ N(0, 1)."""
    check_fits_in_memory(random_weights_bytes(cfg), "random weights for this model")
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in cfg.weight_shapes().items():
        if len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "token_embd.weight":
            w = rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[1])
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def random_weights_bytes(cfg: LlamaConfig) -> int:
    """Peak bytes `random_weights` holds: every tensor in f32, plus the largest one drawn in
    f64 before it is narrowed."""
    sizes = [int(np.prod(shape, dtype=object)) for shape in cfg.weight_shapes().values()]
    return 4 * sum(sizes) + 8 * max(sizes)


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse an allocation this machine cannot hold before making it: a spec within every
    limit can still describe a model of petabytes, and numpy would fail (or the kernel kill
    the process) only after minutes of work."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise CkeError(
            f"{what} need {nbytes / 2**30:,.1f} GiB, but this machine has "
            f"{available / 2**30:,.1f} GiB of memory available",
            hint="use a smaller model, or more ranks on more machines",
        )


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def pack(weights: dict[str, np.ndarray], formats: dict[str, str]) -> dict[str, np.ndarray]:
    """Weights in the formats the quantize pass chose: f32 arrays stay, quantized ones become
    uint8 arrays of GGML blocks (rows x row bytes), packed by `gguf.quants` (bit-exact)."""
    out = {}
    for name, w in weights.items():
        fmt = formats.get(name, "f32")
        out[name] = w if fmt == "f32" else quantize_rows(w, fmt)
    return out


def quantize_rows(w: np.ndarray, fmt: str) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    return np.ascontiguousarray(
        quants.quantize(w.astype(np.float32), GGMLQuantizationType[fmt.upper()])
    )


def dequantize_rows(q: np.ndarray, fmt: str) -> np.ndarray:
    """f32 values of packed GGML rows (for the reference backend)."""
    if fmt == "f32":
        return q
    from gguf import GGMLQuantizationType, quants

    return quants.dequantize(q, GGMLQuantizationType[fmt.upper()]).astype(np.float32)


def file_weights(cfg: LlamaConfig, model_file, formats: dict[str, str]) -> dict[str, np.ndarray]:
    """The weights a model file holds, in `formats` (weight name -> format).  A tensor already
    in its target format is the file's memory-mapped bytes (no copy); others are converted
    through float32 once, at load."""
    model_file.check_config(cfg)
    out = {}
    for name in cfg.weight_shapes():
        info = model_file.tensors[name]
        target = formats.get(name, info.format)
        if target not in FORMATS:
            raise ModelFileError(
                f"{model_file.path}: tensor '{name}' is stored as {info.format.upper()}, "
                "which ckeir cannot compute on",
                hint="schedule 'quantize weights q8_0' (or f32, q4_0, q4_1) to convert it at load",
            )
        data = model_file.data(name)
        if target == info.format:
            out[name] = data
            continue
        plain = _to_f32(data, info.format, model_file.path, name, info.shape)
        out[name] = plain if target == "f32" else quantize_rows(plain, target)
    return out


def _to_f32(data: np.ndarray, fmt: str, path, name: str, shape) -> np.ndarray:
    if fmt == "f32":
        return np.asarray(data, np.float32)
    from gguf import GGMLQuantizationType, quants

    try:
        plain = quants.dequantize(data, GGMLQuantizationType[fmt.upper()]).astype(np.float32)
        return plain.reshape(shape)
    except (KeyError, NotImplementedError, ValueError):
        raise ModelFileError(
            f"{path}: tensor '{name}' is stored as {fmt.upper()}, which ckeir cannot read "
            "(it reads F32, F16, BF16 and GGML's quantized types)"
        ) from None
