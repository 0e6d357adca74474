"""The lowering cache is keyed on every source that shapes a lowering: a warm start reuses
the pickled program; a change to any of LOWERING_SOURCES (here `formats.py`, the block
layouts, outside the backend's own folder) makes it lower again."""

from __future__ import annotations

import shutil

import pytest

from ckeir import driver
from ckeir.backends.llvm import lower
from ckeir.backends.llvm.host import detect_host

SPEC = """
model m {
  family llama; vocab 64; hidden 32; layers 1; heads 1; kv_heads 1; ffn 32
  context 8; weights random(seed = 1)
}
cluster c { node n0 { cores 1; dram 1GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB } }
schedule s { run m on c }
"""


@pytest.fixture
def module(tmp_path, monkeypatch):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.cke"
    path.write_text(SPEC)
    job = driver.resolve(path)
    module, _, _ = driver.run_passes(driver.build_ir(job), job)
    return module


def sources_copy(tmp_path):
    """A copy of the package's lowering sources, to change one of them."""
    root = tmp_path / "ckeir"
    for rel in lower.LOWERING_SOURCES:
        src, dst = lower.CKEIR_ROOT / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    return root


def test_a_change_to_formats_misses_the_lowering_cache(tmp_path, module, monkeypatch):
    """On a copy of the sources (the working tree may change while the suite runs)."""
    root = sources_copy(tmp_path)
    monkeypatch.setattr(lower, "CKEIR_ROOT", root)
    lower.lowering_fingerprint.cache_clear()
    host = detect_host("generic")
    try:
        assert lower.lower_module_cached(module, host)[1] is False
        assert lower.lower_module_cached(module, host)[1] is True
        lower.lowering_fingerprint.cache_clear()
        assert lower.lower_module_cached(module, host)[1] is True  # the same sources
        lower.lowering_fingerprint.cache_clear()
        formats = root / "formats.py"
        formats.write_text(formats.read_text() + "\n# a block layout changed\n")
        assert lower.lower_module_cached(module, host)[1] is False
    finally:
        lower.lowering_fingerprint.cache_clear()
