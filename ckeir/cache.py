"""The on-disk cache (`$CKEIR_CACHE_DIR`, else `~/.cache/ckeir`): compiled objects, lowered
programs, model file indexes and the bandwidth record.

Nothing read back from the cache is trusted: a disk fills up, a machine loses power mid-write,
a bit flips, another ckeir version wrote the file.  Loading a damaged object into the JIT
aborts LLVM or runs damaged machine code, so every entry carries a header

    magic, format version, digest of the key it was written for, content length, content digest

and `read` checks all of it.  A bad entry is deleted with a one-line warning and reads as a
miss, so the caller rebuilds it and writes it again: the cache heals.  Entries are written to
a temporary file and renamed, so a reader sees a whole entry or none and concurrent writers of
one key both leave a valid entry; a cache that cannot be written only costs time.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
import struct
import sys
from pathlib import Path

from ckeir import limits
from ckeir.outputs import replace_file

MAGIC = b"ckeir\0ce"
VERSION = 1
# magic, version, sha256 of the key, content length, sha256 of the content
HEADER = struct.Struct("<8sI32sQ32s")

# Errors that mean "there is no entry here" (a miss, not damage): the file or one of its
# parent directories does not exist, or the cache root sits under a regular file.
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


def cache_dir() -> Path:
    root = os.environ.get("CKEIR_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "ckeir"


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _key_digest(path: Path, key: str | None) -> bytes:
    # Callers whose file name is their key need not repeat it.
    return _digest((path.name if key is None else key).encode())


def _entry(data: bytes, key_digest: bytes) -> bytes:
    """`data` behind the header that `read` checks."""
    return HEADER.pack(MAGIC, VERSION, key_digest, len(data), _digest(data)) + data


def _damage(raw: bytes, key_digest: bytes) -> str | None:
    """Why `raw` is not a valid entry for the key, or None if it is."""
    if not raw:
        return "empty"
    if len(raw) < HEADER.size:
        return f"truncated: {len(raw)} bytes, shorter than the {HEADER.size}-byte header"
    magic, version, key, length, digest = HEADER.unpack_from(raw)
    if magic != MAGIC:
        return "not a ckeir cache entry"
    if version != VERSION:
        return f"cache format version {version}, expected {VERSION}"
    if key != key_digest:
        return "written for another key"
    body = len(raw) - HEADER.size
    if body != length:
        return f"{'truncated' if body < length else 'too long'}: {body} of {length} bytes"
    if _digest(memoryview(raw)[HEADER.size :]) != digest:
        return "checksum mismatch"
    return None


def _read_regular(path: Path) -> bytes | None:
    """The file's bytes (None if it is not a regular file: refused before it is read).
    O_NONBLOCK so that a FIFO put in an entry's place cannot block the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > limits.MAX_CACHE_ENTRY_BYTES:  # e.g. a damaged file system's size
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, larger than any entry")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def read(path: Path, key: str | None = None) -> bytes | None:
    """The content of the entry at `path` written for `key` (default: the file name), or
    None on a miss.  A damaged entry is discarded with a warning and also reads as None."""
    path = Path(path)
    try:
        raw = _read_regular(path)
    except OSError as e:
        if e.errno not in _ABSENT:
            discard(path, e.strerror or str(e), keep_valid=True, key=key)
        return None
    why = "not a regular file" if raw is None else _damage(raw, _key_digest(path, key))
    if why is not None:
        discard(path, why, keep_valid=True, key=key)
        return None
    return raw[HEADER.size :]


def discard(path: Path, reason: str, *, keep_valid: bool = False, key: str | None = None) -> None:
    """Delete a bad entry and say so in one line.  For callers too that find an entry's
    content unusable after its checksum passed (e.g. JSON of the wrong shape).

    Several processes (local ranks) may read one damaged entry at once; one of them
    discards it and warns.  The entry is first set aside (renamed), which only one can do:
    a process that finds it gone (another discarded it) says nothing.  With `keep_valid`
    (`read` does), an entry set aside that is valid for `key` is one another process
    rebuilt meanwhile: it is put back, and nothing is said."""
    path = Path(path)
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.discarded")
    try:
        os.rename(path, aside)  # a symbolic link goes, not what it points to
    except FileNotFoundError:
        return  # another process discarded it first, and warned
    except OSError:  # a read-only cache: it stays, and every run rebuilds it
        _warn(path, reason)
        return
    if keep_valid and _valid(aside, path, key):
        with contextlib.suppress(OSError):
            os.rename(aside, path)
        return
    _warn(path, reason)
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(aside).st_mode):
            shutil.rmtree(aside)
        else:
            os.unlink(aside)


def _valid(aside: Path, path: Path, key: str | None) -> bool:
    """The file at `aside` is a valid entry for `path` and `key`."""
    try:
        raw = _read_regular(aside)
    except OSError:
        return False
    return raw is not None and _damage(raw, _key_digest(path, key)) is None


def _warn(path: Path, reason: str) -> None:
    # One write of the whole line: two threads or ranks warning at once must not interleave.
    sys.stderr.write(f"warning: discarded a damaged cache entry {path} ({reason}); rebuilding\n")
    sys.stderr.flush()


def write_atomic(path: Path, data: bytes, key: str | None = None) -> None:
    """Store `data` for `key` (default: the file name) at `path`, whole or not at all."""
    path = Path(path)
    entry = _entry(data, _key_digest(path, key))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(str(path), entry)  # removes its temporary on failure (a full disk)
    except OSError:
        pass  # a cache that cannot be written only costs time
