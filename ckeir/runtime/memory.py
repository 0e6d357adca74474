"""Memory a run holds, and how much of it sits on transparent huge pages.

One allocator (`huge_zeros`): anonymous memory aligned to 2 MiB and advised `MADV_HUGEPAGE`,
so the kernel backs every whole 2 MiB of it with one huge page.  On virtual machines a TLB
miss is expensive (nested paging): on the project's Zen 4 VMs a 256 MiB read sweep streams
17-19 GB/s over 4 KiB pages and 32 GB/s over huge pages, and decode streams every weight
once per token.

The accounting (`huge_page_bytes`) reads /proc/self/smaps: what the kernel actually gave
(`AnonHugePages` for anonymous memory, `FilePmdMapped` for a file mapped with huge pages),
never what was asked for.  A program states the regions it holds (`Region`: weights, arena,
KV cache) and `huge_pages_report` sums them for the run report.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import attrs
import numpy as np

HUGE_PAGE = 2 << 20  # x86-64's PMD size; the only THP size this module asks for
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
ENV_SWITCH = "CKEIR_HUGE_PAGES"  # "0" turns huge pages off for weights and arenas

# smaps fields that count bytes mapped by a PMD (one huge page)
_HUGE_FIELDS = ("AnonHugePages", "FilePmdMapped", "ShmemPmdMapped")


@attrs.frozen
class Region:
    """A range of this process's memory that a program holds, named by what it holds:
    `weights`, `arena` or `kv_cache`."""

    name: str
    address: int
    length: int

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> Region:
        return cls(name, array.ctypes.data, array.nbytes)


def regions_of(name: str, arrays) -> list[Region]:
    """The memory behind `arrays` as few regions: ranges that overlap or lie within a page of
    each other (the tensors of one file map or one copy) become one."""
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays if a.nbytes)
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + mmap.PAGESIZE:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [Region(name, lo, hi - lo) for lo, hi in merged]


def thp_mode() -> str | None:
    """The kernel's transparent huge page policy (`always`, `madvise` or `never`), or None
    where it cannot be read (not Linux, or no THP support)."""
    try:
        text = THP_ENABLED.read_text()
    except OSError:
        return None
    chosen = [w[1:-1] for w in text.split() if w.startswith("[")]
    return chosen[0] if chosen else None


def huge_pages_wanted(option: bool | None = None) -> bool:
    """Whether weights and arenas go on huge pages: the caller's choice when it made one,
    else the environment (`CKEIR_HUGE_PAGES=0` opts out), else yes."""
    if option is not None:
        return bool(option)
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "no", "false", "off")


def huge_zeros(nbytes: int, huge: bool = True) -> np.ndarray:
    """`nbytes` of zeroed anonymous memory (uint8) starting on a 2 MiB boundary.  With `huge`,
    advised `MADV_HUGEPAGE`: each 2 MiB becomes resident as one huge page at its first touch.
    Without it, advised `MADV_NOHUGEPAGE`, so that memory touched sparsely (a KV cache) stays
    resident page by page even where THP is `always`.

    Less than 1 MiB stays on 4 KiB pages.  The map is over-allocated by 2 MiB to find the boundary; the unused head is never touched
    and never resident."""
    nbytes = max(int(nbytes), 1)
    # below half a huge page the rounding would cost more memory than the TLB saves
    huge = huge and nbytes >= HUGE_PAGE // 2
    span = -(-nbytes // HUGE_PAGE) * HUGE_PAGE  # whole huge pages: the tail is one too
    m = mmap.mmap(-1, span + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = np.frombuffer(m, dtype=np.uint8)
    start = (-whole.ctypes.data) % HUGE_PAGE
    advice = "MADV_HUGEPAGE" if huge else "MADV_NOHUGEPAGE"
    if hasattr(mmap, advice):
        m.madvise(getattr(mmap, advice), start, span)
    return whole[start : start + nbytes]


def huge_page_bytes(address: int, length: int, maps=None) -> int:
    """Bytes of [address, address + length) in this process that the kernel maps with huge
    pages, from /proc/self/smaps.  smaps counts per mapping (VMA): a mapping wholly inside the
    range counts in full; one that straddles its edge (the kernel merges adjacent anonymous
    maps) counts in proportion to the overlap.  0 where smaps cannot be read.  `maps`: a
    `_smaps()` read already, for several ranges at one moment."""
    end = address + length
    total = 0.0
    for lo, hi, fields in _smaps() if maps is None else maps:
        overlap = min(hi, end) - max(lo, address)
        if overlap <= 0:
            continue
        huge = sum(fields.get(f, 0) for f in _HUGE_FIELDS)
        total += huge * overlap / (hi - lo)
    return min(int(total), length)


def resident_bytes(address: int, length: int) -> int:
    """Bytes of the range that are resident, page by page (mincore(2)); 0 where it cannot be
    asked.  Exact where smaps would count whole mappings: a KV cache is resident only where
    it was written."""
    page = mmap.PAGESIZE
    lo = address - address % page
    pages = -(-(address + length - lo) // page)
    vec = (ctypes.c_ubyte * max(pages, 1))()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    if pages == 0 or libc.mincore(ctypes.c_void_p(lo), pages * page, vec) != 0:
        return 0
    return min(int(np.frombuffer(vec, np.uint8).__and__(1).sum()) * page, length)


def huge_pages_report(regions: list[Region]) -> dict:
    """Per kind of region (weights, arena, kv_cache): bytes held, bytes resident, and bytes
    on huge pages; each distinct range counted once.  Shape of `linux.huge_pages`."""
    out: dict[str, dict] = {}
    maps = _smaps()  # one read for every region
    for r in sorted(set(regions), key=lambda r: (r.name, r.address)):
        entry = out.setdefault(r.name, {"bytes": 0, "resident_bytes": 0, "huge_page_bytes": 0})
        entry["bytes"] += r.length
        entry["resident_bytes"] += resident_bytes(r.address, r.length)
        entry["huge_page_bytes"] += huge_page_bytes(r.address, r.length, maps)
    return out


def _smaps():
    """(start, end, {field: bytes}) for every mapping of this process."""
    try:
        with open("/proc/self/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    maps, fields = [], None
    for line in lines:
        head, _, rest = line.partition(" ")
        if head.endswith(":"):
            if fields is not None and rest.endswith(" kB"):
                fields[head[:-1]] = int(rest.split()[0]) * 1024
            continue
        lo, _, hi = head.partition("-")
        fields = {}
        maps.append((int(lo, 16), int(hi, 16), fields))
    return maps
