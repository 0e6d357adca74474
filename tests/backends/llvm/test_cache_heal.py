"""A damaged object in the disk cache is never loaded into the JIT: it is discarded with one
warning, compiled again and rewritten (before, MCJIT aborted or ran the damaged code)."""

from __future__ import annotations

import ctypes

import pytest

from ckeir import cache
from ckeir.backends.llvm.jit import compile_ir

IR = """
define i64 @mul7(i64 %a) {
  %b = mul i64 %a, 7
  ret i64 %b
}
; test_cache_heal
"""


def call_mul7(cm) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(cm.address("mul7"))(6)


def flip(raw: bytes, offset: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 0x10
    return bytes(out)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated mid object
        lambda raw: raw[: cache.HEADER.size + 16],  # only the ELF header left
        lambda raw: flip(raw, cache.HEADER.size + 0x40),  # in the ELF section table area
        lambda raw: flip(raw, len(raw) - 1),
        lambda raw: flip(raw, 30),  # in the key digest
        lambda raw: raw[cache.HEADER.size :],  # a bare object, as written before headers
    ],
    ids=["truncated", "elf-header-only", "flip-early", "flip-last", "flip-key", "bare-object"],
)
def test_damaged_object_is_recompiled(damage, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    first = compile_ir(IR)
    path = tmp_path / f"{first.key}.o"
    path.write_bytes(damage(path.read_bytes()))
    again = compile_ir(IR)
    assert not again.cache_hit and call_mul7(again) == 42
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: discarded a damaged cache entry {path} (")
    assert cache.read(path, first.key) is not None  # rewritten valid
    healed = compile_ir(IR)
    assert healed.cache_hit and call_mul7(healed) == 42
    assert capsys.readouterr().err == ""


def test_another_modules_object_is_not_loaded(tmp_path, monkeypatch, capsys):
    """An entry copied over another key's path (same length class, valid checksum) is
    refused by its key: the JIT would otherwise run the wrong function."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    a = compile_ir(IR)
    b = compile_ir(IR.replace("7", "5"))
    (tmp_path / f"{a.key}.o").write_bytes((tmp_path / f"{b.key}.o").read_bytes())
    again = compile_ir(IR)
    assert not again.cache_hit and call_mul7(again) == 42
    assert "(written for another key)" in capsys.readouterr().err


def test_a_lowered_program_that_does_not_unpickle_is_discarded(tmp_path, monkeypatch, capsys):
    """A lowered-program entry whose checksum holds but whose content is no pickle (written
    by another ckeir, or a bug) is removed with one warning and rebuilt, not silently kept."""
    from ckeir.backends.llvm.host import detect_host
    from ckeir.backends.llvm.lower import lower_module_cached
    from ckeir.driver import build_ir, resolve, run_passes

    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    job = resolve("specs/tiny.cke")
    module, _, _ = run_passes(build_ir(job), job, single_rank=True)
    host = detect_host()
    _, hit = lower_module_cached(module, host, rank=0)
    (path,) = (tmp_path / "lowered").iterdir()
    cache.write_atomic(path, b"not a pickle")
    capsys.readouterr()
    _, hit = lower_module_cached(module, host, rank=0)
    assert not hit
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: discarded a damaged cache entry {path} (not a lowered")
    _, hit = lower_module_cached(module, host, rank=0)
    assert hit and capsys.readouterr().err == ""  # rewritten whole
