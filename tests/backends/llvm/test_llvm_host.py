"""Host detection and ISA narrowing (CKEIR_ISA)."""

from __future__ import annotations

import pytest

from ckeir.backends.llvm.host import ISA_LEVELS, _parse_size, _read_caches, detect_host, native_host
from ckeir.errors import BackendError


def test_native_host_is_sane():
    h = native_host()
    assert h.name and h.features and h.cores >= 1
    assert h.l1d >= 4096 and h.l2 >= h.l1d and h.l3 >= 0
    assert h.vector_bits in (128, 256, 512) and h.vector_width == h.vector_bits // 32
    assert h.isa in ISA_LEVELS


@pytest.mark.parametrize("isa,bits", [("generic", 128), ("avx2", 256), ("avx512", 512)])
def test_narrowing(isa, bits):
    if ISA_LEVELS.index(isa) > ISA_LEVELS.index(native_host().isa):
        with pytest.raises(BackendError, match="lacks"):
            native_host().narrowed(isa)
        return
    h = detect_host(isa)
    assert h.isa == isa and h.vector_bits == bits
    feats = h.llvm_features_string().split(",")
    if isa != "avx512":
        assert "-avx512f" in feats and not h.has_vnni
    if isa == "generic":
        assert "-avx" in feats and "-avx2" in feats and "-fma" in feats
    assert set(f[1:] for f in feats if f.startswith("+")) == h.features


def test_env_var_selects_the_level(monkeypatch):
    monkeypatch.setenv("CKEIR_ISA", "generic")
    assert detect_host().isa == "generic"
    monkeypatch.setenv("CKEIR_ISA", "sse9")
    with pytest.raises(BackendError, match="unknown ISA level 'sse9'"):
        detect_host()
    monkeypatch.delenv("CKEIR_ISA")
    assert detect_host() == native_host()


def test_cache_sizes_from_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate(
        [
            (1, "Data", "48K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "2048K"),
            (3, "Unified", "32M"),
        ]
    ):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert _read_caches(tmp_path) == {"l1d": 48 * 1024, "l2": 2 * 1024**2, "l3": 32 * 1024**2}
    assert _read_caches(tmp_path / "missing")["l1d"] > 0  # fallbacks
    assert _parse_size("512") == 512
