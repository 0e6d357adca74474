"""Model files: hyper-parameters, the tensor table, and memory-mapped tensor data.

GGUF is read with the `gguf` package (`GGUFReader` maps the file; tensor data are numpy views
into the map, so nothing is copied or widened to float32).  Safetensors is read with the
`safetensors` package, also memory-mapped.  Every failure — missing file, wrong magic,
truncation, unsupported tensor type — becomes a `ModelFileError` naming the file (and the
tensor).

GGUF's llama Q/K projections are stored permuted for the interleaved-pair RoPE convention, so a
GGUF llama runs with `rope_style = interleaved`; Hugging Face safetensors use `halves`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import attrs
import numpy as np

from ckeir import cache
from ckeir.errors import ModelFileError
from ckeir.formats import FORMATS


@attrs.frozen
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, row length)
    format: str  # a name in ckeir.formats.FORMATS, or the file's own type name if unsupported


class ModelFile:
    """Common interface of GGUF and safetensors files."""

    path: Path
    tensors: dict[str, TensorInfo]

    def params(self) -> dict:
        raise NotImplementedError

    def data(self, name: str) -> np.ndarray:
        """The stored tensor: float32 (rows, K) or uint8 GGML blocks (rows, row bytes)."""
        raise NotImplementedError

    def metadata(self, key: str, default=None):
        return default

    def require(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: tensor '{name}' is missing")
        return info


class GGUFFile(ModelFile):
    """A GGUF file.  The first open parses it with `gguf.GGUFReader` and caches an index
    (metadata, tensor table with byte offsets, keyed by path, size and mtime); later opens
    read the index and map the file, which skips parsing ~100k tokenizer strings."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such model file")
        st = self.path.stat()
        key = hashlib.sha256(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        self._index_path = cache.cache_dir() / "gguf" / f"{key.hexdigest()[:32]}.json"
        raw = cache.read(self._index_path)
        index = json.loads(raw) if raw else self._parse_index()
        if raw is None:
            cache.write_atomic(self._index_path, json.dumps(index).encode())
        self._meta = index["metadata"]
        self._offsets = {t["name"]: (t["offset"], t["bytes"]) for t in index["tensors"]}
        self.tensors = {
            t["name"]: TensorInfo(t["name"], tuple(t["shape"]), t["format"])
            for t in index["tensors"]
        }
        self._map = None

    def _parse_index(self) -> dict:
        from gguf import GGUFReader

        try:
            reader = GGUFReader(self.path, "r")
        except Exception as e:  # the reader raises ValueError, struct.error, IndexError...
            raise ModelFileError(f"{self.path}: not a readable GGUF file ({_why(e)})") from None
        meta = {}
        for key, field in reader.fields.items():
            try:
                value = field.contents()
            except Exception:  # noqa: BLE001 - a malformed field reads as absent
                continue
            if isinstance(value, (str, int, float, bool, list)):
                meta[key] = value
        tensors = []
        for t in reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > reader.data.shape[0]:
                raise ModelFileError(
                    f"{self.path}: tensor '{t.name}' is truncated "
                    f"(ends at byte {end}, the file has {reader.data.shape[0]})"
                )
            tensors.append(
                {
                    "name": t.name,
                    "shape": [int(d) for d in reversed(t.shape.tolist())],
                    "format": t.tensor_type.name.lower(),
                    "offset": int(t.data_offset),
                    "bytes": int(t.n_bytes),
                }
            )
        return {"metadata": meta, "tensors": tensors}

    def metadata(self, key: str, default=None):
        return self._meta.get(key, default)

    def params(self) -> dict:
        arch = self.metadata("general.architecture")
        if arch != "llama":
            raise ModelFileError(f"{self.path}: architecture '{arch}' is not supported (llama)")
        m = lambda k: self.metadata(f"llama.{k}")  # noqa: E731
        heads = m("attention.head_count")
        p = {
            "family": "llama",
            "hidden": m("embedding_length"),
            "layers": m("block_count"),
            "heads": heads,
            "kv_heads": m("attention.head_count_kv") or heads,
            "ffn": m("feed_forward_length"),
            "context": m("context_length"),
            "norm_eps": m("attention.layer_norm_rms_epsilon"),
            "rope_theta": m("rope.freq_base") or 10000.0,
            "tie_embeddings": "output.weight" not in self.tensors,
            "rope_style": "interleaved",
        }
        emb = self.tensors.get("token_embd.weight")
        p["vocab"] = m("vocab_size") or (emb.shape[0] if emb else None)
        missing = [k for k, v in p.items() if v is None]
        if missing:
            raise ModelFileError(f"{self.path}: metadata lacks {', '.join(missing)}")
        return {k: (float(v) if k in ("norm_eps", "rope_theta") else v) for k, v in p.items()}

    def data(self, name: str) -> np.ndarray:
        info = self.require(name)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        offset, nbytes = self._offsets[name]
        raw = self._map[offset : offset + nbytes]
        if len(raw) != nbytes:
            raise ModelFileError(f"{self.path}: tensor '{name}' is truncated")
        fmt = FORMATS.get(info.format)
        if fmt is not None and fmt.quantized:
            rows = int(np.prod(info.shape[:-1]))
            return raw.reshape(rows, fmt.row_bytes(info.shape[-1]))
        if fmt is not None:
            dtype = {"f32": np.float32, "f16": np.float16}[fmt.name]
            return raw.view(dtype).reshape(info.shape)
        return raw  # a type ckeir cannot compute on: converted (or refused) by the caller


class SafetensorsFile(ModelFile):
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such model file")
        try:
            from safetensors import safe_open

            self._f = safe_open(str(self.path), framework="numpy")
            keys = list(self._f.keys())
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(
                f"{self.path}: not a readable safetensors file ({_why(e)})"
            ) from None
        self.tensors = {}
        for k in keys:
            sl = self._f.get_slice(k)
            self.tensors[_hf_to_gguf(k)] = TensorInfo(
                _hf_to_gguf(k), tuple(sl.get_shape()), _st_format(sl.get_dtype())
            )
        self._names = {_hf_to_gguf(k): k for k in keys}

    def params(self) -> dict:
        raise ModelFileError(
            f"{self.path}: safetensors carry no hyper-parameters; state them "
            "in the model (vocab, hidden, layers, heads, kv_heads, ffn, context)"
        )

    def data(self, name: str) -> np.ndarray:
        self.require(name)
        return np.ascontiguousarray(self._f.get_tensor(self._names[name]), dtype=np.float32)


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


def _hf_to_gguf(name: str) -> str:
    if name in _HF:
        return _HF[name]
    parts = name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"]:
        inner = ".".join(parts[3:-1])
        if inner in _HF_LAYER:
            return f"blk.{parts[2]}.{_HF_LAYER[inner]}.weight"
    return name


def _st_format(dtype: str) -> str:
    return {"F32": "f32", "F16": "f16", "BF16": "bf16"}.get(dtype, dtype.lower())


def _why(e: Exception) -> str:
    return str(e).split("\n")[0][:200] or type(e).__name__


def open_model_file(kind: str, path: Path) -> ModelFile:
    if kind == "gguf":
        return GGUFFile(path)
    if kind == "safetensors":
        return SafetensorsFile(path)
    raise ModelFileError(f"{path}: unknown weights kind '{kind}'")
