"""`quantize weights keep` on files of every type ckeir computes on (issue 15): the run holds
the file's bytes (no tensor widened to f32), a decode step reads them (the run report's
active bytes per token), and the native run gives the numpy reference's ids.  A type ckeir
has no kernels for is named before anything compiles."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runner import ckec
from ggufgen import spec_for, write_gguf

import ckeir
from ckeir.errors import CkeError, ModelFileError
from ckeir.formats import FORMATS
from ckeir.models.files import GGUFFile
from ckeir.models.llama import LlamaConfig
from ckeir.reports.run import decode_active_bytes

# rows of 256 (the K-quants' super-block) everywhere; the matrices outweigh a decode step's
# activations and cache 60 to 1
CFG = LlamaConfig(
    vocab=256,
    hidden=256,
    layers=2,
    heads=4,
    kv_heads=2,
    ffn=512,
    context=64,
    norm_eps=1e-5,
    rope_theta=10000.0,
    tie_embeddings=True,
    rope_style="interleaved",
)
PROMPT = [1, 2, 3, 4]
TYPES = ["f16", "bf16", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]


def matrix_bytes(path) -> dict[str, int]:
    """The file's 2-D tensors and their bytes as stored."""
    f = GGUFFile(path)
    return {n: f.data(n).nbytes for n, t in f.tensors.items() if len(t.shape) == 2}


@pytest.fixture(scope="module", params=TYPES)
def kept(request, tmp_path_factory):
    fmt = request.param
    tmp = tmp_path_factory.mktemp(fmt)
    path = write_gguf(tmp / f"m-{fmt}.gguf", CFG, fmt=fmt, seed=3)
    spec = spec_for(path, tmp)
    with ckeir.compile(spec, threads=2) as prog:
        ids = prog.generate(PROMPT, max_new_tokens=6)
        held = {n: prog.weights[n].nbytes for n in matrix_bytes(path)}
        formats = dict(prog.weight_formats)
        active = decode_active_bytes(prog, len(PROMPT) + 3)
    return fmt, path, spec, ids, held, formats, active


def test_keep_holds_the_files_bytes(kept):
    fmt, path, _, _, held, formats, _ = kept
    assert held == matrix_bytes(path)
    assert {formats[n] for n in held} == {fmt}


@pytest.fixture(scope="module")
def besides_weights(tmp_path_factory):
    """Bytes a decode step of this model touches besides its matrices (activations, the
    cache, one embedding row), from an f32 file."""
    tmp = tmp_path_factory.mktemp("f32")
    path = write_gguf(tmp / "m-f32.gguf", CFG, fmt="f32", seed=3)
    prog = ckeir.compile(spec_for(path, tmp), backend="reference")
    return decode_active_bytes(prog, len(PROMPT) + 3) - sum(matrix_bytes(path).values())


def test_a_decode_step_reads_the_files_bytes(kept, besides_weights):
    """The run report's active bytes per token are the file's matrix bytes plus what any
    type's step touches besides (the embedding row it reads in its own type): the weights
    are read as stored, not widened."""
    fmt, path, _, _, _, _, active = kept
    stored = sum(matrix_bytes(path).values())
    row = FORMATS[fmt].row_bytes(CFG.hidden) - 4 * CFG.hidden
    assert active - besides_weights - row == stored


def test_native_ids_are_the_references(kept):
    _, _, spec, ids, _, _, _ = kept
    ref = ckeir.compile(spec, backend="reference")
    assert ref.generate(PROMPT, max_new_tokens=6) == ids


def test_a_type_without_kernels_is_named_before_compiling(tmp_path):
    """A file whose matrices are IQ4_NL: `keep` names a tensor and its type, and says what to
    schedule; `quantize weights q8_0` converts them at load and runs."""
    # IQ4_NL has Q4_0's block size and bytes (18 per 32): a Q4_0 file retyped
    path = write_gguf(tmp_path / "iq.gguf", CFG, fmt="q4_0")
    data = bytearray(path.read_bytes())
    q4_0, iq4_nl = 2, 20
    f = GGUFFile(path)
    for name in f.tensors:  # each tensor's type field: the u32 before its u64 offset
        key = name.encode()
        at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
        n_dims = int.from_bytes(data[at : at + 4], "little")
        tfield = at + 4 + 8 * n_dims
        if int.from_bytes(data[tfield : tfield + 4], "little") == q4_0:
            data[tfield : tfield + 4] = iq4_nl.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as e:  # what `resolve` can ask before any IR exists
        GGUFFile(path).check_formats("keep")
    assert str(path) in str(e.value) and "is stored as IQ4_NL" in str(e.value)
    GGUFFile(path).check_formats("q8_0")  # converted at load: nothing to refuse
    with pytest.raises(ModelFileError, match="token_embd.weight"):
        GGUFFile(path).check_formats("q8_0", ["token_embd"])
    r = ckec(spec_for(path, tmp_path), "--emit=mlir")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is stored as IQ4_NL, which ckeir cannot compute on" in r.stderr, r.stderr
    assert "quantize weights q8_0" in r.stderr
    assert str(path) in r.stderr  # named with its file before any IR is built
    with pytest.raises(CkeError, match="IQ4_NL"):
        ckeir.compile(spec_for(path, tmp_path), backend="reference")
    prog = ckeir.compile(spec_for(path, tmp_path, "q8_0"), threads=1)
    assert len(prog.generate(PROMPT, max_new_tokens=2)) == 2
    assert np.unique([prog.weight_formats[n] for n in matrix_bytes(path)]).tolist() == ["q8_0"]
