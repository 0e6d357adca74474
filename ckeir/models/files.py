"""Model files: hyper-parameters, the tensor table, and memory-mapped tensor data.

A GGUF header is read here, bounds-checked (see `_Reader`); tensor data are numpy views into
a map of the file, so nothing is copied or widened to float32.  The `gguf` package supplies
what it does well: the value and tensor type tables and the GGML block sizes.  Safetensors is
read with the `safetensors` package, also memory-mapped.  Every failure — missing file, wrong
magic, truncation, a count or length the file cannot hold, metadata of the wrong type or out
of range, tensors that contradict the hyper-parameters — becomes a `ModelFileError` naming
the file (and the key or the tensor).

GGUF's llama Q/K projections are stored permuted for the interleaved-pair RoPE convention, so a
GGUF llama runs with `rope_style = interleaved`; Hugging Face safetensors use `halves`.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import re
import struct
from pathlib import Path

import attrs
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ckeir import cache
from ckeir.errors import ModelFileError
from ckeir.formats import COMPUTED, FORMATS, TARGETS
from ckeir.limits import (
    MAX_CONTEXT,
    MAX_FFN,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_LAYERS,
    MAX_METADATA_KEYS,
    MAX_NORM_EPS,
    MAX_ROPE_THETA,
    MAX_TENSOR_DIMS,
    MAX_TENSORS,
    MAX_VOCAB,
    MIN_NORM_EPS,
    MIN_ROPE_THETA,
)
from ckeir.models.family import by_arch, by_hf_names, known_families
from ckeir.models.transformer import ModelConfig


@attrs.frozen
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, row length)
    format: str  # a name in ckeir.formats.FORMATS, or the file's own type name if unsupported


_LAYER = re.compile(r"blk\.(\d{1,9})\.")


class ModelFile:
    """Common interface of GGUF and safetensors files."""

    path: Path
    tensors: dict[str, TensorInfo]

    def params(self) -> dict:
        raise NotImplementedError

    _offsets: dict[str, tuple[int, int]]  # tensor name -> (byte offset, byte length)
    _buf = None

    def _bytes(self) -> np.ndarray:
        """The file, mapped read-only (once)."""
        if self._buf is None:
            try:
                self._buf = np.memmap(self.path, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as e:
                raise ModelFileError(f"{self.path}: cannot read the file ({_why(e)})") from None
        return self._buf

    def advise_huge_pages(self, huge: bool) -> None:
        """Ask the kernel to map the file with huge pages (read-only file THP), or never to:
        a file whose page cache holds 2 MiB folios is otherwise mapped with huge pages or not
        depending on who read it first."""
        advice = "MADV_HUGEPAGE" if huge else "MADV_NOHUGEPAGE"
        m = getattr(self._bytes(), "_mmap", None)
        if m is not None and hasattr(mmap, advice):
            m.madvise(getattr(mmap, advice))

    def release(self, name: str) -> None:
        """Unmap this process's pages of a tensor that was copied elsewhere.  The page cache
        keeps the file (shared, reclaimable); the process's resident memory stops counting
        the tensor twice.  A later read of `data(name)` maps the pages again."""
        offset, nbytes = self._offsets[name]
        page = mmap.PAGESIZE
        lo, hi = -(-offset // page) * page, (offset + nbytes) // page * page
        m = getattr(self._bytes(), "_mmap", None)
        if m is not None and hi > lo:
            m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def data(self, name: str) -> np.ndarray:
        """The stored tensor, a view into the file: f32/f16 as typed (rows, K) arrays, bf16
        as uint16 (its bits; numpy has no bfloat16), GGML blocks as uint8 (rows, row bytes),
        any other type as its bytes (converted, or refused, by the caller)."""
        info = self.require(name)
        offset, nbytes = self._offsets[name]
        raw = self._bytes()[offset : offset + nbytes]
        if len(raw) != nbytes:  # the file shrank since it was opened
            raise ModelFileError(f"{self.path}: tensor '{name}' is truncated")
        fmt = FORMATS.get(info.format)
        if fmt is not None and fmt.quantized:
            rows = int(np.prod(info.shape[:-1]))
            return raw.reshape(rows, fmt.row_bytes(info.shape[-1]))
        if fmt is not None:
            dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[fmt.name]
            return raw.view(dtype).reshape(info.shape)
        return raw

    def metadata(self, key: str, default=None):
        return default

    def require(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: tensor '{name}' is missing")
        return info

    def layer_count(self) -> int:
        """Layers the file holds tensors for: the highest `blk.N.` + 1."""
        found = (_LAYER.match(name) for name in self.tensors)
        return max((int(m[1]) + 1 for m in found if m), default=0)

    def family_params(self) -> dict:
        """What the config takes from the file beyond the spec's hyper-parameters (a GGUF
        gemma3's head width, sliding window and local RoPE base); {} for a llama."""
        return {}

    def check_formats(self, weight_format: str = "keep", excepted=()) -> None:
        """Every matrix the schedule leaves as stored (all under `keep`, the `excepted` ones
        otherwise) is in a type ckeir computes on: one it has no kernels for (IQ2_XXS,
        TQ1_0, ...) is named with this file before anything is built or compiled, with what
        to schedule instead.  Cheap: the tensor table only."""
        names = {n for e in excepted for n in (e, e + ".weight", e.removesuffix(".weight"))}
        for name, info in self.tensors.items():
            if len(info.shape) != 2 or weight_format != "keep" and name not in names:
                continue
            fmt = FORMATS.get(info.format)
            if fmt is None or not fmt.computes:
                raise ModelFileError(
                    f"{self.path}: tensor '{name}' is stored as {info.format.upper()}, which "
                    "ckeir cannot compute on",
                    hint=f"schedule 'quantize weights q8_0' (or one of {', '.join(TARGETS)}) to "
                    f"convert it at load; ckeir computes as stored on {', '.join(COMPUTED)}",
                )

    def check_config(self, cfg: ModelConfig) -> None:
        """The file holds every tensor `cfg` needs, in the shape it needs, and no more layers.
        Cheap (the tensor table only), so it runs before any IR is built or weight read: a
        layer count or a width the tensors contradict never sizes any work."""
        present = self.layer_count()
        if present != cfg.layers:
            raise ModelFileError(
                f"{self.path}: the model has {cfg.layers} layers, but the file holds "
                f"tensors for {present}"
            )
        for name, shape in cfg.weight_shapes().items():
            info = self.require(name)
            if tuple(info.shape) != tuple(shape):
                raise ModelFileError(
                    f"{self.path}: tensor '{name}' has shape "
                    f"{list(info.shape)}, the model needs {list(shape)}"
                )


# ---- the GGUF header ----------------------------------------------------------------------------
#
# Why not `gguf.GGUFReader`: it trusts every count and length it reads and walks arrays one
# element at a time, with a numpy view each.  A last key claiming ARRAY<UINT8> of 2**40
# entries loops for hours while memory grows; a string length of 2**60 or a tensor count of
# 2**40 goes the same way.  Here each count and length is checked against the bytes left in
# the file (and `ckeir.limits`) before it sizes a loop or an allocation, arrays are skipped
# without being materialized (their values are read from the map when asked for: the
# tokenizer's 100k strings only when text is encoded), and the header costs one pass.

_SCALARS = {  # GGUF scalar type -> struct code (little endian)
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_INTEGERS = {t.name for t in _SCALARS if t.name[0] in "UI"}
_REALS = _INTEGERS | {"FLOAT32", "FLOAT64"}
# the fewest bytes one value of a type takes: an array count times this must fit in the file
_MIN_BYTES = {t: struct.calcsize(c) for t, c in _SCALARS.items()} | {
    GGUFValueType.STRING: 8,  # its length
    GGUFValueType.ARRAY: 12,  # its item type and count
}
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_MAX_ARRAY_NESTING = 4  # arrays of arrays are legal GGUF; none we know nests at all
_VERSIONS = (2, 3)  # version 1 had 32-bit counts
_ALIGNMENT = 32  # GGUF's default
INDEX_VERSION = 2


class _Reader:
    """Reads a GGUF file's bytes front to back; a read the rest of the file cannot satisfy
    fails naming the file, what was being read and where."""

    def __init__(self, buf, path: Path, pos: int = 0):
        self.buf, self.path, self.pos = memoryview(buf), path, pos

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {what} (the file is damaged)")

    def need(self, n: int, what: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            raise self.fail(f"{what} at byte {self.pos} needs {n} bytes, but {left} follow")

    def skip(self, n: int, what: str) -> int:
        self.need(n, what)
        self.pos += n
        return self.pos - n

    def scalar(self, t: GGUFValueType, what: str):
        code = _SCALARS[t]
        start = self.skip(struct.calcsize(code), what)
        return struct.unpack_from("<" + code, self.buf, start)[0]

    def u32(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        start = self.skip(n, what)
        try:
            return bytes(self.buf[start : start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {start} is not UTF-8") from None

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.u32(f"the type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {raw}") from None

    def array_head(self, what: str, depth: int) -> tuple[GGUFValueType, int]:
        """An array's item type and count, checked to fit in the rest of the file."""
        if depth > _MAX_ARRAY_NESTING:
            raise self.fail(f"{what} nests arrays deeper than {_MAX_ARRAY_NESTING}")
        item = self.value_type(f"the items of {what}")
        count = self.u64(f"the length of {what}")
        self.need(count * _MIN_BYTES[item], f"{what} (an array of {count} {item.name})")
        return item, count

    def skip_items(self, item: GGUFValueType, count: int, what: str, depth: int) -> None:
        if item in _SCALARS:
            self.skip(count * _MIN_BYTES[item], what)
        elif item == GGUFValueType.STRING:
            for _ in range(count):
                self.skip(self.u64(f"the length of a string in {what}"), what)
        else:
            for _ in range(count):
                self.skip_items(*self.array_head(what, depth + 1), what, depth + 1)

    def items(self, item: GGUFValueType, count: int, what: str, depth: int) -> list:
        if item in _SCALARS:
            start = self.skip(count * _MIN_BYTES[item], what)
            dtype = np.dtype("<" + _SCALARS[item])
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        if item == GGUFValueType.STRING:
            return [self.string(f"a string in {what}") for _ in range(count)]
        return [
            self.items(*self.array_head(what, depth + 1), what, depth + 1) for _ in range(count)
        ]


def _read_entry(r: _Reader, what: str) -> dict:
    """One metadata value as the index keeps it: scalars and strings by value, arrays by
    where they are (decoded from the map when asked for)."""
    t = r.value_type(what)
    if t == GGUFValueType.STRING:
        return {"type": t.name, "value": r.string(what)}
    if t in _SCALARS:
        return {"type": t.name, "value": r.scalar(t, what)}
    item, count = r.array_head(what, 1)
    offset = r.pos
    r.skip_items(item, count, what, 1)
    return {"type": t.name, "item": item.name, "count": count, "offset": offset}


def _read_count(r: _Reader, what: str, limit: int, min_bytes: int) -> int:
    n = r.u64(f"the {what} count")
    if n > limit:
        raise r.fail(f"the header claims {n} {what}, more than the {limit} ckeir reads")
    r.need(n * min_bytes, f"{n} {what}")
    return n


def _read_tensor(r: _Reader, i: int) -> dict:
    name = r.string(f"the name of tensor {i}")
    what = f"tensor '{name}'"
    n_dims = r.u32(f"the dimension count of {what}")
    if not 1 <= n_dims <= MAX_TENSOR_DIMS:
        raise r.fail(f"{what} has {n_dims} dimensions (1 to {MAX_TENSOR_DIMS} are valid)")
    dims = [r.u64(f"a dimension of {what}") for _ in range(n_dims)]
    if 0 in dims:
        raise r.fail(f"{what} has an empty dimension ({dims})")
    raw = r.u32(f"the type of {what}")
    try:
        ggml = GGMLQuantizationType(raw)
    except ValueError:
        raise r.fail(f"{what} has unknown tensor type {raw}") from None
    block, block_bytes = GGML_QUANT_SIZES[ggml]
    if dims[0] % block:
        raise r.fail(f"{what}: row length {dims[0]} is not a multiple of {ggml.name}'s {block}")
    return {
        "name": name,
        "shape": dims[::-1],  # GGUF lists the contiguous dimension first
        "format": ggml.name.lower(),
        "offset": r.u64(f"the data offset of {what}"),
        "bytes": math.prod(dims) // block * block_bytes,
    }


def _alignment(meta: dict, path: Path) -> int:
    entry = meta.get("general.alignment")
    if entry is None:
        return _ALIGNMENT
    value = entry.get("value")
    if entry["type"] != "UINT32" or value == 0 or value & (value - 1):
        raise ModelFileError(
            f"{path}: metadata 'general.alignment' is {_found(entry)}, "
            "expected a power of two (UINT32)"
        )
    return value


def _place_tensors(tensors: list[dict], start: int, align: int, size: int, path: Path) -> None:
    """Make offsets absolute; each tensor aligned and inside the file."""
    for t in tensors:
        if t["offset"] % align:
            raise ModelFileError(
                f"{path}: tensor '{t['name']}' starts at offset {t['offset']}, "
                f"not a multiple of the alignment {align}"
            )
        t["offset"] += start
        end = t["offset"] + t["bytes"]
        if end > size:
            raise ModelFileError(
                f"{path}: tensor '{t['name']}' is truncated "
                f"(ends at byte {end}, the file has {size})"
            )


def read_gguf_index(buf, path: Path) -> dict:
    """The metadata and tensor table of the GGUF file in `buf`, every count and length
    checked against the file before it is used."""
    if bytes(buf[:4]) != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
    r = _Reader(buf, path, 4)
    version = r.u32("the GGUF version")
    if version and not version & 0xFFFF:
        raise ModelFileError(f"{path}: a big-endian GGUF file, which ckeir does not read")
    if version not in _VERSIONS:
        raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 or 3 is)")
    n_tensors = _read_count(r, "tensors", MAX_TENSORS, _MIN_TENSOR_BYTES)
    n_keys = _read_count(r, "metadata keys", MAX_METADATA_KEYS, _MIN_KV_BYTES)
    meta: dict[str, dict] = {}
    for i in range(n_keys):
        key = r.string(f"the name of metadata key {i}")
        if key in meta:
            raise r.fail(f"metadata '{key}' appears twice")
        meta[key] = _read_entry(r, f"metadata '{key}'")
    tensors = [_read_tensor(r, i) for i in range(n_tensors)]
    if len({t["name"] for t in tensors}) != len(tensors):
        raise ModelFileError(f"{path}: two tensors have the same name (the file is damaged)")
    align = _alignment(meta, path)
    start = -(-r.pos // align) * align
    _place_tensors(tensors, start, align, len(buf), path)
    return {"version": INDEX_VERSION, "metadata": meta, "tensors": tensors}


def _found(entry: dict) -> str:
    """A metadata value as a message shows it: `UINT32 1000000`, `an ARRAY of 3 INT32`."""
    if entry["type"] == "ARRAY":
        return f"an ARRAY of {entry['count']} {entry['item']}"
    shown = repr(entry["value"])
    return f"{entry['type']} {shown if len(shown) <= 40 else shown[:30] + '…'}"


def _index_damage(index, size: int) -> str | None:
    """Why a cached index (JSON that decoded) cannot be used, or None."""
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        return "another index version"
    meta, tensors = index.get("metadata"), index.get("tensors")
    if not isinstance(meta, dict) or not isinstance(tensors, list):
        return "no metadata or tensor table"
    bad_key = next((k for k, e in meta.items() if not _entry_ok(e, size)), None)
    if bad_key is not None:
        return f"a malformed entry for metadata '{bad_key}'"
    if not all(_tensor_ok(t, size) for t in tensors):
        return "a malformed tensor entry"
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# what a scalar entry's JSON value must be, by GGUF type
_VALUE_KIND = {"STRING": str, "BOOL": bool, "FLOAT32": float, "FLOAT64": float}


def _entry_ok(e, size: int) -> bool:
    if not isinstance(e, dict) or e.get("type") not in GGUFValueType.__members__:
        return False
    if e["type"] == "ARRAY":
        where = (e.get("count"), e.get("offset"))
        return e.get("item") in GGUFValueType.__members__ and all(
            _is_int(v) and 0 <= v <= size for v in where
        )
    kind = _VALUE_KIND.get(e["type"])
    return isinstance(e.get("value"), kind) if kind else _is_int(e.get("value"))


def _tensor_ok(t, size: int) -> bool:
    if not isinstance(t, dict):
        return False
    offset, nbytes, shape = t.get("offset"), t.get("bytes"), t.get("shape")
    return (
        isinstance(t.get("name"), str)
        and isinstance(t.get("format"), str)
        and _is_int(offset)
        and _is_int(nbytes)
        and 0 <= offset <= offset + nbytes <= size
        and isinstance(shape, list)
        and 1 <= len(shape) <= MAX_TENSOR_DIMS
        and all(_is_int(d) and d > 0 for d in shape)
    )


_REQUIRED = object()
_HEAD_DIM_KEYS = ("rope.dimension_count", "attention.key_length", "attention.value_length")


class GGUFFile(ModelFile):
    """A GGUF file.  The first open reads its header and caches an index (metadata, tensor
    table with byte offsets, keyed by path, size and mtime); later opens read the index and
    map the file."""

    def __init__(self, path: Path):
        self.path = _regular_file(path)
        st = self.path.stat()
        self._size = st.st_size
        key = f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|index v{INDEX_VERSION}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        self._index_path = cache.cache_dir() / "gguf" / f"{digest}.json"
        index = self._cached_index()
        if index is None:
            index = read_gguf_index(self._bytes(), self.path)
            cache.write_atomic(self._index_path, json.dumps(index).encode())
        self._meta = index["metadata"]
        self._offsets = {t["name"]: (t["offset"], t["bytes"]) for t in index["tensors"]}
        self.tensors = {
            t["name"]: TensorInfo(t["name"], tuple(t["shape"]), t["format"])
            for t in index["tensors"]
        }

    def _bytes(self) -> np.ndarray:
        if self._size == 0:  # numpy cannot map it; say what a user can act on
            raise ModelFileError(f"{self.path}: not a GGUF file (it is empty)")
        return super()._bytes()

    def _cached_index(self) -> dict | None:
        """The cached index, or None on a miss.  An entry whose checksum passed but whose
        content is unusable (another ckeir wrote it, or a bug did) is discarded and rebuilt."""
        raw = cache.read(self._index_path)
        if raw is None:
            return None
        try:
            index = json.loads(raw)
            why = _index_damage(index, self._size)
        except (ValueError, RecursionError) as e:
            why = f"not JSON: {_why(e)}"
        if why is None:
            return index
        cache.discard(self._index_path, f"not an index of {self.path}: {why}")
        return None

    # ---- metadata -----------------------------------------------------------------------------

    def metadata(self, key: str, default=None):
        entry = self._meta.get(key)
        if entry is None:
            return default
        if entry["type"] != "ARRAY":
            return entry["value"]
        r = _Reader(self._bytes(), self.path, entry["offset"])
        item = GGUFValueType[entry["item"]]
        return r.items(item, entry["count"], f"metadata '{key}'", 1)

    def _entry(self, key: str, expected: str, types, default):
        """The entry of `key` if its type is one of `types`; `default` if absent."""
        entry = self._meta.get(key)
        if entry is None:
            if default is _REQUIRED:
                raise ModelFileError(f"{self.path}: metadata '{key}' is missing ({expected})")
            return None
        if entry["type"] not in types:
            raise self._wrong(key, entry, expected)
        return entry

    def _wrong(self, key: str, entry: dict, expected: str) -> ModelFileError:
        return ModelFileError(
            f"{self.path}: metadata '{key}' is {_found(entry)}, expected {expected}"
        )

    def integer(self, key: str, lo: int, hi: int, default=_REQUIRED) -> int:
        expected = f"the integer {lo}" if lo == hi else f"an integer from {lo} to {hi}"
        entry = self._entry(key, expected, _INTEGERS, default)
        if entry is None:
            return default
        if not lo <= entry["value"] <= hi:
            raise self._wrong(key, entry, expected)
        return entry["value"]

    def real(self, key: str, lo: float, hi: float, default=_REQUIRED) -> float:
        expected = f"a number from {lo:g} to {hi:g}"
        entry = self._entry(key, expected, _REALS, default)
        if entry is None:
            return default
        if not lo <= entry["value"] <= hi:  # NaN fails too
            raise self._wrong(key, entry, expected)
        return float(entry["value"])

    def text(self, key: str, default=_REQUIRED) -> str:
        entry = self._entry(key, "a STRING", {"STRING"}, default)
        return default if entry is None else entry["value"]

    def array(self, key: str, kind: str, count: tuple[int, int], default=_REQUIRED) -> list:
        """The values of an array of `kind` ('string', 'integer', 'real') whose length is in
        `count` (inclusive), checked before any value is decoded."""
        items = {"string": {"STRING"}, "integer": _INTEGERS, "real": _REALS}[kind]
        lo, hi = count
        expected = f"an ARRAY of {lo if lo == hi else f'{lo} to {hi}'} {kind} values"
        entry = self._entry(key, expected, {"ARRAY"}, default)
        if entry is None:
            return default
        if entry["item"] not in items or not lo <= entry["count"] <= hi:
            raise self._wrong(key, entry, expected)
        return self.metadata(key)

    # ---- hyper-parameters ---------------------------------------------------------------------

    def family(self):
        """The family of `general.architecture` (ckeir.models.family)."""
        arch = self.text("general.architecture")
        fam = by_arch(arch)
        if fam is None:
            raise ModelFileError(
                f"{self.path}: architecture '{arch}' (metadata 'general.architecture') is "
                f"not one ckeir runs (families: {', '.join(known_families())})"
            )
        return fam

    def params(self) -> dict:
        fam = self.family()
        a = fam.gguf_arch + "."  # every hyper-parameter key is prefixed by the architecture
        emb = self.require("token_embd.weight")
        heads = self.integer(a + "attention.head_count", 1, MAX_HEADS)
        p = {
            "family": fam.name,
            "vocab": self.integer(a + "vocab_size", 1, MAX_VOCAB, default=emb.shape[0]),
            "hidden": self.integer(a + "embedding_length", 1, MAX_HIDDEN),
            "layers": self.integer(a + "block_count", 1, MAX_LAYERS),
            "heads": heads,
            "kv_heads": self.integer(a + "attention.head_count_kv", 1, heads, default=heads),
            "ffn": self.integer(a + "feed_forward_length", 1, MAX_FFN),
            "context": self.integer(a + "context_length", 1, MAX_CONTEXT),
            "norm_eps": self.real(
                a + "attention.layer_norm_rms_epsilon", MIN_NORM_EPS, MAX_NORM_EPS
            ),
            # only an absent key takes the usual base; a stated 0 is an error, not a default
            "rope_theta": self.real(
                a + "rope.freq_base", MIN_ROPE_THETA, MAX_ROPE_THETA, default=10000.0
            ),
            "tie_embeddings": "output.weight" not in self.tensors,
            "rope_style": fam.gguf_rope_style,
        }
        self._check_params(p, a)
        config = {k: v for k, v in p.items()} | self.family_params()
        self.check_config(ModelConfig(**config))
        return p

    def family_params(self) -> dict:
        fam = self.family()
        if fam.name == "llama":
            return {}
        a = fam.gguf_arch + "."
        hd = self.integer(a + "attention.key_length", 1, MAX_HIDDEN)
        self.integer(a + "attention.value_length", hd, hd, default=None)
        extra = {"key_length": hd}
        if fam.sliding_period:
            extra["window"] = self.integer(a + "attention.sliding_window", 1, MAX_CONTEXT)
        return extra

    def _check_params(self, p: dict, a: str) -> None:
        """The hyper-parameters agree with each other and with the tensors present."""
        if not 1 <= p["vocab"] <= MAX_VOCAB:
            raise ModelFileError(
                f"{self.path}: tensor 'token_embd.weight' has {p['vocab']} rows, "
                f"more than the {MAX_VOCAB} tokens ckeir reads"
            )
        pairs = [
            (a + "attention.head_count", p["heads"], a + "attention.head_count_kv", p["kv_heads"])
        ]
        if p["family"] == "llama":  # a llama's heads are hidden / heads wide
            pairs.insert(
                0, (a + "embedding_length", p["hidden"], a + "attention.head_count", p["heads"])
            )
        for whole_key, whole, part_key, part in pairs:
            if whole % part:
                raise ModelFileError(
                    f"{self.path}: metadata '{whole_key}' ({whole}) is not a multiple of "
                    f"'{part_key}' ({part})"
                )
        # ckeir rotates and attends over whole heads: a partial RoPE or a head width other
        # than hidden / heads would run, and compute something else
        if p["family"] == "llama":
            for key in _HEAD_DIM_KEYS:
                hd = p["hidden"] // p["heads"]
                self.integer(a + key, hd, hd, default=None)
        present = self.layer_count()
        if p["layers"] != present:
            raise ModelFileError(
                f"{self.path}: metadata '{a}block_count' is {p['layers']}, but the file "
                f"holds tensors for {present} layers"
            )


class SafetensorsFile(ModelFile):
    """A Hugging Face safetensors file.  The `safetensors` package validates its header (JSON
    of bounded size, offsets inside the file, byte sizes that match shapes and types); the
    tensors are then views into a map of the file in their stored type, as for GGUF: the
    package's numpy loader cannot return bfloat16 or float8, and would copy the rest."""

    def __init__(self, path: Path):
        self.path = _regular_file(path)
        try:
            from safetensors import safe_open

            safe_open(str(self.path), framework="numpy")
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(
                f"{self.path}: not a readable safetensors file ({_why(e)})"
            ) from None
        self.tensors, self._offsets = {}, {}
        header, start = self._header()
        keys = [k for k in header if k != "__metadata__"]
        self.hf_family = by_hf_names(keys)
        layer_names = {**_HF_LAYER, **dict(self.hf_family.hf_layer_names)}
        self._shifted: dict[str, str] = {}  # norm weights read as stored + the shift: format
        for key in keys:
            entry = header[key]
            name = _hf_to_gguf(key, layer_names)
            begin, end = entry["data_offsets"]
            fmt = _st_format(entry["dtype"])
            if self.hf_family.hf_norm_shift and key.endswith("norm.weight"):
                self._shifted[name], fmt = fmt, "f32"
            self.tensors[name] = TensorInfo(name, tuple(entry["shape"]), fmt)
            self._offsets[name] = (start + begin, end - begin)

    def _header(self) -> tuple[dict, int]:
        """The header (already validated by `safetensors`) and where the data begin."""
        buf = self._bytes()
        n = int(buf[:8].view("<u8")[0])
        return json.loads(bytes(buf[8 : 8 + n])), 8 + n

    def params(self) -> dict:
        raise ModelFileError(
            f"{self.path}: safetensors carry no hyper-parameters; state them "
            "in the model (vocab, hidden, layers, heads, kv_heads, ffn, context)"
        )

    def data(self, name: str) -> np.ndarray:
        """As stored, but a norm weight of a family whose RMSNorm computes with w + shift
        (Gemma: 1 + w) is read as f32 w + shift, what GGUF files of the family hold."""
        stored = self._shifted.get(name)
        if stored is None:
            return super().data(name)
        offset, nbytes = self._offsets[name]
        raw = self._bytes()[offset : offset + nbytes]
        if len(raw) != nbytes:  # the file shrank since it was opened
            raise ModelFileError(f"{self.path}: tensor '{name}' is truncated")
        if stored not in ("f32", "f16", "bf16"):
            raise ModelFileError(
                f"{self.path}: norm tensor '{name}' is {stored.upper()}: F32, F16 or BF16 expected"
            )
        if stored == "bf16":
            w = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            w = raw.view(np.float32 if stored == "f32" else np.float16).astype(np.float32)
        shape = self.tensors[name].shape
        return (w + np.float32(self.hf_family.hf_norm_shift)).reshape(shape)

    def check_config(self, cfg: ModelConfig) -> None:
        """As for any file, and the checkpoint's family is the model's: Gemma 3's norms
        under a llama would be read by another graph (and without their +1)."""
        if self.hf_family.hf_marker and cfg.family != self.hf_family.name:
            raise ModelFileError(
                f"{self.path}: the checkpoint holds {self.hf_family.name}'s tensors "
                f"(model.layers.N.{self.hf_family.hf_marker}), but the model is family "
                f"{cfg.family}",
                hint=f"state `family {self.hf_family.name}` in the model",
            )
        super().check_config(cfg)


_HF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _hf_to_gguf(name: str, layer_names: dict[str, str] = _HF_LAYER) -> str:
    if name in _HF:
        return _HF[name]
    parts = name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"]:
        inner = ".".join(parts[3:-1])
        if inner in layer_names:
            return f"blk.{parts[2]}.{layer_names[inner]}.weight"
    return name


def _st_format(dtype: str) -> str:
    return {"F32": "f32", "F16": "f16", "BF16": "bf16"}.get(dtype, dtype.lower())


def _regular_file(path) -> Path:
    """`path`, if it names a regular file (a device or a FIFO would read forever or block)."""
    path = Path(path)
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such model file"
        raise ModelFileError(f"{path}: {what}")
    return path


def _why(e: Exception) -> str:
    return str(e).split("\n")[0][:200] or type(e).__name__


def open_model_file(kind: str, path: Path) -> ModelFile:
    if kind == "gguf":
        return GGUFFile(path)
    if kind == "safetensors":
        return SafetensorsFile(path)
    raise ModelFileError(f"{path}: unknown weights kind '{kind}'")
