"""The disk cache heals: a damaged entry (truncated, a flipped bit, another key's entry, empty,
a directory or a FIFO in its place, an older format) is discarded with one warning line and
rebuilt, never trusted; concurrent cold runs and an unwritable cache only cost time."""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_runner import ckec, command
from runtime.ggufgen import spec_for, write_gguf

from ckeir import cache

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "tiny.cke"
IDS = "1,2,3"
H = cache.HEADER.size

# ---- the entry format, in process ------------------------------------------------------------


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_round_trip_and_a_miss_is_silent(tmp_path, capsys):
    path = tmp_path / "sub" / "k.bin"
    assert cache.read(path) is None
    cache.write_atomic(path, b"payload")
    assert cache.read(path) == b"payload"
    assert path.read_bytes().endswith(b"payload") and path.stat().st_size == H + 7
    assert capsys.readouterr().err == ""
    assert [p.name for p in path.parent.iterdir()] == ["k.bin"]  # no temporaries left


def test_every_flipped_bit_is_caught(tmp_path, capsys):
    path = tmp_path / "k.bin"
    cache.write_atomic(path, b"sixteen bytes..!")
    clean = path.read_bytes()
    for bit in range(8 * len(clean)):
        damaged = bytearray(clean)
        damaged[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(damaged)
        assert cache.read(path) is None, f"bit {bit} flipped went unnoticed"
        assert not path.exists()
    assert len(warnings(capsys.readouterr().err)) == 8 * len(clean)


def test_the_key_is_checked(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    cache.write_atomic(a, b"x")
    shutil.copy(a, b)  # a's entry where b's belongs
    assert cache.read(b) is None
    cache.write_atomic(a, b"y", key="one key")
    assert cache.read(a, key="another") is None
    err = warnings(capsys.readouterr().err)
    assert err == [
        f"warning: discarded a damaged cache entry {b} (written for another key); rebuilding",
        f"warning: discarded a damaged cache entry {a} (written for another key); rebuilding",
    ]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\x7fELF" * 4), "shorter than the"),
        (lambda p: p.write_bytes(b"\x7fELF" * 40), "not a ckeir cache entry"),
        (lambda p: (p.mkdir(), (p / "x").write_text("x")), "not a regular file"),
        (os.mkfifo, "not a regular file"),  # must not block the open
        (lambda p: p.symlink_to("/dev/zero"), "not a regular file"),  # must not read forever
        (lambda p: p.symlink_to(p), "Too many levels of symbolic links"),
    ],
    ids=["empty", "short", "old-format", "directory", "fifo", "dev-zero", "symlink-loop"],
)
def test_not_an_entry(tmp_path, capsys, make, reason):
    path = tmp_path / "k.bin"
    make(path)
    assert cache.read(path) is None
    (line,) = warnings(capsys.readouterr().err)
    assert str(path) in line and reason in line
    assert not os.path.lexists(path)
    cache.write_atomic(path, b"rebuilt")
    assert cache.read(path) == b"rebuilt"


def test_a_newer_entry_written_meanwhile_is_kept(tmp_path, capsys):
    """A reader that found damage and, when it discards, finds a valid entry in its place
    (another process rebuilt it meanwhile) keeps that entry and says nothing: the process
    that discarded the damage has warned.  Inode numbers are reused at once, so only the
    entry's validity tells a rebuilt entry from the damaged one."""
    path = tmp_path / "k.bin"
    path.write_bytes(b"damaged")
    cache.write_atomic(path, b"good")  # another process rebuilt it after we read the damage
    cache.discard(path, "checksum mismatch", keep_valid=True)
    assert cache.read(path) == b"good"
    assert warnings(capsys.readouterr().err) == []
    assert [p.name for p in tmp_path.iterdir()] == ["k.bin"]


def test_two_readers_of_one_damaged_entry_warn_once(tmp_path, capsys):
    """Both read the damage; the first discards it (one warning) and rebuilds, or not yet;
    the second then finds the rebuilt entry, or nothing, and says nothing."""
    for rebuilt in (True, False):
        path = tmp_path / f"k{rebuilt}.bin"
        path.write_bytes(b"\x7fELF" * 40)
        assert cache.read(path) is None  # the first reader
        if rebuilt:
            cache.write_atomic(path, b"good")
        cache.discard(path, "not a ckeir cache entry", keep_valid=True)  # the second, late
        assert cache.read(path) == (b"good" if rebuilt else None)
    lines = warnings(capsys.readouterr().err)
    assert len(lines) == 2 and all("(not a ckeir cache entry)" in line for line in lines)


def test_content_found_unusable_is_discarded_even_if_valid(tmp_path, capsys):
    """A caller whose check of the content failed after the checksum passed (e.g. JSON of
    the wrong shape) discards the entry: it is valid as an entry, not as content."""
    path = tmp_path / "k.bin"
    cache.write_atomic(path, b"[]")
    cache.discard(path, "not a bandwidth record")
    assert not path.exists()
    (line,) = warnings(capsys.readouterr().err)
    assert line.endswith("(not a bandwidth record); rebuilding")


def _read_at_once(path: Path, start, out) -> None:
    err = io.StringIO()
    sys.stderr = err
    start.wait()
    if cache.read(path) is None:
        cache.write_atomic(path, b"rebuilt")
    out.put(err.getvalue())


def test_processes_reading_one_damaged_entry_at_once_warn_once(tmp_path):
    path = tmp_path / "k.bin"
    ctx = multiprocessing.get_context("fork")
    for trial in range(5):
        path.write_bytes(b"damaged " * 64)
        start, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_read_at_once, args=(path, start, out)) for _ in range(4)]
        for p in procs:
            p.start()
        errs = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        assert len(warnings("".join(errs))) == 1, (trial, errs)
        assert cache.read(path) == b"rebuilt"
        assert [p.name for p in tmp_path.iterdir()] == ["k.bin"]  # nothing set aside is left


def test_unwritable_cache_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache.write_atomic(blocker / "sub" / "k.bin", b"x")  # no exception
    assert cache.read(blocker / "sub" / "k.bin") is None
    assert list(tmp_path.iterdir()) == [blocker]


# ---- real runs on a damaged cache --------------------------------------------------------------


def entry_key(path: Path) -> str | None:
    """The key each kind of entry is written for (objects: their cache key)."""
    return path.stem if path.suffix == ".o" else None


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def run(spec: Path, root: Path, *extra: str):
    return ckec("run", spec, "--ids", IDS, "-n", 4, *extra, env={"CKEIR_CACHE_DIR": str(root)})


def flip(offset: int, bit: int = 0) -> Callable[[bytes, bytes], bytes]:
    def damage(raw: bytes, _other: bytes) -> bytes:
        out = bytearray(raw)
        out[offset if offset >= 0 else len(raw) + offset] ^= 1 << bit
        return bytes(out)

    return damage


def mid_content(raw: bytes, _other: bytes) -> bytes:
    return flip(H + (len(raw) - H) // 2, 3)(raw, _other)


# Each damage turns an entry's bytes (and another entry's, for the wrong-key case) into what
# is found on disk; None: a directory in its place.
DAMAGES: dict[str, Callable[[bytes, bytes], bytes | None]] = {
    "truncated-in-header": lambda raw, _: raw[: H // 2],
    "header-only": lambda raw, _: raw[:H],
    "truncated-mid-content": lambda raw, _: raw[: H + (len(raw) - H) // 2],
    "last-byte-missing": lambda raw, _: raw[:-1],
    "flip-magic": flip(0),
    "flip-key": flip(20, 5),
    "flip-length": flip(44, 1),
    "flip-checksum": flip(70, 6),
    "flip-mid-content": mid_content,
    "flip-last-byte": flip(-1, 7),
    "another-keys-entry": lambda _, other: other,
    "empty": lambda raw, _: b"",
    "directory": lambda raw, _: None,
    "older-format": lambda raw, _: raw[H:],
}


def damage_each(root: Path, hows: list[str], start: int = 0) -> dict[Path, str]:
    """Damage the entries under `root` (in path order) with `hows` in turn from `start`; each
    gets the next entry's bytes as the 'other key'.  Returns each damaged path's damage."""
    paths = entries(root)
    raws = [p.read_bytes() for p in paths]
    dealt = {}
    for i, p in enumerate(paths):
        how = dealt[p] = hows[(start + i) % len(hows)]
        out = DAMAGES[how](raws[i], raws[(i + 1) % len(raws)])
        p.unlink()
        if out is None:
            p.mkdir()
            (p / "junk").write_bytes(raws[i])
        else:
            p.write_bytes(out)
    return dealt


def assert_healed(r, clean_ids: str, damaged: dict[Path, str]) -> None:
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == clean_ids
    assert "Traceback" not in r.stderr
    lines = warnings(r.stderr)
    for p, how in damaged.items():  # exactly one line per damaged entry, nothing else
        assert sum(f" {p} (" in line for line in lines) == 1, (p, how, r.stderr)
    assert len(lines) == len(damaged), r.stderr
    for p, how in damaged.items():  # rewritten valid
        assert cache.read(p, entry_key(p)) is not None, (p, how)


@pytest.fixture(scope="module")
def gguf_spec(tmp_path_factory) -> Path:
    """A small GGUF model on one node: a single rank reads the bandwidth record too."""
    d = tmp_path_factory.mktemp("model")
    return spec_for(write_gguf(d / "m.gguf"), d)


@pytest.fixture(scope="module")
def clean_gguf_cache(gguf_spec, tmp_path_factory) -> tuple[Path, str]:
    """A warm cache of every kind: objects, lowered programs, the GGUF index, bandwidth."""
    root = tmp_path_factory.mktemp("cache")
    r = run(gguf_spec, root, "--measure-bandwidth")
    assert r.returncode == 0, r.stderr
    kinds = {p.parent.name if p.parent != root else "objects" for p in entries(root)}
    # and the bandwidth record, in a folder of its own (whatever runtime.bandwidth names it)
    assert {"objects", "lowered", "gguf"} < kinds and len(kinds) == 4, kinds
    return root, r.stdout.split()[-1]


@pytest.fixture(scope="module")
def clean_tiny_cache(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("cache")
    r = run(TINY, root)
    assert r.returncode == 0, r.stderr
    return root, r.stdout.split()[-1]


# A cold compile per run is nearly all of these tests' time, so a run damages every entry
# (objects, lowered program, GGUF index, bandwidth record) each in another way, and the
# rounds together deal every damage; the entries share one format, which the tests above
# damage in process, and differ in who rebuilds them.
HEAL_ROUNDS = 3


@pytest.mark.parametrize("round_", range(HEAL_ROUNDS))
def test_a_damaged_cache_heals(round_, gguf_spec, clean_gguf_cache, tmp_path):
    clean, ids = clean_gguf_cache
    root = tmp_path / "cache"
    shutil.copytree(clean, root)
    n = len(entries(root))
    assert HEAL_ROUNDS * n >= len(DAMAGES), "the rounds no longer deal every damage"
    dealt = damage_each(root, list(DAMAGES), round_ * n)
    assert_healed(run(gguf_spec, root), ids, dealt)


@pytest.mark.parametrize(
    "how", ["truncated-mid-content", "flip-mid-content", "another-keys-entry", "directory"]
)
def test_local_ranks_heal_a_damaged_cache(how, clean_tiny_cache, tmp_path):
    """Two local ranks share some objects: still one warning per entry."""
    clean, ids = clean_tiny_cache
    root = tmp_path / "cache"
    shutil.copytree(clean, root)
    damaged = damage_each(root, [how])  # before the run that must heal it
    assert_healed(run(TINY, root), ids, damaged)


def test_concurrent_cold_runs(clean_tiny_cache, tmp_path):
    _, ids = clean_tiny_cache
    root = tmp_path / "cache"
    cmd = command("run", TINY, "--ids", IDS, "-n", "4")
    env = dict(os.environ, CKEIR_CACHE_DIR=str(root))
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.split()[-1] == ids and warnings(err) == []
    assert not list(root.rglob(".*.tmp")) and not list(root.rglob(".*.discarded"))
    for p in entries(root):
        assert cache.read(p, entry_key(p)) is not None, p


@pytest.mark.parametrize("spec", ["tiny", "gguf"])
def test_unwritable_cache_only_costs_time(spec, request, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    if spec == "tiny":
        path, (_, ids), extra = TINY, request.getfixturevalue("clean_tiny_cache"), ()
    else:  # a single rank: the bandwidth record too
        path, (_, ids) = (
            request.getfixturevalue("gguf_spec"),
            request.getfixturevalue("clean_gguf_cache"),
        )
        extra = ("--measure-bandwidth",)
    r = run(path, blocker / "sub", *extra)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == ids
    assert warnings(r.stderr) == [] and "Traceback" not in r.stderr
    assert blocker.read_text() == "not a directory"


def test_an_entry_larger_than_any_is_not_read(tmp_path, capsys, monkeypatch):
    path = tmp_path / "k.bin"
    with open(path, "wb") as f:  # sparse: no disk used
        f.truncate(1 << 40)
    monkeypatch.setattr(cache, "_digest", lambda _: pytest.fail("read a 1 TiB entry"))
    assert cache.read(path) is None
    (line,) = warnings(capsys.readouterr().err)
    assert "1099511627776 bytes, larger than any entry" in line and not path.exists()
