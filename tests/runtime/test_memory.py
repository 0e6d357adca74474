"""The huge-page allocator and its accounting, observed in /proc/self/smaps and mincore: what
the kernel gave, not what was asked for; and a run's arenas and KV cache as it holds them."""

import mmap

import numpy as np
import pytest
from needs import needs_thp

import ckeir
from ckeir.runtime import memory
from ckeir.runtime.memory import (
    HUGE_PAGE,
    Region,
    huge_page_bytes,
    huge_pages_report,
    huge_pages_wanted,
    huge_zeros,
    regions_of,
    resident_bytes,
)

PAGE = mmap.PAGESIZE


def touch(a: np.ndarray) -> None:
    a[::PAGE] = 1


def test_allocation_starts_on_a_huge_page_and_is_zero():
    a = huge_zeros(3 * HUGE_PAGE + 5)
    assert a.ctypes.data % HUGE_PAGE == 0 and a.nbytes == 3 * HUGE_PAGE + 5
    assert not a.any()


@needs_thp
def test_touched_memory_is_on_huge_pages():
    a = huge_zeros(4 * HUGE_PAGE)
    assert huge_page_bytes(a.ctypes.data, a.nbytes) == 0  # nothing touched, nothing given
    touch(a)
    assert huge_page_bytes(a.ctypes.data, a.nbytes) == 4 * HUGE_PAGE
    assert resident_bytes(a.ctypes.data, a.nbytes) == 4 * HUGE_PAGE


def test_without_huge_pages_memory_is_resident_page_by_page():
    a = huge_zeros(4 * HUGE_PAGE, huge=False)
    a[: 3 * PAGE] = 1
    assert huge_page_bytes(a.ctypes.data, a.nbytes) == 0
    assert resident_bytes(a.ctypes.data, a.nbytes) == 3 * PAGE


def test_small_allocations_stay_on_small_pages():
    a = huge_zeros(HUGE_PAGE // 4)
    touch(a)
    assert huge_page_bytes(a.ctypes.data, a.nbytes) == 0


@needs_thp
def test_report_counts_each_region_once_per_kind():
    a, b = huge_zeros(2 * HUGE_PAGE), huge_zeros(2 * HUGE_PAGE, huge=False)
    touch(a)
    b[:10] = 1
    regions = [Region.of("arena", a), Region.of("arena", a), Region.of("kv_cache", b)]
    report = huge_pages_report(regions)
    assert report["arena"] == {
        "bytes": 2 * HUGE_PAGE,
        "resident_bytes": 2 * HUGE_PAGE,
        "huge_page_bytes": 2 * HUGE_PAGE,
    }
    assert report["kv_cache"]["resident_bytes"] == PAGE
    assert report["kv_cache"]["huge_page_bytes"] == 0


def test_regions_of_neighbouring_arrays_merge():
    buf = np.zeros(10_000, np.uint8)
    parts = [buf[:3000], buf[3000:7000], buf[7008:]]
    far = np.zeros(10, np.uint8)
    regions = regions_of("weights", [*parts, far])
    assert Region("weights", buf.ctypes.data, buf.nbytes) in regions
    assert len(regions) == 2


def test_the_switch(monkeypatch):
    monkeypatch.delenv(memory.ENV_SWITCH, raising=False)
    assert huge_pages_wanted() and not huge_pages_wanted(False)
    monkeypatch.setenv(memory.ENV_SWITCH, "0")
    assert not huge_pages_wanted() and huge_pages_wanted(True)


# one node, random weights; a prompt chunk of 256 rows x ffn 1024 makes the prefill arena
# larger than a huge page
SPEC = """
model m {
  family llama; vocab 512; hidden 256; layers 2; heads 4; kv_heads 2; ffn 1024
  context 256; weights random(seed = 3)
}
cluster c { node n0 { cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB } }
schedule s { run m on c; quantize weights q8_0 }
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "m.cke"
    path.write_text(SPEC)
    return path


def _run_regions(spec, **options):
    with ckeir.compile(spec, threads=1, **options) as prog:
        ids = prog.generate([1, 2, 3], max_new_tokens=4)
        return ids, huge_pages_report(prog.memory_regions())


def test_a_run_holds_its_kv_cache_only_where_it_wrote(spec):
    """Seven positions of a KV cache reserved for the whole context: a few pages resident per
    layer, never a huge page (4 KiB pages: see `engine.lazy_zeros`)."""
    _, report = _run_regions(spec)
    kv = report["kv_cache"]
    assert kv["huge_page_bytes"] == 0
    assert 0 < kv["resident_bytes"] < kv["bytes"] / 4


@needs_thp
def test_a_run_computes_in_arenas_on_huge_pages_unless_turned_off(spec):
    ids_on, on = _run_regions(spec)
    ids_off, off = _run_regions(spec, huge_pages=False)
    assert ids_on == ids_off
    assert on["arena"]["bytes"] > HUGE_PAGE
    assert on["arena"]["huge_page_bytes"] >= HUGE_PAGE
    assert off["arena"]["huge_page_bytes"] == 0 and off["arena"]["resident_bytes"] > 0
