"""GGUF gemma3 files: a whole one loads as its family says (heads wider than hidden / heads,
the sliding window, the norms as stored) and runs on both backends alike; a damaged one is
refused in one line naming the file and the tensor or key, before anything compiles."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runner import ckec
from gemma3gen import gemma3_spec, write_gemma3
from gguf import GGUFValueType as V

import ckeir
from ckeir.errors import CkeError, ModelFileError
from ckeir.models.files import GGUFFile


def test_a_gemma3_file_gives_its_family_head_width_and_window(tmp_path):
    f = GGUFFile(write_gemma3(tmp_path / "g.gguf"))
    assert f.params()["family"] == "gemma3" and f.params()["rope_style"] == "halves"
    assert f.family_params() == {"key_length": 64, "window": 16}


def test_a_gemma3_file_runs_natively_as_the_reference_runs_it(tmp_path):
    spec = gemma3_spec(write_gemma3(tmp_path / "g.gguf", fmt="f32"), tmp_path)
    prompt = [int(i * 37 % 250) for i in range(30)]  # past the 16-key window
    with ckeir.compile(spec, threads=2) as native:
        assert native.config.window == 16 and native.config.head_dim == 64
        got = native.engine.prefill(np.array(prompt, np.int32), 0)[1]
    want = ckeir.compile(spec, backend="reference").engine.prefill(np.array(prompt, np.int32), 0)
    assert np.abs(got - want[1]).max() <= 1e-5 * np.abs(want[1]).max()


BAD = {
    "a per-head norm of another width": (
        dict(reshape={"blk.3.attn_k_norm.weight": (32,)}),
        "tensor 'blk.3.attn_k_norm.weight' has shape [32], the model needs [64]",
    ),
    "a missing post-FFN norm": (
        dict(drop=("blk.6.post_ffw_norm.weight",)),
        "tensor 'blk.6.post_ffw_norm.weight' is missing",
    ),
    "a missing Q norm": (
        dict(drop=("blk.0.attn_q_norm.weight",)),
        "tensor 'blk.0.attn_q_norm.weight' is missing",
    ),
    "Q of llama's width": (
        dict(reshape={"blk.2.attn_q.weight": (96, 96)}),
        "tensor 'blk.2.attn_q.weight' has shape [96, 96], the model needs [256, 96]",
    ),
    "an unknown architecture": (
        dict(arch="gemma7"),
        "architecture 'gemma7' (metadata 'general.architecture') is not one ckeir runs "
        "(families: gemma3, llama)",
    ),
    "no head width": (
        dict(meta={"gemma3.attention.key_length": None}),
        "metadata 'gemma3.attention.key_length' is missing",
    ),
    "values of another width than keys": (
        dict(meta={"gemma3.attention.value_length": (32, V.UINT32)}),
        "'gemma3.attention.value_length' is UINT32 32, expected the integer 64",
    ),
    "no sliding window": (
        dict(meta={"gemma3.attention.sliding_window": None}),
        "metadata 'gemma3.attention.sliding_window' is missing",
    ),
    "a window of 0": (
        dict(meta={"gemma3.attention.sliding_window": (0, V.UINT32)}),
        "'gemma3.attention.sliding_window' is UINT32 0, expected an integer from 1",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_damaged_gemma3_file_is_named_in_one_line(case, tmp_path):
    kw, fragment = BAD[case]
    path = write_gemma3(tmp_path / "g.gguf", **kw)
    with pytest.raises(ModelFileError) as e:
        ckeir.compile(gemma3_spec(path, tmp_path), backend="reference")
    message = str(e.value)
    assert str(path) in message and fragment in message, message
    assert "\n" not in message.split("error: ", 1)[-1].strip()


def test_a_spec_of_another_family_than_its_file_is_refused(tmp_path):
    path = write_gemma3(tmp_path / "g.gguf")
    with pytest.raises(CkeError) as e:
        ckeir.compile(gemma3_spec(path, tmp_path, family="llama"), backend="reference")
    assert "family llama disagrees with" in str(e.value) and "gemma3" in str(e.value)


def test_a_spec_window_must_agree_with_the_files(tmp_path):
    path = write_gemma3(tmp_path / "g.gguf")  # its sliding window: 16 keys
    with pytest.raises(CkeError) as e:
        ckeir.compile(gemma3_spec(path, tmp_path, extra="window 8"), backend="reference")
    assert e.value.message == f"window 8 disagrees with {path}, which has 16"
    assert e.value.loc.line == 2
    with ckeir.compile(gemma3_spec(path, tmp_path, extra="window 16"), backend="reference") as p:
        assert p.config.window == 16


def test_the_cli_names_a_missing_norm_without_a_traceback(tmp_path):
    path = write_gemma3(tmp_path / "g.gguf", drop=("blk.1.post_attention_norm.weight",))
    r = ckec("run", gemma3_spec(path, tmp_path), "--ids", "1", "-n", "1", timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "tensor 'blk.1.post_attention_norm.weight' is missing" in r.stderr
