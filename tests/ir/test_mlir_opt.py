"""Upstream MLIR agrees with our text: what we print, `mlir-opt --allow-unregistered-dialect
--mlir-print-op-generic` prints back unchanged (plus the one blank line it adds at the end), and
what mlir-opt prints, our parser reads back to the same text."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from needs import MLIR_OPT, needs_mlir_opt

from ckeir.ir import parse_ir, print_ir, verify
from ckeir.models.llama import LlamaConfig, build_module
from ckeir.passes import PassContext, PassManager, parse_pipeline

from .golden import GOLDEN
from .strategies import modules

pytestmark = [pytest.mark.mlir, needs_mlir_opt]

SPLIT = "// -----\n"
BATCH4 = Path(__file__).parents[1] / "filecheck" / "Inputs" / "batch4.cke"


def mlir_opt(texts: list[str]) -> list[str]:
    """Each text as mlir-opt prints it back, from one run (`--split-input-file`)."""
    if any(SPLIT.strip() in t for t in texts):
        return [out for t in texts for out in mlir_opt_one(t)]
    return mlir_opt_one(SPLIT.join(texts), split=len(texts) > 1)


def mlir_opt_one(text: str, split: bool = False) -> list[str]:
    cmd = [MLIR_OPT, "--allow-unregistered-dialect", "--mlir-print-op-generic"]
    if split:
        cmd.append("--split-input-file")
    run = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"mlir-opt rejected the text:\n{run.stderr}\n{text}"
    return run.stdout.split(SPLIT) if split else [run.stdout]


def assert_unchanged_by_mlir_opt(texts: list[str]) -> None:
    outputs = mlir_opt(texts)
    assert len(outputs) == len(texts)
    for text, out in zip(texts, outputs, strict=True):
        assert out == text + "\n"  # mlir-opt ends with one blank line more than it read
        assert print_ir(parse_ir(out)) == text  # and we read what it prints


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_modules_pass_through_unchanged(name):
    build, text = GOLDEN[name]
    assert print_ir(build()) == text
    assert_unchanged_by_mlir_opt([text])


LLAMAS = [
    LlamaConfig(vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, ffn=64, context=16),
    LlamaConfig(vocab=50, hidden=48, layers=1, heads=3, kv_heads=3, ffn=96, context=8),
    LlamaConfig(vocab=40, hidden=32, layers=2, heads=2, kv_heads=1, ffn=48, context=12,
                tie_embeddings=True, norm_eps=1e-6, rope_theta=500000.0),
    LlamaConfig(vocab=37, hidden=24, layers=3, heads=6, kv_heads=3, ffn=40, context=7,
                rope_style="interleaved"),
]  # fmt: skip


@pytest.mark.parametrize("batch", [1, 4])  # 4: the decode func of four sequence slots
def test_llama_graphs_pass_through_unchanged(batch):
    texts = []
    for cfg in LLAMAS:
        module = build_module(cfg, max_tokens=4, batch=batch)
        texts.append(print_ir(module))  # unranked, as built
        PassManager(parse_pipeline("shape-infer,tile,plan-memory")).run(module, PassContext())
        texts.append(print_ir(module))
    assert_unchanged_by_mlir_opt(texts)
    for text in texts:
        verify(parse_ir(text))


def test_batched_spec_passes_through_unchanged():
    """A `batch 4` spec through the whole default pipeline, as `ckec --emit=mlir` prints it."""
    from ckeir.driver import build_ir, resolve, run_passes

    job = resolve(BATCH4)
    module = build_ir(job)
    built = print_ir(module)
    run_passes(module, job)
    texts = [built, print_ir(module)]
    assert "slots = 4 : i64" in texts[1] and "memref<4x1x16x32xf32>" in texts[1]
    assert_unchanged_by_mlir_opt(texts)
    for text in texts:
        verify(parse_ir(text))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(modules(rewire=False), min_size=1, max_size=8))
def test_random_modules_pass_through_unchanged(batch):
    assert_unchanged_by_mlir_opt([print_ir(m) for m in batch])


def test_parser_reads_mlir_opt_canonical_forms():
    """Text written freely (names, comments, elided and redundant syntax) goes through
    mlir-opt; we read its output and print exactly that output."""
    source = """
    // custom value names, a nameless module, spacing of our own
    %x = "ckt.a"() {list = [1 : i64, 2.5 : f64, 3 : i32], one = 1 : i1, f = 1.0e-05 : f32} : () -> i32
    %pair:2 = "ckt.b"(%x) : (i32) -> (f32, i64)
    "ckt.c"(%pair#1) ({
    ^entry(%arg: i64):
      "ckt.use"(%arg, %pair#0) : (i64, f32) -> ()
    ^next:
      "ckt.use"(%arg, %later) : (i64, i8) -> ()
    }) {ty = (i32) -> (f32), s = "tab\\there", u} : (i64) -> ()
    %later = "ckt.late"() : () -> i8
    """
    (out,) = mlir_opt([source])
    assert "// no predecessors" in out and "9.99999974E-6 : f32" in out and "one = true" in out
    assert print_ir(parse_ir(out)) + "\n" == out


def test_module_sym_name_becomes_a_property():
    """mlir-opt moves a module's `sym_name` into properties; we read and keep that form."""
    (out,) = mlir_opt(
        ['"builtin.module"() ({\n  "ckt.a"() : () -> ()\n}) {sym_name = "m"} : () -> ()']
    )
    assert out.startswith('"builtin.module"() <{sym_name = "m"}> ({')
    assert print_ir(parse_ir(out)) + "\n" == out
