"""ckec through a subprocess, as a user runs it: outputs, dumps, and errors that are located,
non-zero and free of tracebacks."""

import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import ckec

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"


def assert_clean_error(r, *fragments):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for f in fragments:
        assert f in r.stderr, r.stderr


def test_emit_mlir_is_ir_we_can_read_back():
    import ckeir

    r = ckec(SPECS / "tiny.cke", "--emit=mlir")
    assert r.returncode == 0, r.stderr
    module = ckeir.parse_ir(r.stdout)
    ckeir.verify(module)
    assert ckeir.print_ir(module) == r.stdout
    assert '"cke.func"' in r.stdout and 'phase = "decode"' in r.stdout


def test_emit_mlir_one_phase():
    r = ckec(SPECS / "tiny.cke", "--emit=mlir", "--phase", "decode")
    assert r.returncode == 0, r.stderr
    assert 'phase = "decode"' in r.stdout and 'phase = "prefill"' not in r.stdout


def test_print_ir_after_and_timing():
    r = ckec(
        SPECS / "tiny.cke",
        "--emit=mlir",
        "--print-ir-after=tile",
        "--timing",
        "--pass-pipeline=shape-infer,tile",
    )
    assert r.returncode == 0, r.stderr
    assert "// -----// IR Dump After tile //----- //" in r.stderr
    assert "IR Dump After shape-infer" not in r.stderr
    assert "Pass execution timing report" in r.stderr
    assert "shape-infer" in r.stderr.split("timing report")[1]


def test_print_ir_after_all_shows_every_pass():
    r = ckec(SPECS / "tiny.cke", "--print-ir-after-all")
    assert r.returncode == 0, r.stderr
    for p in ("shape-infer", "quantize", "tile", "plan-memory"):
        assert f"IR Dump After {p} " in r.stderr


def test_unknown_pass_is_a_clear_error():
    r = ckec(SPECS / "tiny.cke", "--pass-pipeline=shape-infer,nosuchpass")
    assert_clean_error(r, "unknown pass 'nosuchpass'", "known passes:")


def test_spec_error_is_located(tmp_path):
    bad = tmp_path / "bad.cke"
    bad.write_text((SPECS / "tiny.cke").read_text().replace("hidden     128", "hidden     12x8"))
    r = ckec(bad)
    assert_clean_error(r, f"{bad}:")
    assert "^" in r.stderr


def test_missing_spec_file():
    r = ckec("/nonexistent/spec.cke")
    assert_clean_error(r)
    assert "nonexistent" in r.stderr


def test_output_file_is_whole_or_absent(tmp_path):
    out = tmp_path / "out.mlir"
    r = ckec(SPECS / "tiny.cke", "-o", out)
    assert r.returncode == 0 and out.read_text().startswith('"builtin.module"')
    out2 = tmp_path / "out2.mlir"
    r = ckec(SPECS / "tiny.cke", "--pass-pipeline=bogus", "-o", out2)
    assert r.returncode != 0 and not out2.exists()


def test_opt_reads_ir_and_reports_parse_errors(tmp_path):
    f = tmp_path / "x.mlir"
    f.write_text('"builtin.module"() ({\n  %0 = "cke.add"(%1, %1) : (f32) -> f32\n}) : () -> ()\n')
    r = ckec("opt", f, "--pass-pipeline=shape-infer")
    assert_clean_error(r, f"{f}:2:")


def test_run_reference_prints_ids():
    r = ckec("run", SPECS / "odd.cke", "--ids", "1,2,3", "-n", "5", "--backend", "reference")
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.strip().split(",")]
    assert len(ids) == 5 and all(0 <= i < 300 for i in ids)


@pytest.mark.parametrize("ids", ["1,x,3", "99999", ""])
def test_run_bad_ids(ids):
    r = ckec("run", SPECS / "odd.cke", "--ids", ids, "-n", "2", "--backend", "reference")
    assert_clean_error(r)


def test_select_one_program_by_phase_and_rank():
    r = ckec(SPECS / "tiny.cke", "--emit=llvm", "--phase", "decode", "--rank", "1")
    assert r.returncode == 0, r.stderr
    defs = [ln for ln in r.stdout.splitlines() if ln.startswith("define dso_local")]
    assert defs and all("@cke_decode_r1" in d for d in defs)
    r = ckec(SPECS / "tiny.cke", "--emit=asm", "--phase", "decode", "--rank", "0")
    assert r.returncode == 0 and "cke_decode_r0" in r.stdout
    r = ckec(SPECS / "tiny.cke", "--rank", "7")
    assert r.returncode == 1 and "no program for phase any and rank 7" in r.stderr


def test_peak_rss_is_the_runs_own():
    """The summary's peak RSS is the run's, not the peak of the process that started it
    (getrusage's ru_maxrss survives exec): started by a process holding 600 MiB, a run of
    the small tiny.cke model still reports well under that."""
    code = (
        "import sys, numpy as np\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from cli_runner import ckec\n"
        "held = np.ones(600 * 2**20 // 8)\n"
        "print(ckec('run', sys.argv[1], '--ids', '1,2', '-n', '2', '--threads', '1').stderr)\n"
    )
    tiny = Path(__file__).parents[2] / "specs" / "odd.cke"
    tests = Path(__file__).parents[1]  # where cli_runner is
    r = subprocess.run(
        [sys.executable, "-c", code, tiny, tests], capture_output=True, text=True, timeout=600
    )
    summary = next(ln for ln in r.stdout.splitlines() if ln.startswith("prompt "))
    assert float(summary.split("peak RSS")[1].split("MiB")[0]) < 400, summary
