"""Output files never clobber: a regular or new path is replaced atomically, a device, FIFO or
`-` is written through, a symlink is followed, and a path that cannot be written is refused
before any work starts, naming the path and the flag."""

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cli_runner import ckec, start_ckec

from ckeir.outputs import OutputError, write_output

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs/tiny.cke"
ODD = ROOT / "specs/odd.cke"  # one rank: fast runs with the reference backend

# one command per output flag; {} is the output path
FLAGS = {
    "-o": [TINY, "-o", "{}"],
    "--dump-dir": [TINY, "--dump-dir", "{}"],
    "--report": ["run", ODD, "--ids", "1", "-n", "2", "--report", "{}"],
    "--trace": ["run", ODD, "--ids", "1", "-n", "2", "--trace", "{}"],
    "--json": ["plan", ODD, "--json", "{}"],
}


def command(flag, path):
    return [str(path) if a == "{}" else a for a in FLAGS[flag]]


def assert_refused(r, flag, path):
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert f"cannot write {flag} {path}" in r.stderr, r.stderr
    # refused before any work: no progress line, no spec read, nothing compiled
    assert "reading the spec" not in r.stderr and "running passes" not in r.stderr


def unwritable_paths(tmp_path):
    """Paths that even root cannot write: a directory, a directory that does not exist, a
    path under a regular file, a file in a pseudo file system that creates no files."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "dir").mkdir()
    return {
        "directory": tmp_path / "dir",
        "missing directory": tmp_path / "nowhere" / "out",
        "under a file": a_file / "out",
        "pseudo file system": Path("/proc/version"),
    }


@pytest.mark.parametrize("flag", [f for f in FLAGS if f != "--dump-dir"])
@pytest.mark.parametrize(
    "kind", ["directory", "missing directory", "under a file", "pseudo file system"]
)
def test_unwritable_output_is_refused_before_work(tmp_path, flag, kind):
    path = unwritable_paths(tmp_path)[kind]
    r = ckec(*command(flag, path))
    assert_refused(r, flag, path)


@pytest.mark.parametrize("kind", ["a regular file", "under a file", "pseudo file system"])
def test_unwritable_dump_dir_is_refused_before_work(tmp_path, kind):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    path = {"a regular file": a_file, "under a file": a_file / "d", "pseudo file system": "/proc/x"}
    r = ckec(*command("--dump-dir", path[kind]))
    assert_refused(r, "--dump-dir", path[kind])
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("flag", FLAGS)
def test_empty_output_path_is_refused(flag):
    r = ckec(*command(flag, ""))
    assert_refused(r, flag, "''")
    assert "the path is empty" in r.stderr


def test_refused_output_is_checked_before_the_spec(tmp_path):
    """The output check comes first: a run that would fail late never starts."""
    r = ckec("run", tmp_path / "missing.cke", "--ids", "1", "--report", tmp_path)
    assert_refused(r, "--report", tmp_path)


def test_output_onto_the_spec_is_refused(tmp_path):
    spec = tmp_path / "tiny.cke"
    spec.write_text(TINY.read_text())
    (tmp_path / "alias.cke").symlink_to(spec)
    r = ckec(spec, "-o", tmp_path / "alias.cke")
    assert_refused(r, "-o", tmp_path / "alias.cke")
    assert "it is the input spec" in r.stderr
    assert spec.read_text() == TINY.read_text()


def test_dev_null_stays_a_character_device():
    r = ckec(TINY, "-o", os.devnull)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_full_device_is_written_through_and_its_error_named():
    r = ckec(TINY, "-o", "/dev/full")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot write -o /dev/full: no space left on device" in r.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = ckec(TINY, "-o", fifo, timeout=300)
    reader.join(timeout=60)
    assert r.returncode == 0, r.stderr
    assert got and got[0].decode().startswith('"builtin.module"')
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_dash_is_standard_output(tmp_path):
    r = ckec(TINY, "-o", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('"builtin.module"')
    assert list(tmp_path.iterdir()) == []  # no file named '-'


def test_dev_stdout_into_a_pipe():
    """/dev/stdout links to /proc/self/fd/1, whose target is no path when it is a pipe."""
    r = ckec(TINY, "-o", "/dev/stdout")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('"builtin.module"')


def test_symlink_is_followed_and_stays_a_link(tmp_path):
    target = tmp_path / "real" / "out.mlir"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.mlir"
    link.symlink_to(target)
    r = ckec(TINY, "-o", link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith('"builtin.module"')
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.mlir"]


def test_report_onto_a_symlink_keeps_the_link(tmp_path):
    target, link = tmp_path / "report.json", tmp_path / "latest.json"
    link.symlink_to(target.name)  # relative, as users make them
    r = ckec("run", ODD, "--ids", "1,2", "-n", "3", "--report", link, "--no-predict")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == "report.json"
    assert '"generated_tokens": 3' in target.read_text()


def test_regular_file_is_replaced_whole_keeping_its_mode(tmp_path):
    out = tmp_path / "out.mlir"
    out.write_text("old")
    out.chmod(0o640)
    r = ckec(TINY, "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith('"builtin.module"')
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.mlir"]  # no temporary left


def test_a_failed_run_leaves_the_old_output(tmp_path):
    out = tmp_path / "out.mlir"
    out.write_text("old")
    r = ckec(TINY, "--pass-pipeline=bogus", "-o", out)
    assert r.returncode == 1
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.mlir"]


def test_dump_dir_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "dumps").symlink_to(real)
    r = ckec(ODD, "--dump-dir", tmp_path / "dumps")
    assert r.returncode == 0, r.stderr
    assert (real / "00-input.mlir").read_text().startswith('"builtin.module"')


def test_a_write_that_fails_removes_its_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    out.write_text("old")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OutputError, match=f"cannot write --report {out}: no space left"):
        write_output(out, "new", "--report")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def run_with_stdout(stdout, *args):
    return start_ckec(*args, stdout=stdout, stderr=subprocess.PIPE, text=True)


def test_standard_output_on_a_full_device():
    with open("/dev/full", "w") as full:
        p = run_with_stdout(full, TINY, "--emit=mlir")
        err = p.communicate(timeout=300)[1]
    assert p.returncode == 1
    assert err.strip().splitlines() == [
        "error: cannot write to standard output: no space left on device"
    ]


def test_a_closed_pipe_ends_quietly():
    """`ckec … | head -1`: the reader goes away; no traceback, no error message."""
    p = run_with_stdout(subprocess.PIPE, TINY, "--emit=llvm")
    p.stdout.close()  # the reader has gone before ckec writes
    err = p.stderr.read()
    assert p.wait(timeout=300) not in (0, 2)
    assert err == ""
