"""The dump directory shows the IR evolving pass by pass, upstream mlir-opt reads every dumped
stage back unchanged, and `--emit=llvm` gives a module llvmlite parses and verifies.

One spec per lowering path: the small specs (random weights) cover every schedule shape —
one rank, pipeline, tensor parallel, hybrid and auto, batched, llama and gemma3 (Gemma 3
tensor parallel from tests/cli/specs/) — and every pass stage; a real GGUF spec per family
covers the file's own blocks (`quantize weights keep`: SmolLM2's Q4_1/Q8_0, Gemma 3's
K-quants).  The real models' pipeline, tensor
parallel, hybrid and batched variants lower like the small specs of the same shape, at the
cost of a 135M-270M compile each, so they are left out."""

import subprocess
from pathlib import Path

import llvmlite.binding as llvm
import pytest
from cli_runner import ckec
from needs import MLIR_OPT, needs_mlir_opt

import ckeir

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "odd",
    "tiny",
    "mha",
    "hybrid",
    "tiny-pipeline-batch4",
    "gemma3-tiny",
    "gemma3-tiny-pipeline",
]
REAL = ["smollm2-135m", "gemma3-270m"]  # one GGUF spec per family, computing on its blocks
SPECS = [ROOT / "specs" / f"{name}.cke" for name in SMALL + REAL]
# Gemma 3 tensor parallel at a small size (specs/ has it only at 270M)
SPECS.append(Path(__file__).parent / "specs/gemma3-tiny-tp.cke")
LOWERS_LIKE = {  # a spec left out, and the spec above whose lowering path it takes
    "smollm2-pipeline": "tiny-pipeline-batch4",
    "smollm2-pipeline-batch4": "tiny-pipeline-batch4",
    "smollm2-batch8": "tiny-pipeline-batch4",
    "smollm2-tp": "mha",
    "smollm2-hybrid": "hybrid",
    "smollm2-auto": "hybrid",
    "gemma3-270m-pipeline": "gemma3-tiny-pipeline",
    "gemma3-270m-tp": "gemma3-tiny-tp",
}


def test_every_spec_is_covered_or_named_with_its_lowering_path():
    """A spec added to specs/ is either dumped and lowered below or named in LOWERS_LIKE."""
    have = {p.stem for p in (ROOT / "specs").glob("*.cke")}
    assert have == set(SMALL) | set(REAL) | set(LOWERS_LIKE)
    assert set(LOWERS_LIKE.values()) <= {p.stem for p in SPECS} - set(REAL)


def dump(spec, tmp_path, backend="reference"):
    d = tmp_path / spec.stem
    prog = ckeir.compile(spec, backend=backend, dump_dir=d)
    prog.close()
    return sorted(d.iterdir())


def test_dump_dir_shows_each_pass(tmp_path):
    files = dump(ROOT / "specs/odd.cke", tmp_path, backend="llvm")
    names = [f.name for f in files]
    assert names[:7] == [
        "00-input.mlir",
        "01-shape-infer.mlir",
        "02-quantize.mlir",
        "03-place.mlir",
        "04-insert-collectives.mlir",
        "05-tile.mlir",
        "06-plan-memory.mlir",
    ]
    assert names[7].endswith("lower-llvm.ll") and names[8].endswith("codegen.s")
    texts = [f.read_text() for f in files]
    assert "tensor<*xf32>" in texts[0] and "tensor<*xf32>" not in texts[1]
    assert "rank = 0" not in texts[2] and "rank = 0" in texts[3]
    assert "tile = array<i64:" not in texts[4] and "tile = array<i64:" in texts[5]
    assert "mem.arena" not in texts[5] and "mem.arena" in texts[6]
    llvm.parse_assembly(texts[7]).verify()
    assert "vfmadd" in texts[8]


@pytest.mark.mlir
@needs_mlir_opt
@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_mlir_opt_reads_every_stage(spec, tmp_path):
    for f in dump(spec, tmp_path):
        text = f.read_text()
        r = subprocess.run(
            [MLIR_OPT, "--allow-unregistered-dialect", "--mlir-print-op-generic"],
            input=text,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, f"{f.name}: {r.stderr}"
        assert r.stdout.rstrip("\n") == text.rstrip("\n"), f"{f.name} changed in mlir-opt"
        assert ckeir.print_ir(ckeir.parse_ir(r.stdout)) == text


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_emit_llvm_parses_in_llvmlite(spec):
    out = ckec(spec, "--emit=llvm", timeout=300)
    assert out.returncode == 0, out.stderr
    llvm.parse_assembly(out.stdout).verify()
