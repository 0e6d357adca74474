"""Command-line misuse is a clear error: exit 1, one message saying what was wrong and with
what, no traceback, and nothing started that the error makes pointless."""

import os
import sys
from pathlib import Path

import pytest
from cli_runner import ckec
from needs import needs_mpi

from ckeir import limits
from ckeir.backends.llvm.host import usable_cpus

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs/tiny.cke"  # vocab 512, two local ranks
ODD = ROOT / "specs/odd.cke"  # vocab 300, one rank
sys.path.insert(0, str(ROOT / "tests/runtime"))
from ggufgen import spec_for, write_gguf  # noqa: E402


def assert_user_error(r, *fragments):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


def run(spec, *args):
    return ckec("run", spec, *args, "--backend", "reference")


# ---- token ids ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ids, message",
    [
        ("2**70", "--ids: '2**70' is not a token id"),
        ("1180591620717411303424", "--ids: token id 1180591620717411303424 is too large"),
        ("9" * 5000, "--ids: token id of 5000 digits is too large"),
        ("1_2", "--ids: '1_2' is not a token id"),  # int() would read 12
        ("-1", "--ids: '-1' is not a token id"),
        ("1,,2", "--ids: an empty field is not a token id"),
        ("١٢", "is not a token id"),  # Arabic-Indic digits: int() would read 12
        ("", "--ids is empty"),
    ],
)
def test_ids_that_are_not_token_ids(ids, message):
    assert_user_error(run(ODD, "--ids", ids, "-n", "1"), message)


def test_ids_outside_the_vocabulary_name_the_id_and_the_vocabulary():
    """Refused before the two local ranks of tiny.cke start (today a rank failed)."""
    r = run(TINY, "--ids", "1,99999", "-n", "1")
    assert_user_error(r, "error: --ids: token id 99999 is not in the model's vocabulary of 512")
    assert "rank" not in r.stderr and "ready in" not in r.stderr


def test_prompt_longer_than_the_context_is_refused_before_ranks_start():
    r = run(TINY, "--ids", "1,2", "-n", "255")
    assert_user_error(
        r, "error: --ids with -n 255: prompt (2 tokens) + 255 new tokens exceed the model's context"
    )
    assert "rank" not in r.stderr and "ready in" not in r.stderr
    assert run(TINY, "--ids", "1,2", "-n", "254").returncode == 0


@needs_mpi
def test_mpi_transport_with_too_few_processes():
    """Without mpiexec MPI has one process; the schedule needs two (a collective used to
    fail deep in the run, naming a group)."""
    r = run(TINY, "--ids", "1", "-n", "2", "--transport", "mpi")
    assert_user_error(r, "this schedule runs on 2 ranks but MPI started 1", "mpiexec -n 2")


@pytest.mark.parametrize("flag", ["--simulate-links", "--check-parity"])
def test_rank_flags_on_a_one_rank_schedule(flag):
    """Both were ignored silently on one rank."""
    assert_user_error(run(ODD, "--ids", "1", flag), f"{flag}: this schedule runs on one rank")


@pytest.mark.parametrize("flag", ["--pin", "--no-pin"])
def test_pinning_the_reference_backend_is_refused(flag):
    """One rank on the reference backend has no thread pool: the flag would do nothing."""
    r = run(ODD, "--ids", "1", flag)
    assert_user_error(r, f"{flag}: the reference backend runs no thread pool to pin")


def test_ids_separated_by_spaces_or_commas_are_the_same_prompt():
    """`--ids "1 2 3"` was read as the single id 123."""
    outs = {ids: run(ODD, "--ids", ids, "-n", "4") for ids in ("1,2,3", "1 2 3", " 1, 2 ,3 ")}
    for r in outs.values():
        assert r.returncode == 0, r.stderr
    assert len({r.stdout for r in outs.values()}) == 1
    assert "prompt 3 tokens" in outs["1 2 3"].stderr


def test_ids_run_a_model_file_without_a_tokenizer(tmp_path):
    spec = spec_for(write_gguf(tmp_path / "m.gguf", tokenizer=False), tmp_path)
    r = run(spec, "--ids", "1,2", "-n", "3")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().split(",")) == 3
    r = run(spec, "--prompt", "hi", "-n", "1")  # text still needs one
    assert_user_error(r, "tokenizer")


def test_prompt_that_is_not_utf8():
    """Undecodable argv bytes reach Python as lone surrogates."""
    r = run(ODD, "--prompt", os.fsdecode(b"caf\xe9"), "-n", "1")
    assert_user_error(r, "--prompt is not valid UTF-8 text (byte 0xe9 at offset 3)")
    assert "reading the spec" not in r.stderr


# ---- numbers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "-1"], "argument -n/--max-new-tokens: must be between 0 and"),
        (["-n", str(limits.MAX_NEW_TOKENS + 1)], "argument -n/--max-new-tokens: must be between"),
        (["-n", "2.5"], "argument -n/--max-new-tokens: expected an integer, not '2.5'"),
        (["--threads", "0"], "argument --threads: must be between 1 and"),
        (["--threads", "-4"], "argument --threads: must be between 1 and"),
        (["--threads", "9" * 5000], "argument --threads: must be between 1 and"),
        (["--threads", "two"], "argument --threads: expected an integer, not 'two'"),
        (["--watchdog", "-1"], "argument --watchdog: expected seconds in [0, 604800], not -1"),
        (["--watchdog", "nan"], "argument --watchdog: expected seconds in [0, 604800], not nan"),
        (["--watchdog", "1e400"], "argument --watchdog: expected seconds in"),
    ],
)
def test_run_numbers_out_of_range(args, message):
    r = run(ODD, "--ids", "1", *args)
    assert_user_error(r, message, "usage: ckec run")


def test_more_threads_than_cpus_is_refused():
    """--threads 16384 ran for ever: every op waits for every thread at a barrier."""
    cpus = usable_cpus()
    r = run(ODD, "--ids", "1", "-n", "2", "--threads", str(cpus + 1))
    assert_user_error(r, f"--threads {cpus + 1}: ckec may run on {cpus} CPUs here")
    assert "reading the spec" not in r.stderr
    assert run(ODD, "--ids", "1", "-n", "2", "--threads", str(cpus)).returncode == 0


def test_zero_new_tokens_is_allowed():
    r = run(ODD, "--ids", "1", "-n", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_compile_numbers_out_of_range():
    assert_user_error(ckec(TINY, "--rank", "-1"), "argument --rank: must be between 0 and")
    assert_user_error(ckec(TINY, "--threads", "0"), "argument --threads: must be between 1")


def test_usage_errors_exit_1_not_2():
    """2 is ckec's exit code for an internal error; a usage error is the user's."""
    assert_user_error(ckec("run", ODD), "one of the arguments --ids --prompt is required")
    assert_user_error(ckec(TINY, "--emit=pdf"), "argument --emit: invalid choice")


def test_a_tensor_parallel_batch_is_refused_at_its_line(tmp_path):
    """Batched decoding runs on one rank or on pipeline stages of one node each: `batch 2`
    on tiny.cke, whose prefill is one stage on two nodes, is refused."""
    spec = tmp_path / "batch.cke"
    spec.write_text(TINY.read_text().replace("  batch 1", "  batch 2"))
    r = run(spec, "--ids", "1", "-n", "1")
    line = TINY.read_text().splitlines().index("  batch 1") + 1
    assert_user_error(
        r,
        f"{spec}:{line}:3: error: batch 2: phase prefill's stage [n0, n1] is tensor parallel; "
        "batched decoding runs on pipeline stages of one node each",
        "    batch 2\n      ^",
        "give each stage of phase prefill one node, or write `batch 1`",
    )
    assert ckec(spec, "--emit=mlir").returncode == 1  # refused for compiling too


# ---- passes ---------------------------------------------------------------------------------
def test_print_ir_after_an_unknown_pass():
    r = ckec(TINY, "--print-ir-after=nonesuch")
    assert_user_error(r, "--print-ir-after: unknown pass 'nonesuch'", "known passes: ")
    assert "shape-infer" in r.stderr.split("known passes: ")[1]


def test_print_ir_after_several_passes():
    r = ckec(TINY, "--print-ir-after=tile,place", "-o", os.devnull)
    assert r.returncode == 0, r.stderr
    assert "IR Dump After tile " in r.stderr and "IR Dump After place " in r.stderr
    assert "IR Dump After quantize " not in r.stderr


# ---- ckec opt inputs ------------------------------------------------------------------------
MODULE = '"builtin.module"() ({\n}) : () -> ()\n'


def opt(path, *args):
    return ckec("opt", path, "--pass-pipeline=shape-infer", *args, timeout=60)


def test_opt_reads_a_good_file(tmp_path):
    f = tmp_path / "m.mlir"
    f.write_text(MODULE)
    r = opt(f)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('"builtin.module"')


def test_opt_locates_a_byte_that_is_not_utf8(tmp_path):
    f = tmp_path / "m.mlir"
    f.write_bytes(MODULE.replace("}", "\xff}").encode("latin-1"))
    assert_user_error(opt(f), f"{f}:2:1: error: not UTF-8 text (byte 0xff)", "^")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d, "it is a directory"),
        (lambda d: Path("/dev/zero"), "it is not a regular file"),  # would never end
        (lambda d: Path("/proc/self/mem"), "input/output error"),  # unreadable even for root
        (lambda d: d / "missing.mlir", "no such file or directory"),
    ],
    ids=["directory", "device", "unreadable", "missing"],
)
def test_opt_refuses_what_is_no_readable_file(tmp_path, make, message):
    path = make(tmp_path)
    assert_user_error(opt(path), f"cannot read {path}: {message}")


def test_opt_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # no writer: reading it would block forever
    assert_user_error(opt(fifo), f"cannot read {fifo}: it is not a regular file")


def test_opt_bounds_standard_input():
    with open("/dev/zero", "rb") as zero:  # endless: read up to the bound, then refused
        r = ckec("opt", "-", "--pass-pipeline=shape-infer", stdin=zero, timeout=120)
    assert_user_error(r, "cannot read standard input: larger than")


def test_opt_refuses_a_huge_file_unread(tmp_path):
    f = tmp_path / "huge.mlir"
    with open(f, "wb") as out:
        out.truncate(limits.MAX_IR_BYTES + 1)  # sparse: costs no disk
    assert_user_error(opt(f), f"cannot read {f}: larger than {limits.MAX_IR_BYTES} bytes")


def test_opt_target_options(tmp_path):
    f = tmp_path / "m.mlir"
    f.write_text(MODULE)
    assert_user_error(opt(f, "--cores", "0"), "argument --cores: must be between 1")
    assert_user_error(opt(f, "--l2", "lots"), "--l2: 'lots' is not a size")


# ---- measurements that could not be made ---------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "1"], "--report: decode is measured between generated tokens; give -n 2"),
        (["--backend", "reference"], "--report: one rank is measured on native code"),
    ],
)
def test_report_that_could_not_be_written_is_refused_before_the_run(tmp_path, args, message):
    """Both ran to exit 0 and left no report, silently."""
    report = tmp_path / "r.json"
    r = ckec("run", ODD, "--ids", "1", "--report", report, *args)
    assert_user_error(r, message)
    assert "ready in" not in r.stderr and not report.exists()


def test_bandwidth_measurement_that_would_be_skipped_is_refused():
    r = ckec("run", ODD, "--ids", "1", "-n", "1", "--measure-bandwidth")
    assert_user_error(r, "--measure-bandwidth: decode is measured between generated tokens")


# ---- the Python API takes the same checks ---------------------------------------------------
def test_api_refuses_ids_before_loading_weights():
    import numpy as np

    import ckeir

    with ckeir.compile(ODD, backend="reference") as prog:
        with pytest.raises(ckeir.CkeError, match="token id 1180591620717411303424 is not in"):
            prog.generate([1, 2**70], 2)  # numpy raised OverflowError
        with pytest.raises(ckeir.CkeError, match="max_new_tokens must be between 0 and"):
            prog.generate([1], -1)
        with pytest.raises(ckeir.CkeError, match="token ids are integers, not True"):
            prog.generate([True], 1)
        assert prog._weights is None  # nothing loaded for a refused request
        assert prog.generate(np.array([1, 2], dtype=np.int64), 2) == prog.generate([1, 2], 2)


def test_opt_verifies_its_input_even_without_verify_each(tmp_path):
    """`--no-verify-each` skips the verifier between passes, not on the input (as mlir-opt):
    a matmul of zero rows once reached the tile pass and divided by zero."""
    ir = tmp_path / "empty.mlir"
    ir.write_text(
        """"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    %x = "cke.weight"() {name = "x", shape = array<i64: 0, 576>} : () -> tensor<0x576xf32>
    %w = "cke.weight"() {name = "w", shape = array<i64: 1536, 576>} : () -> tensor<1536x576xf32>
    %y = "cke.matmul"(%x, %w) : (tensor<0x576xf32>, tensor<1536x576xf32>) -> tensor<0x1536xf32>
    "cke.return"(%y) : (tensor<0x1536xf32>) -> ()
  }) {phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
"""
    )
    r = ckec("opt", ir, "--pass-pipeline=tile", "--no-verify-each")
    assert r.returncode == 1, r.stderr
    assert f"{ir}:4:10: verifier error: 'cke.weight' op attribute 'shape'" in r.stderr
