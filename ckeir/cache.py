"""The on-disk cache (`$CKEIR_CACHE_DIR`, else `~/.cache/ckeir`): compiled objects and model
file indexes.  Entries are written atomically, so a reader sees a whole entry or none; a
cache that cannot be written only costs time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("CKEIR_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "ckeir"


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass
