"""benchmarks/types.py, the table of every stored type (issue 15), on a smoke run: its row for
a Q4_0 SmolLM2 comes from the run — the file it made holds Q4_0 matrices, the run report's
bytes per token are the file's (weights read as stored, never widened), the ids are what
the compiled program generates, the GEMV share is the GEMV benchmark's."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
from runtime.smollm2 import needs_smollm2

import ckeir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is beside the package, not installed with it
from benchmarks import types as bench  # noqa: E402
from benchmarks.typefiles import default_maker  # noqa: E402

pytestmark = [needs_smollm2, pytest.mark.slow]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """`python -m benchmarks.types --quick` on Q4_0 alone: its printed table and its JSON."""
    tmp = tmp_path_factory.mktemp("types")
    out = tmp / "types.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench.main(
            ["--quick", "--types", "q4_0", "--no-gemma3", "--files", str(tmp), "--json", str(out)]
        )
    return printed.getvalue(), json.loads(out.read_text()), out


def test_the_file_holds_q4_0_and_a_token_reads_its_bytes(quick):
    table, d, _ = quick
    r = d["results"]["q4_0"]
    held = r["held"]
    # llama.cpp keeps the tied embedding table in Q8_0; gguf.quants makes it Q4_0 too
    assert held["Q4_0"] >= 210 and set(held) <= {"Q4_0", "Q8_0", "F32"}
    assert "q4_0" in r["ckeir_formats"] and "f16" not in r["ckeir_formats"]
    # the run report's active bytes: the file's bytes plus a few activations and KV rows
    assert 0.95 <= r["bytes_ratio"] <= 1.05
    assert r["weights_ratio"] == 1.0  # every weight read as the file stores it
    row = next(line for line in table.splitlines() if line.startswith("|Q4_0"))
    assert f"{r['bytes_ratio']:.3f}" in row and f"{r['file_bytes'] / 1e6:,.1f}" in row


def test_the_ids_are_what_the_program_generates(quick):
    _, d, _ = quick
    r = d["results"]["q4_0"]
    spec = Path(r["file"]).with_suffix(".cke")
    with ckeir.compile(spec, threads=2) as prog:
        assert prog.generate(r["prompt_ids"], max_new_tokens=16) == r["greedy"]["ckeir"]
    assert len(r["decode_seconds_per_token"]["ckeir"]) == d["rounds"] == 1
    assert r["tok_s"]["ckeir"] > 0
    if default_maker() == "llama.cpp":  # llama.cpp ran on the same file
        ours, theirs = r["greedy"]["ckeir"], r["greedy"]["llama.cpp"]
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), 16)
        assert r["agree"] == f"{same}/16"


def test_the_gemv_share_is_the_gemv_benchmarks(quick):
    _, d, _ = quick
    r = d["results"]["q4_0"]
    assert set(d["gemv"]) == {t.lower() for t in r["held"] if t != "F32"}
    assert r["gemv_share"] == d["gemv"]["q4_0"]["fraction_of_read"]
    assert 0.05 < r["gemv_share"] < 3
    assert d["gemv"]["q4_0"]["kernel"].startswith("qmatmul_q4_0")
    assert r["kernel"].startswith("qmatmul: int8")


def test_the_table_prints_again_from_its_json(quick, tmp_path):
    """--from-json (rows of runs made in parts) gives the run's own row back."""
    table, _, out = quick
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench.main(["--from-json", str(out), "--json", str(tmp_path / "again.json")])
    row = next(line for line in table.splitlines() if line.startswith("|Q4_0"))
    assert row in printed.getvalue().splitlines()
    again = json.loads((tmp_path / "again.json").read_text())
    assert (
        again["results"]["q4_0"]["greedy"]
        == json.loads(out.read_text())["results"]["q4_0"]["greedy"]
    )
