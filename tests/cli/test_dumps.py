"""The dump directory shows the IR evolving pass by pass, and upstream mlir-opt reads every
dumped stage of every spec in specs/ and prints it back unchanged."""

import subprocess
from pathlib import Path

import llvmlite.binding as llvm
import pytest
from cli_runner import ckec
from needs import MLIR_OPT, needs_mlir_opt

import ckeir

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(p for p in (ROOT / "specs").glob("*.cke"))


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
