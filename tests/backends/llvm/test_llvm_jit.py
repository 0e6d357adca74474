"""The JIT: compile, object cache on disk (a hit skips optimization and codegen), errors."""

from __future__ import annotations

import ctypes

import pytest

from ckeir.backends.llvm.jit import compile_ir
from ckeir.cache import cache_dir
from ckeir.errors import BackendError

ADD_IR = """
define i64 @add3(i64 %a) {
  %b = add i64 %a, 3
  ret i64 %b
}
"""


def call_add3(cm) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(cm.address("add3"))(39)


def test_second_compile_hits_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    text = ADD_IR + "; unique to this test\n"
    first = compile_ir(text)
    assert not first.cache_hit and call_add3(first) == 42
    assert list(tmp_path.glob("*.o")) == [tmp_path / f"{first.key}.o"]
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically, nothing left behind
    second = compile_ir(text)
    assert second.cache_hit and second.timings["opt"] < 1e-3
    assert call_add3(second) == 42
    assert set(second.timings) == {"parse", "opt", "codegen", "total"}
    assert "add3" in second.asm() and "add3" in second.optimized_ir()  # rebuilt on demand
    assert not compile_ir(text, opt=2).cache_hit  # the opt level is part of the key


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CKEIR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "ckeir"


def test_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(blocker / "sub"))
    assert call_add3(compile_ir(ADD_IR)) == 42


def test_bad_ir_is_a_backend_error():
    with pytest.raises(BackendError, match="LLVM rejected the generated IR") as info:
        compile_ir("define void @f() {\n  ret i32 0\n}\n")
    assert "Traceback" not in info.value.format()
    with pytest.raises(BackendError, match="no function @missing"):
        compile_ir(ADD_IR).address("missing")
