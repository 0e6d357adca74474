"""Model weights: where the numbers come from (random, GGUF, safetensors) and how they are
stored (f32 arrays, or GGML blocks as raw bytes)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import attrs
import numpy as np

from ckeir.errors import CkeError, ModelFileError
from ckeir.formats import COMPUTED, FORMATS, TARGETS
from ckeir.models.llama import LlamaConfig
from ckeir.quant import kquantize
from ckeir.runtime.memory import huge_pages_wanted, huge_zeros


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
    """Weights in the formats the quantize pass chose: f32 arrays stay, others become what
    a model file's `data` gives for that format (f16 arrays, bf16 bits as uint16, GGML blocks
    as uint8 rows x row bytes), packed by `gguf.quants` (bit-exact; K-quants by
    `ckeir.quant.kquantize`)."""
    out = {}
    for name, w in weights.items():
        fmt = formats.get(name, "f32")
        out[name] = w if fmt == "f32" else quantize_rows(w, fmt)
    return out


def quantize_rows(w: np.ndarray, fmt: str) -> np.ndarray:
    if FORMATS[fmt].super_block:  # gguf.quants has no K-quant quantizer
        return kquantize(w, fmt)
    from gguf import GGMLQuantizationType, quants

    q = quants.quantize(w.astype(np.float32), GGMLQuantizationType[fmt.upper()])
    return np.ascontiguousarray(q.view(np.uint16) if fmt == "bf16" else q)


def dequantize_rows(q: np.ndarray, fmt: str) -> np.ndarray:
    """f32 values of rows stored in `fmt` (for the reference backend and conversions)."""
    if fmt == "f32":
        return np.asarray(q, np.float32)
    from gguf import GGMLQuantizationType, quants

    raw = q if fmt == "f16" else np.ascontiguousarray(q).view(np.uint8)
    return quants.dequantize(raw, GGMLQuantizationType[fmt.upper()]).astype(np.float32)


def file_weights(
    cfg: LlamaConfig, model_file, formats: dict[str, str], huge_pages: bool | None = None
) -> WeightStore:
    """The weights a model file holds, in `formats` (weight name -> format).  A tensor already
    in its target format is the file's bytes: copied onto huge pages when it is used (see
    `WeightStore`), or the file's memory-mapped bytes with `huge_pages=False` (default: the
    environment, `CKEIR_HUGE_PAGES`) or when the copy would not fit in memory.  Others are
    converted through float32 once, at load."""
    model_file.check_config(cfg)
    stored, converted = {}, {}
    for name in cfg.weight_shapes():
        info = model_file.tensors[name]
        target = formats.get(name, info.format)
        if target not in FORMATS or not FORMATS[target].computes:
            raise ModelFileError(
                f"{model_file.path}: tensor '{name}' is stored as {info.format.upper()}, "
                "which ckeir cannot compute on",
                hint=f"schedule 'quantize weights q8_0' (or one of {', '.join(TARGETS)}) to "
                f"convert it at load; ckeir computes as stored on {', '.join(COMPUTED)}",
            )
        data = model_file.data(name)
        if target == info.format:
            stored[name] = data
            continue
        plain = _to_f32(data, info.format, model_file.path, name, info.shape)
        converted[name] = plain if target == "f32" else quantize_rows(plain, target)
    placement = weight_placement(sum(a.nbytes for a in stored.values()), huge_pages)
    model_file.advise_huge_pages(placement.huge_pages)
    return WeightStore(stored, converted, placement, model_file.release)


@attrs.frozen
class WeightPlacement:
    """Where the file's tensors live during a run, and why there: `copy` (anonymous memory on
    huge pages) or `map` (the file's page cache, mapped)."""

    where: str
    huge_pages: bool  # whether the kernel is asked for huge pages (copy or file THP)
    nbytes: int  # bytes of the file's tensors the run computes on as stored
    reason: str

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def weight_placement(nbytes: int, huge_pages: bool | None = None) -> WeightPlacement:
    """Copy the stored tensors onto huge pages when wanted and when the copy takes at most
    half the memory available: the file's page cache (the same size again) stays, and the
    rest of the machine keeps room.  A refused copy keeps the mapping and warns."""
    if not huge_pages_wanted(huge_pages):
        return WeightPlacement("map", False, nbytes, "huge pages turned off")
    available = available_memory()
    if available is not None and 2 * nbytes > available:
        reason = (
            f"copying the weights onto huge pages needs {nbytes / 2**20:,.0f} MiB, more than "
            f"half of the {available / 2**20:,.0f} MiB this machine has available; they stay "
            "mapped from the file"
        )
        sys.stderr.write(f"warning: {reason}\n")  # one write: ranks must not interleave
        return WeightPlacement("map", True, nbytes, reason)
    return WeightPlacement("copy", True, nbytes, "copied onto huge pages")


class WeightStore(Mapping):
    """Weight name -> array, with the file's tensors placed as `placement` says.  A copy is
    made tensor by tensor as a program first asks for it, into one region reserved for all of
    them: a rank that computes on some layers copies (and holds) only those, and the tensors
    of a program lie side by side in the order it uses them.  Untouched reserve is never
    resident."""

    def __init__(self, stored: dict, converted: dict, placement: WeightPlacement, release=None):
        self.placement = placement
        self._release = release  # called with a tensor's name once it is copied
        self._stored, self._converted = stored, converted
        self._copies: dict[str, np.ndarray] = {}
        self._region = None
        self._used = 0
        if placement.where == "copy":
            self._region = huge_zeros(sum(_padded(a.nbytes) for a in stored.values()))

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._converted:
            return self._converted[name]
        if self._region is None:
            return self._stored[name]
        if name not in self._copies:
            self._copies[name] = self._copy(self._stored[name])
            if self._release is not None:
                self._release(name)
        return self._copies[name]

    def _copy(self, src: np.ndarray) -> np.ndarray:
        dst = self._region[self._used : self._used + src.nbytes]
        dst = dst.view(src.dtype).reshape(src.shape)
        np.copyto(dst, src)
        self._used += _padded(src.nbytes)
        return dst

    def __iter__(self):
        return iter({**self._stored, **self._converted})

    def __len__(self) -> int:
        return len(self._stored) + len(self._converted)


def _padded(nbytes: int) -> int:
    """Bytes a copied tensor takes in the region: every tensor starts on a cache line."""
    return -(-nbytes // 64) * 64


def _to_f32(data: np.ndarray, fmt: str, path, name: str, shape) -> np.ndarray:
    try:
        return dequantize_rows(data, fmt).reshape(shape)
    except (KeyError, NotImplementedError, ValueError):
        raise ModelFileError(
            f"{path}: tensor '{name}' is stored as {fmt.upper()}, which ckeir cannot read "
            "(it reads F32, F16, BF16 and GGML's quantized types)"
        ) from None
