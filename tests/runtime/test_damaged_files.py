"""Damaged and hostile model files: every count and length is checked against the file before
it sizes work or memory, every hyper-parameter against its type, its range and the tensors
present, and each failure is a ModelFileError naming the file and the key or tensor.

Header damage runs in a subprocess that measures its own peak memory: a damaged file is
refused in bounded time with memory at most twice its size plus a constant."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from cli_runner import ckec
from gguf import GGUFValueType as V
from ggufgen import (
    CFG,
    array,
    gstr,
    kv,
    raw_gguf,
    spec_for,
    tensor_info,
    u32,
    u64,
    write_gguf,
)

import ckeir
from ckeir import cache
from ckeir.errors import ModelFileError
from ckeir.models.files import INDEX_VERSION, GGUFFile
from ckeir.runtime.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own cache: an index cached by one must not answer for another."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path / "cache"))


# ---- header damage, in a subprocess that measures itself --------------------------------------

PROBE = """
import json, resource, sys
from ckeir.errors import CkeError
from ckeir.models.files import GGUFFile
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    GGUFFile(sys.argv[1]).params()
    out = {"error": None}
except CkeError as e:
    out = {"error": str(e)}
out["grew"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps(out))
"""
SLACK = 16 << 20  # the constant in "peak memory <= 2x the file + a constant"


def probe(path, tmp_path) -> dict:
    """Open `path` in a fresh process (60 s at most); its error text and memory growth."""
    env = dict(os.environ, CKEIR_CACHE_DIR=str(tmp_path / "probe-cache"))
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


A = b"x" * 64  # some bytes after the damage, so nothing is refused for plain truncation
F32 = 0  # GGML type
HEADER_DAMAGE = {
    "last key an ARRAY<UINT8> of 2**40": (
        raw_gguf(
            [kv("general.name", V.STRING, gstr("m")), kv("x", V.ARRAY, array(V.UINT8, 1 << 40, A))]
        ),
        "metadata 'x'",
    ),
    "an ARRAY<STRING> of 2**40": (
        raw_gguf([kv("tokenizer.ggml.tokens", V.ARRAY, array(V.STRING, 1 << 40, A))]),
        "metadata 'tokenizer.ggml.tokens'",
    ),
    "a string of 2**60 bytes": (
        raw_gguf([kv("general.name", V.STRING, u64(1 << 60) + A)]),
        "metadata 'general.name'",
    ),
    "a key of 2**60 bytes": (raw_gguf([u64(1 << 60) + A], n_kv=1), "metadata key 0"),
    "a key that is not UTF-8": (
        raw_gguf([kv(b"\xff\xfe", V.UINT32, u32(1))]),
        "not UTF-8",
    ),
    "2**40 tensors": (raw_gguf(n_tensors=1 << 40, tail=A), "tensors"),
    "2**40 keys": (raw_gguf(n_kv=1 << 40, tail=A), "metadata keys"),
    "more keys than the bytes that follow": (raw_gguf(n_kv=100, tail=A), "100 metadata keys"),
    "arrays nested 6 deep": (
        raw_gguf(
            [
                kv(
                    "x",
                    V.ARRAY,
                    array(
                        V.ARRAY,
                        1,
                        array(
                            V.ARRAY,
                            1,
                            array(
                                V.ARRAY, 1, array(V.ARRAY, 1, array(V.ARRAY, 1, array(V.UINT8, 0)))
                            ),
                        ),
                    ),
                )
            ]
        ),
        "nests arrays",
    ),
    "an unknown value type": (raw_gguf([kv("x", 99, A)]), "unknown value type 99"),
    "a key twice": (
        raw_gguf([kv("x", V.UINT32, u32(1)), kv("x", V.UINT32, u32(2))], tail=A),
        "'x' appears twice",
    ),
    "2**32-1 dimensions": (
        raw_gguf(tensors=[gstr("t") + u32(0xFFFFFFFF) + A]),
        "4294967295 dimensions",
    ),
    "dims whose product wraps 64 bits": (
        raw_gguf(tensors=[tensor_info("t", [1 << 32, 1 << 32])], tail=A),
        "tensor 't' is truncated",
    ),
    "2**40-element dims": (
        raw_gguf(tensors=[tensor_info("t", [1 << 20, 1 << 20])], tail=A),
        "tensor 't' is truncated",
    ),
    "an offset past the end": (
        raw_gguf(tensors=[tensor_info("t", [8], offset=1 << 50)], tail=A),
        "tensor 't' is truncated",
    ),
    "a misaligned offset": (
        raw_gguf(tensors=[tensor_info("t", [8], offset=4)], tail=A),
        "not a multiple of the alignment",
    ),
    "an alignment of 3": (
        raw_gguf([kv("general.alignment", V.UINT32, u32(3))], tail=A),
        "'general.alignment' is UINT32 3",
    ),
    "an alignment that is a string": (
        raw_gguf([kv("general.alignment", V.STRING, gstr("32"))], tail=A),
        "'general.alignment' is STRING '32'",
    ),
    "an unknown tensor type": (
        raw_gguf(tensors=[tensor_info("t", [8], ggml_type=200)], tail=A),
        "unknown tensor type 200",
    ),
    "a row that is not whole blocks": (
        raw_gguf(tensors=[tensor_info("t", [33], ggml_type=8)], tail=A),  # Q8_0
        "row length 33",
    ),
    "two tensors of one name": (
        raw_gguf(tensors=[tensor_info("t", [8]), tensor_info("t", [8], offset=32)], tail=A * 2),
        "same name",
    ),
    "version 1": (raw_gguf(version=1), "version 1"),
    "big-endian": (b"GGUF" + (3).to_bytes(4, "big") + bytes(16), "big-endian"),
    "no magic": (b"GGML" + bytes(20), "not a GGUF file"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("case", list(HEADER_DAMAGE))
def test_damaged_header_refused_in_bounded_time_and_memory(case, tmp_path):
    data, fragment = HEADER_DAMAGE[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    out = probe(path, tmp_path)
    assert out["error"] is not None and str(path) in out["error"], out
    assert fragment in out["error"], out
    assert out["grew"] <= 2 * len(data) + SLACK, out


def test_big_file_with_a_huge_last_array_stays_within_twice_its_size(tmp_path):
    """12 MiB of valid metadata (a long string, a float array), then a last key claiming
    ARRAY<UINT8> of 2**40: refused, with memory bounded by the file, not the claim."""
    data = raw_gguf(
        [
            kv("general.name", V.STRING, gstr("a" * (8 << 20))),
            kv("tokenizer.ggml.scores", V.ARRAY, array(V.FLOAT32, 1 << 20, bytes(4 << 20))),
            kv("x", V.ARRAY, array(V.UINT8, 1 << 40, A)),
        ]
    )
    path = tmp_path / "big.gguf"
    path.write_bytes(data)
    out = probe(path, tmp_path)
    assert "metadata 'x'" in out["error"] and str(path) in out["error"]
    assert out["grew"] <= 2 * len(data) + SLACK, out


def test_every_truncation_point_is_refused(tmp_path):
    whole = write_gguf(tmp_path / "m.gguf", tokenizer=False).read_bytes()
    header = whole.index(b"token_embd.weight") + 64  # past the metadata, into the tensor table
    cut = tmp_path / "cut.gguf"
    for n in [*range(header), *range(header, len(whole), 997)]:
        cut.write_bytes(whole[:n])
        with pytest.raises(ModelFileError) as e:
            GGUFFile(cut).params()
        assert str(cut) in str(e.value), n


# ---- hyper-parameters: type, range, agreement with the tensors ---------------------------------

EPS = "llama.attention.layer_norm_rms_epsilon"
BAD_PARAMS = {
    "embedding_length a string": (
        {"llama.embedding_length": ("64", V.STRING)},
        "'llama.embedding_length' is STRING '64', expected an integer",
    ),
    "head_count an array": (
        {"llama.attention.head_count": ([4, 4], V.ARRAY, V.INT32)},
        "'llama.attention.head_count' is an ARRAY of 2 INT32, expected an integer",
    ),
    "feed_forward_length a float": (
        {"llama.feed_forward_length": (128.0, V.FLOAT32)},
        "'llama.feed_forward_length' is FLOAT32 128.0",
    ),
    "block_count a bool": ({"llama.block_count": (True, V.BOOL)}, "'llama.block_count' is BOOL"),
    "rms_epsilon NaN": ({EPS: (math.nan, V.FLOAT32)}, f"'{EPS}' is FLOAT32 nan"),
    "rms_epsilon inf": ({EPS: (math.inf, V.FLOAT32)}, f"'{EPS}' is FLOAT32 inf"),
    "rms_epsilon negative": ({EPS: (-2.0, V.FLOAT32)}, f"'{EPS}' is FLOAT32 -2.0"),
    "rms_epsilon zero": ({EPS: (0.0, V.FLOAT32)}, f"'{EPS}' is FLOAT32 0.0"),
    "rms_epsilon missing": ({EPS: None}, f"'{EPS}' is missing"),
    "freq_base 0": (
        {"llama.rope.freq_base": (0.0, V.FLOAT32)},
        "'llama.rope.freq_base' is FLOAT32 0.0, expected a number",
    ),
    "block_count 10**6": (
        {"llama.block_count": (10**6, V.UINT32)},
        "'llama.block_count' is UINT32 1000000, expected an integer from 1 to 4096",
    ),
    "block_count above the tensors": (
        {"llama.block_count": (3, V.UINT32)},
        "'llama.block_count' is 3, but the file holds tensors for 2 layers",
    ),
    "context_length 2**40": (
        {"llama.context_length": (1 << 40, V.UINT64)},
        "'llama.context_length' is UINT64 1099511627776",
    ),
    "head_count not dividing the width": (
        {"llama.attention.head_count": (5, V.UINT32)},
        "'llama.embedding_length' (64) is not a multiple of 'llama.attention.head_count' (5)",
    ),
    "head_count_kv above head_count": (
        {"llama.attention.head_count_kv": (8, V.UINT32)},
        "'llama.attention.head_count_kv' is UINT32 8, expected an integer from 1 to 4",
    ),
    "embedding_length disagreeing with the tensors": (
        {"llama.embedding_length": (128, V.UINT32)},
        "tensor 'token_embd.weight' has shape [256, 64], the model needs [256, 128]",
    ),
    "vocab_size disagreeing with the tensors": (
        {"llama.vocab_size": (300, V.UINT32)},
        "tensor 'token_embd.weight' has shape [256, 64], the model needs [300, 64]",
    ),
    "partial RoPE": (
        {"llama.rope.dimension_count": (8, V.UINT32)},
        "'llama.rope.dimension_count' is UINT32 8, expected the integer 16",
    ),
    "another head width": (
        {"llama.attention.key_length": (32, V.UINT32)},
        "'llama.attention.key_length' is UINT32 32, expected the integer 16",
    ),
    "architecture a number": (
        {"general.architecture": (7, V.UINT32)},
        "'general.architecture' is UINT32 7, expected a STRING",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_bad_hyper_parameter_is_named(case, tmp_path):
    meta, fragment = BAD_PARAMS[case]
    path = write_gguf(tmp_path / "m.gguf", meta=meta)
    with pytest.raises(ModelFileError) as e:
        ckeir.compile(spec_for(path, tmp_path), backend="reference").generate([1, 2], 2)
    assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_absent_freq_base_takes_the_usual_value(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", meta={"llama.rope.freq_base": None})
    assert GGUFFile(path).params()["rope_theta"] == 10000.0


def test_a_million_layers_refused_by_the_cli_before_any_ir(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", meta={"llama.block_count": (10**6, V.UINT32)})
    r = ckec("run", spec_for(path, tmp_path), "--ids", "1", "-n", "1", timeout=120)
    assert r.returncode == 1, r.stderr
    assert "error:" in r.stderr and str(path) in r.stderr and "llama.block_count" in r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr


# ---- tokenizer metadata -----------------------------------------------------------------------

N = CFG.vocab
# byte tokens with the last one replaced by 'ab', and the merge that makes it
GOOD_TOKENIZER = {
    "tokenizer.ggml.tokens": ([chr(b) for b in range(N - 1)] + ["ab"], V.ARRAY, V.STRING),
    "tokenizer.ggml.merges": (["a b"], V.ARRAY, V.STRING),
}
BAD_TOKENIZER = {
    "tokens not strings": (
        {"tokenizer.ggml.tokens": (list(range(N)), V.ARRAY, V.INT32)},
        f"'tokenizer.ggml.tokens' is an ARRAY of {N} INT32, expected an ARRAY of",
    ),
    "more tokens than embedding rows": (
        {"tokenizer.ggml.tokens": ([chr(b) for b in range(N + 1)], V.ARRAY, V.STRING)},
        f"is an ARRAY of {N + 1} STRING, expected an ARRAY of 1 to {N} string values",
    ),
    "token types of another length": (
        {"tokenizer.ggml.token_type": ([1] * (N - 1), V.ARRAY, V.INT32)},
        f"'tokenizer.ggml.token_type' is an ARRAY of {N - 1} INT32, expected an ARRAY of {N}",
    ),
    "scores of another length": (
        {"tokenizer.ggml.scores": ([0.0] * 3, V.ARRAY, V.FLOAT32)},
        "'tokenizer.ggml.scores' is an ARRAY of 3 FLOAT32",
    ),
    "a merge without a space": (
        {"tokenizer.ggml.merges": (["ab"], V.ARRAY, V.STRING)},
        "'tokenizer.ggml.merges' entry 0 ('ab') is not a BPE merge",
    ),
    "a merge of tokens not in the vocabulary": (
        {"tokenizer.ggml.merges": (["a b", "a c"], V.ARRAY, V.STRING)},  # 'ac' is no token
        "'tokenizer.ggml.merges' entry 1 ('a c') is not a BPE merge",
    ),
    "merges missing": ({"tokenizer.ggml.merges": None}, "'tokenizer.ggml.merges' is missing"),
    "bos id out of range": (
        {"tokenizer.ggml.bos_token_id": (N, V.UINT32)},
        f"'tokenizer.ggml.bos_token_id' is UINT32 {N}, expected an integer from 0 to {N - 1}",
    ),
    "eos id a string": (
        {"tokenizer.ggml.eos_token_id": ("2", V.STRING)},
        "'tokenizer.ggml.eos_token_id' is STRING '2'",
    ),
    "tokenizer model a number": (
        {"tokenizer.ggml.model": (2, V.UINT32)},
        "'tokenizer.ggml.model' is UINT32 2, expected a STRING",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TOKENIZER))
def test_bad_tokenizer_metadata_is_named(case, tmp_path):
    meta, fragment = BAD_TOKENIZER[case]
    path = write_gguf(tmp_path / "m.gguf", meta={**GOOD_TOKENIZER, **meta})
    tk = Tokenizer.from_gguf(GGUFFile(path))
    with pytest.raises(ModelFileError) as e:
        tk.encode("hello")
    assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_the_good_tokenizer_builds(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", meta=GOOD_TOKENIZER)
    tk = Tokenizer.from_gguf(GGUFFile(path))
    assert tk.encode("ab") == [N - 1] and tk.decode([N - 1]) == "ab"


def test_ids_run_without_a_tokenizer_and_text_is_refused(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tokenizer=False)
    spec = spec_for(path, tmp_path)
    r = ckec("run", spec, "--ids", "1,2,3", "-n", "3", "--backend", "reference", timeout=300)
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.split()[-1].split(",")]
    assert len(ids) == 3 and all(0 <= i < CFG.vocab for i in ids)
    r = ckec("run", spec, "--prompt", "hi", "-n", "3", "--backend", "reference", timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error:" in r.stderr and str(path) in r.stderr and "no tokenizer" in r.stderr


def test_ids_run_through_the_api_without_a_tokenizer(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tokenizer=False)
    prog = ckeir.compile(spec_for(path, tmp_path), backend="reference")
    assert len(prog.generate([1, 2, 3], 4)) == 4


# ---- the cached index -------------------------------------------------------------------------


def index_json(metadata) -> bytes:
    """An index of this version holding `metadata` and no tensors."""
    return json.dumps({"version": INDEX_VERSION, "metadata": metadata, "tensors": []}).encode()


WRONG_VALUE = index_json({"k": {"type": "UINT32", "value": "2"}})
DAMAGED_INDEX = {
    "not JSON": b"{not json",
    "a list": b"[]",
    "metadata not a mapping": index_json(1),
    "a value of the wrong type": WRONG_VALUE,
    "nested too deep for the decoder": b"[" * 100000,
}


@pytest.mark.parametrize("case", list(DAMAGED_INDEX))
def test_a_damaged_index_is_rebuilt_with_one_warning(case, tmp_path, capsys):
    path = write_gguf(tmp_path / "m.gguf")
    params = GGUFFile(path).params()
    (entry,) = (tmp_path / "cache" / "gguf").iterdir()
    cache.write_atomic(
        entry, DAMAGED_INDEX[case]
    )  # a valid cache entry holding content that decodes badly
    capsys.readouterr()
    assert GGUFFile(path).params() == params
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and str(entry) in err[0], err
    assert json.loads(cache.read(entry))["version"] == INDEX_VERSION  # rewritten whole
    GGUFFile(path)
    assert capsys.readouterr().err == ""  # healed: silent
