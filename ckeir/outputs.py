"""How ckeir writes an output file (`-o`, `--report`, `--trace`, `plan --json`, `--dump-dir`),
in one place.

A regular file, or a path where nothing is yet, is replaced atomically: the text goes to a
temporary file in the same directory, is synced, then renamed onto the path, so a reader (or a
run that fails half way) never sees a partial file as if it were whole.  Anything else at the
path is not ours to replace: a character device (`/dev/null`, a terminal) or a FIFO is written
through, `-` is standard output, and a symlink is followed (the link stays, its target gets the
text).  `check_output` and `check_output_dir` refuse a path that cannot be written *before* any
work starts, so a long run never ends in "cannot write".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from pathlib import Path

from ckeir.errors import CkeError

STDOUT = "-"


class OutputError(CkeError):
    """An output path that cannot be written (its message names the path and the flag)."""


def refusal(path, flag: str | None, reason: str) -> OutputError:
    what = f"{flag} {path}" if flag else str(path)
    return OutputError(f"cannot write {what}: {reason}")


# ---- up-front checks --------------------------------------------------------------------------
def check_output(path, flag: str | None = None) -> None:
    """Refuse `path` now if writing it later would fail: a directory, a missing or unwritable
    directory, a path under a file, a symlink loop, a socket or block device."""
    if str(path) == STDOUT:
        return
    target = _target(path, flag)
    mode = _mode(path, flag)
    if mode is None or stat.S_ISREG(mode):
        _check_directory(os.path.dirname(target), path, flag)
    elif _written_through(mode):
        if not os.access(path, os.W_OK):
            raise refusal(path, flag, "permission denied")
    elif stat.S_ISDIR(mode):
        raise refusal(path, flag, "it is a directory")
    else:
        raise refusal(path, flag, "not a regular file, character device or FIFO")


def check_output_dir(path, flag: str | None = None) -> Path:
    """Create the directory `path` (and its parents) if needed and check that files can be
    written in it; the directory, as a Path."""
    target = _target(path, flag)
    mode = _mode(path, flag)
    if mode is not None and not stat.S_ISDIR(mode):
        raise refusal(path, flag, "it exists and is not a directory")
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as e:
        raise refusal(path, flag, describe_os_error(e)) from None
    _check_directory(target, path, flag)
    return Path(path)


def _target(path, flag) -> str:
    """The file a write lands in: a symlink's target, so that the link itself stays."""
    if not os.fspath(path):  # realpath would make it the working directory
        raise refusal("''", flag, "the path is empty")
    return os.path.realpath(os.fspath(path))


def _mode(path, flag) -> int | None:
    """The st_mode of what `path` is or links to, None when nothing is."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:  # a component that is a file, a symlink loop, no permission...
        raise refusal(path, flag, describe_os_error(e)) from None


def _check_directory(directory: str, path, flag) -> None:
    """The directory exists and a file can be created in it: try it (permission bits say
    nothing to root, and nothing about read-only or pseudo file systems)."""
    if not os.path.isdir(directory):
        raise refusal(path, flag, f"directory {directory} does not exist")
    try:
        fd, probe = _create_temp(directory, os.path.basename(os.fspath(path)) or "out")
    except OSError as e:
        raise refusal(
            path, flag, f"cannot create files in {directory} ({describe_os_error(e)})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def describe_os_error(e: OSError) -> str:
    """`no space left on device`: an OSError as the end of a sentence."""
    return (e.strerror or str(e)).lower()


# ---- writing ----------------------------------------------------------------------------------
def write_output(path, data: str | bytes, flag: str | None = None) -> None:
    """Write `data` (text is UTF-8) to `path` as the module docstring says: atomically for a
    regular or new file, through for a device, FIFO or `-`, following a symlink."""
    if str(path) == STDOUT:
        with _stdout_errors():
            _write_stdout(data)
        return
    raw = data.encode() if isinstance(data, str) else data
    mode = _mode(path, flag)
    try:
        if _written_through(mode):
            # never replaced: /dev/null stays a device.  Opened by the path as given:
            # /dev/stdout resolves to a /proc name that cannot be opened when it is a pipe.
            with open(path, "wb") as f:
                f.write(raw)
        else:
            replace_file(_target(path, flag), raw, mode)
    except OSError as e:
        raise refusal(path, flag, describe_os_error(e)) from None


def _written_through(mode: int | None) -> bool:
    return mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode))


def replace_file(target: str, raw: bytes, mode: int | None = None) -> None:
    """A whole file at `target` or none: temp file beside it, fsync, rename (also how the
    disk cache stores its entries)."""
    directory, name = os.path.split(target)
    fd, tmp = _create_temp(directory, name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:  # a replaced file keeps its permissions
            os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_with(target, write) -> None:
    """A whole file at `target` or none, for writers that take a path (a quantizer, a
    package's assembler): `write(path)` makes a hidden file beside the target, which is
    renamed into place, or removed if `write` fails."""
    directory, name = os.path.split(str(target))
    fd, tmp = _create_temp(directory, name)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    """A new hidden file beside the output, with the permissions the umask gives a new file
    (mkstemp's 0600 would leave outputs unreadable to others)."""
    while True:
        tmp = os.path.join(directory or ".", f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _write_stdout(data: str | bytes) -> None:
    if isinstance(data, str):
        sys.stdout.write(data)
    else:
        sys.stdout.flush()  # after whatever was printed before
        sys.stdout.buffer.write(data)
    sys.stdout.flush()


# ---- standard output --------------------------------------------------------------------------
class GuardedStdout:
    """Standard output whose failed writes (a full device, an I/O error) are an `OutputError`
    naming it, instead of an OSError deep in whatever printed.  A closed pipe stays a
    BrokenPipeError: the reader has gone, which is not an error to report.  Its binary
    `buffer`, where it has one, is guarded the same way."""

    def __init__(self, stream):
        self._stream = stream
        buffer = getattr(stream, "buffer", None)
        self.buffer = GuardedStdout(buffer) if buffer is not None else None

    def write(self, data):
        with _stdout_errors():
            return self._stream.write(data)

    def flush(self) -> None:
        with _stdout_errors():
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _stdout_errors():
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to standard output: {describe_os_error(e)}") from None


def discard_stdout(stream) -> None:
    """Point `stream` (standard output) at /dev/null, so that what is still buffered for a full
    device or a closed pipe does not fail again when Python flushes it at exit.  A stream
    without a file descriptor (a test's StringIO) is left alone."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
