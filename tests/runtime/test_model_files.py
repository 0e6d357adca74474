"""Model files: hyper-parameters from GGUF metadata, weights memory-mapped in their stored
format, and clear errors that name the file and the tensor."""

import json
import os

import numpy as np
import pytest
from cli_runner import ckec
from ggufgen import CFG, spec_for, write_gguf

import ckeir
from ckeir import cache
from ckeir.errors import CkeError, ModelFileError
from ckeir.models import files
from ckeir.models.files import INDEX_VERSION, GGUFFile


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "m.gguf")


def test_params_from_metadata(model_path):
    p = GGUFFile(model_path).params()
    assert p["hidden"] == 64 and p["layers"] == 2 and p["heads"] == 4 and p["kv_heads"] == 2
    assert p["vocab"] == 256 and p["tie_embeddings"] and p["rope_style"] == "interleaved"


def test_weights_are_memory_mapped_not_copied(model_path, tmp_path):
    prog = ckeir.compile(spec_for(model_path, tmp_path), backend="reference")
    w = prog.weights["blk.0.attn_q.weight"]
    assert w.dtype == np.uint8 and isinstance(w.base, np.memmap) or isinstance(w, np.memmap)
    assert prog.weight_formats["blk.0.attn_q.weight"] == "q8_0"


def test_native_runs_compute_on_a_copy_that_equals_the_file(model_path, tmp_path):
    """The native backend copies the file's tensors (onto huge pages when large enough) as
    its programs take them, and unmaps their file pages; the file still reads the same after,
    and the run gives the ids of a run on the mapped file."""
    spec = spec_for(model_path, tmp_path)
    with ckeir.compile(spec, threads=1, huge_pages=True) as prog:
        copied = prog.generate([1, 2, 3], 5)
        w = prog.weights["blk.0.attn_q.weight"]
        m = prog.job.model_file._bytes()
        assert not m.ctypes.data <= w.ctypes.data < m.ctypes.data + m.nbytes
        assert np.array_equal(w, prog.job.model_file.data("blk.0.attn_q.weight"))
    with ckeir.compile(spec, threads=1, huge_pages=False) as prog:
        assert prog.generate([1, 2, 3], 5) == copied
        w = prog.weights["blk.0.attn_q.weight"]
        m = prog.job.model_file._bytes()
        assert m.ctypes.data <= w.ctypes.data < m.ctypes.data + m.nbytes


def test_keep_vs_requantize_in_ir(model_path, tmp_path):
    text = ckeir.compile(spec_for(model_path, tmp_path, "q4_1"), backend="reference").mlir()
    assert "tensor<64x64x!cke.q4_1>" in text and "!cke.q8_0" not in text


def test_spec_that_disagrees_with_the_file(model_path, tmp_path):
    with pytest.raises(CkeError) as e:
        ckeir.compile(spec_for(model_path, tmp_path, extra="hidden 128"), backend="reference")
    assert "hidden" in str(e.value) and str(model_path) in str(e.value)
    assert e.value.loc is not None and e.value.loc.line == 2


@pytest.mark.parametrize("damage", ["magic", "truncated", "empty"])
def test_broken_files(model_path, tmp_path, damage):
    data = model_path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(
        {"magic": b"GGUX" + data[4:], "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    with pytest.raises(ModelFileError) as e:
        prog = ckeir.compile(spec_for(bad, tmp_path), backend="reference")
        _ = prog.weights
    assert str(bad) in str(e.value)


# A GGUF file states every hyper-parameter, so its tensors are checked against them when
# the spec is resolved, before any IR is built.


def test_missing_tensor(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ModelFileError, match="blk.1.ffn_up.weight.*missing"):
        ckeir.compile(spec_for(path, tmp_path), backend="reference")


def test_shape_mismatch(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", fmt="f32", reshape={"blk.0.ffn_down.weight": (64, 96)})
    with pytest.raises(ModelFileError, match=r"blk.0.ffn_down.weight.*\[64, 96\].*\[64, 128\]"):
        ckeir.compile(spec_for(path, tmp_path), backend="reference")


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch="gpt2")
    with pytest.raises(ModelFileError, match="architecture 'gpt2'"):
        ckeir.compile(spec_for(path, tmp_path), backend="reference")


def test_cli_reports_bad_file_without_traceback(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    r = ckec("run", spec_for(bad, tmp_path), "--ids", "1", "-n", "1", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(bad) in r.stderr


def test_reference_runs_a_gguf_model(model_path, tmp_path):
    out = ckeir.compile(spec_for(model_path, tmp_path), backend="reference").generate([1, 2, 3], 5)
    assert len(out) == 5 and all(0 <= t < CFG.vocab for t in out)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "directory", "nul\0byte", "absent"])
def test_only_regular_files_are_read(tmp_path, target):
    """A device, a FIFO or a directory would read forever, block or fail oddly."""
    (tmp_path / "directory").mkdir()
    os.mkfifo(tmp_path / "fifo")
    path = target if target.startswith("/") else str(tmp_path / target)
    with pytest.raises(ModelFileError) as e:
        GGUFFile(path)
    what = "no such model file" if target in ("absent", "nul\0byte") else "not a regular file"
    assert what in str(e.value) and target.split("\0")[0] in str(e.value)


# ---- the cached index is versioned ----------------------------------------------------------


def index_entries(root) -> list:
    return sorted((root / "gguf").iterdir())


def test_an_index_of_another_version_is_discarded_and_rebuilt(tmp_path, monkeypatch, capsys):
    """An entry whose content says another INDEX_VERSION (written by another ckeir) is not
    read: it is discarded with one warning and rebuilt in this version's form."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "m.gguf")
    params = GGUFFile(path).params()
    (entry,) = index_entries(tmp_path / "cache")
    index = json.loads(cache.read(entry))
    assert index["version"] == INDEX_VERSION
    index["version"] = INDEX_VERSION + 1
    index["metadata"]["llama.block_count"]["value"] = 99  # what an old reader would return
    cache.write_atomic(entry, json.dumps(index).encode())
    capsys.readouterr()
    assert GGUFFile(path).params() == params
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning:") and "another index version" in warning, warning
    assert json.loads(cache.read(entry))["version"] == INDEX_VERSION


def test_a_new_index_version_does_not_read_the_old_entries(tmp_path, monkeypatch, capsys):
    """Bumping INDEX_VERSION changes every entry's key: the old entry is not consulted at
    all (no warning), a new one is written beside it."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "m.gguf")
    params = GGUFFile(path).params()
    (old,) = index_entries(tmp_path / "cache")
    monkeypatch.setattr(files, "INDEX_VERSION", INDEX_VERSION + 1)
    capsys.readouterr()
    assert GGUFFile(path).params() == params
    assert capsys.readouterr().err == ""
    new = next(p for p in index_entries(tmp_path / "cache") if p != old)
    assert json.loads(cache.read(new))["version"] == INDEX_VERSION + 1
    assert json.loads(cache.read(old))["version"] == INDEX_VERSION  # left as it was
