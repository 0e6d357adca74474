"""Run lowered programs: buffers (arena, KV cache, inputs), the ctx slots, the thread pool.

One `NativeEngine` serves a model's prefill and decode programs; they share the KV cache.
Python only writes the inputs, starts the pool once per program call, and reads the outputs.
Each call runs on as many of the pool's threads as its phase's `width.WidthPolicy` finds
fastest (a decode token, a prefill call at a time); the tokens are the same at any width.

`NativeSlots` serves a `batch B` spec's programs as B sequence slots (`runtime.batching`'s
`SlotEngine`): one slot-major KV cache, a prefill call on one slot's region, one call of
the batched decode program for every row of a step.
"""

from __future__ import annotations

import time

import numpy as np

from ckeir.backends.llvm.jit import CompiledModule
from ckeir.backends.llvm.kernels import BARRIER_STATE_BYTES
from ckeir.backends.llvm.lower import LoweredModule, ProgramABI
from ckeir.backends.llvm.pool import Pool
from ckeir.backends.llvm.width import WidthPolicy
from ckeir.errors import BackendError, CkeError
from ckeir.runtime.batching import check_rows, check_span
from ckeir.runtime.memory import Region, huge_pages_wanted, huge_zeros, regions_of


def lazy_zeros(shape, dtype=np.float32) -> np.ndarray:
    """Zeroed memory that becomes resident page by page as it is written (4 KiB pages, even
    where THP is `always`).  For KV caches: laid out layer by layer, each layer's rows fill
    from position 0, so huge pages would make 2 MiB resident for every layer and K/V a short
    context touches (SmolLM2: 120 MiB from the first token, against 6 MiB at 128 positions),
    and buy little: attention over a long context runs far below the bandwidth where TLB
    misses cost (benchmarks/hugepages.py: 0.94-1.25x at 2048-4096 positions, in the noise)."""
    count = int(np.prod(shape))
    raw = huge_zeros(count * np.dtype(dtype).itemsize, huge=False)
    return raw.view(dtype)[:count].reshape(shape)


def aligned_zeros(nbytes: int, align: int = 64) -> np.ndarray:
    """A zeroed uint8 buffer whose data starts on an `align`-byte boundary."""
    raw = np.zeros(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start : start + nbytes]


def shard_of(weights: dict[str, np.ndarray], slot: str, shard) -> np.ndarray:
    """The array a weight slot points at: the whole weight, or its rows [r0, r1) and columns
    [c0, c1) (for GGML blocks, columns are whole blocks of bytes).  Row slices of a memory-
    mapped file stay views; column slices copy only the shard."""
    name = slot.split("@", 1)[0]
    w = weights.get(name)
    if w is None:
        raise BackendError(f"weight '{name}' is missing")
    if shard is not None:
        r0, r1, c0, c1, block, block_bytes = shard
        if w.ndim == 2 and w.dtype == np.uint8:
            w = w[r0:r1, c0 // block * block_bytes : c1 // block * block_bytes]
        elif w.ndim == 2:
            w = w[r0:r1, c0:c1]
        else:
            w = w[r0:r1]
    return np.ascontiguousarray(w)


class _Program:
    def __init__(
        self,
        abi: ProgramABI,
        address: int,
        weights: dict[str, np.ndarray],
        kcache: np.ndarray,
        vcache: np.ndarray,
        huge_pages: bool | None = None,
    ):
        self.abi, self.address = abi, address
        # every op reads and writes the arena: on huge pages its TLB misses go too
        self.arena = huge_zeros(max(abi.arena_bytes, 64), huge=huge_pages_wanted(huge_pages))
        self.kcache, self.vcache = kcache, vcache
        self.barrier = aligned_zeros(BARRIER_STATE_BYTES)
        self.ids = np.zeros(max(abi.max_tokens, 1), dtype=np.int32)
        self.ctx = np.zeros(len(abi.slots), dtype=np.uint64)
        fixed = {
            "arena": self.arena,
            "barrier": self.barrier,
            "ids": self.ids,
            "kcache": kcache,
            "vcache": vcache,
        }
        # a batched decode program's rows: each one's position and sequence slot
        self.batched = "positions" in abi.slots
        if self.batched:
            self.positions = fixed["positions"] = np.zeros(abi.max_tokens, dtype=np.int64)
            self.seq_slots = fixed["seq_slots"] = np.zeros(abi.max_tokens, dtype=np.int32)
        for name, buf in fixed.items():
            self.ctx[abi.slot(name)] = buf.ctypes.data
        self._keep = []
        for slot in abi.weights:
            w = shard_of(weights, slot, abi.shards.get(f"weight:{slot}"))
            self._keep.append(w)
            self.ctx[abi.slot(f"weight:{slot}")] = w.ctypes.data

    def regions(self) -> list[Region]:
        """The memory this program computes in: the weights it points at, its arena, the
        KV cache it shares."""
        return [
            *regions_of("weights", self._keep),
            Region.of("arena", self.arena),
            Region.of("kv_cache", self.kcache),
            Region.of("kv_cache", self.vcache),
        ]

    def output(self, i: int, dtype) -> np.ndarray:
        off, size = self.abi.outputs[i]
        return self.arena[off : off + size].view(dtype).copy()


def is_batched(lowered: LoweredModule) -> bool:
    """Whether the module's decode program is a batched one (rows of several sequences)."""
    decode = lowered.programs.get("decode")
    return decode is not None and "positions" in decode.slots


def allocated_cache_shape(lowered, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The K (and V) cache the module's programs share: a batched decode program's (slot-major),
    else any program's (plan-memory lays out every func of a module alike), else `shape`."""
    abis = list(lowered.programs.values())
    batched = [a for a in abis if "positions" in a.slots]
    return next((a.cache_shape for a in batched or abis if a.cache_shape), tuple(shape))


def _programs(lowered, compiled, weights, kcache, vcache, huge_pages) -> dict[str, _Program]:
    """Each program of the module over the caches: a batched decode program over all of
    slot-major caches, every other program over slot 0's region of them (or over them
    whole, when they are one sequence's)."""
    slot_major = is_batched(lowered)
    out = {}
    for name, abi in lowered.programs.items():
        whole = not slot_major or "positions" in abi.slots
        k, v = (kcache, vcache) if whole else (kcache[0], vcache[0])
        out[name] = _Program(abi, compiled.address(abi.symbol), weights, k, v, huge_pages)
    return out


class _Engine:
    """What the engines over a pool share: a program call on as many of the pool's threads
    as its phase's width policy chooses, timed and recorded; the memory they hold."""

    pool: Pool
    widths: WidthPolicy
    native_seconds: dict[str, float]
    events: list[tuple]
    programs: dict[str, _Program]
    kcache: np.ndarray
    vcache: np.ndarray

    def _call(self, name: str, p: _Program, n: int) -> None:
        width = self.widths.choose(name)
        t0 = time.perf_counter()
        self.pool.run(p.address, p.ctx.ctypes.data, self_completing=True, width=width)
        dt = time.perf_counter() - t0
        self.widths.observe(name, width, dt, n)
        self.native_seconds[name] += dt
        if len(self.events) < 100_000:
            self.events.append((name, -1, 0, t0, dt))

    def memory_regions(self) -> list[Region]:
        """Weights, arenas and KV cache this engine holds (see `ckeir.runtime.memory`): each
        program's weights and arena, the KV cache once (programs may share it or a slot's
        region of it)."""
        out = []
        for p in self.programs.values():
            out += [r for r in p.regions() if r.name != "kv_cache"]
        return out + [Region.of("kv_cache", self.kcache), Region.of("kv_cache", self.vcache)]


class NativeEngine(_Engine):
    """Engine (see `ckeir.runtime.generate`) over the native prefill and decode programs.
    A batched decode program (`batch B`) runs this engine's one sequence as its slot 0, in
    slot-major caches: the same ids as the `batch 1` programs."""

    def __init__(
        self,
        lowered: LoweredModule,
        compiled: CompiledModule,
        weights: dict[str, np.ndarray],
        cache_shape: tuple[int, int, int],
        threads: int,
        host=None,
        huge_pages: bool | None = None,
        adaptive: bool | None = None,
        pool: Pool | None = None,
    ):
        self.compiled = compiled  # keeps the machine code alive
        self.context = cache_shape[-2]
        # the cache as the programs lay it out: (L, C, KVD), or plan-memory's packed rows
        # (sliding-window layers in rings), slot-major for a batched decode program
        cache_shape = allocated_cache_shape(lowered, cache_shape)
        self.kcache = lazy_zeros(cache_shape)
        self.vcache = lazy_zeros(cache_shape)
        # engines of one process's sequence slots share one pool (and close it with theirs)
        self._owns_pool = pool is None
        self.pool = Pool(threads, host) if pool is None else pool
        # how many of the pool's threads each call takes (None: CKEIR_ADAPTIVE_THREADS says)
        self.widths = WidthPolicy.for_pool(threads, adaptive)
        self.programs = _programs(lowered, compiled, weights, self.kcache, self.vcache, huge_pages)
        self.max_prefill = self.programs["prefill"].abi.max_tokens
        # seconds inside the native program per phase (the rest of a step is Python)
        self.native_seconds = dict.fromkeys(self.programs, 0.0)
        self.events: list[tuple] = []  # (kind, peer, bytes, t0, seconds) for traces

    def _run(self, name: str, ids: np.ndarray, pos: int):
        p = self.programs[name]
        n = len(ids)
        p.ids[:n] = ids
        p.ctx[p.abi.slot("n")] = n
        p.ctx[p.abi.slot("pos")] = pos
        if p.batched:  # one row: this engine's sequence, in slot 0
            p.positions[0], p.seq_slots[0] = pos, 0
        self._call(name, p, n)
        logits = p.output(1, np.float32)
        if p.batched:
            logits = logits[: len(logits) // p.abi.max_tokens]
        return int(p.output(0, np.int32)[0]), logits

    def prefill(self, ids: np.ndarray, pos: int):
        return self._run("prefill", ids, pos)

    def decode(self, token: int, pos: int):
        return self._run("decode", np.array([token], dtype=np.int32), pos)

    def reset(self) -> None:
        """Start a new sequence.  The KV cache is not cleared: attention reads rows 0..pos+t
        only, and every one of them is written first; clearing would make the whole cache
        (hundreds of MB at long contexts) resident for nothing."""

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()


class NativeSlots(_Engine):
    """`runtime.batching.SlotEngine` over the native programs of a `batch B` spec: the
    prefill program (one sequence, rank-3 caches) and the batched decode program (rows of
    several sequences, slot-major caches).  The KV cache is (B, L, C, KVD), zeroed lazily;
    a prefill runs on `cache[slot]` (contiguous: the slot is the outermost dimension), a
    decode step is one call for all its rows, each row computing what its sequence's
    one-sequence decode computes (`lower`: the batched func's per-row kernels)."""

    def __init__(
        self,
        lowered: LoweredModule,
        compiled: CompiledModule,
        weights: dict[str, np.ndarray],
        threads: int,
        host=None,
        huge_pages: bool | None = None,
        adaptive: bool | None = None,
        pool: Pool | None = None,
    ):
        decode = lowered.programs.get("decode")
        if not is_batched(lowered) or "prefill" not in lowered.programs:
            raise BackendError(
                "NativeSlots runs a batched decode program beside a prefill program",
                hint="compile a spec whose schedule says `batch N` with N > 1",
            )
        self.compiled = compiled
        self.slots, self.context = decode.cache_shape[0], decode.context
        self.kcache = lazy_zeros(decode.cache_shape)
        self.vcache = lazy_zeros(decode.cache_shape)
        self._owns_pool = pool is None
        self.pool = Pool(threads, host) if pool is None else pool
        self.widths = WidthPolicy.for_pool(threads, adaptive)
        self.programs = _programs(lowered, compiled, weights, self.kcache, self.vcache, huge_pages)
        self.max_prefill = self.programs["prefill"].abi.max_tokens
        self.vocab = decode.outputs[1][1] // 4 // decode.max_tokens
        self.native_seconds = dict.fromkeys(self.programs, 0.0)
        self.events: list[tuple] = []

    def prefill(self, slot: int, ids: np.ndarray, pos: int) -> tuple[int, np.ndarray]:
        """`ids` at positions pos.. of `slot`'s sequence: (argmax of the last row, its
        logits)."""
        ids = np.asarray(ids, dtype=np.int32)
        check_span(slot, pos, len(ids), self.slots, self.context)
        if not 1 <= len(ids) <= self.max_prefill:
            raise CkeError(f"a prefill call takes 1 to {self.max_prefill} ids, not {len(ids)}")
        p = self.programs["prefill"]
        p.ids[: len(ids)] = ids
        p.ctx[p.abi.slot("kcache")] = self.kcache[slot].ctypes.data
        p.ctx[p.abi.slot("vcache")] = self.vcache[slot].ctypes.data
        p.ctx[p.abi.slot("n")] = len(ids)
        p.ctx[p.abi.slot("pos")] = pos
        self._call("prefill", p, len(ids))
        return int(p.output(0, np.int32)[0]), p.output(1, np.float32)

    def decode(self, rows: list[tuple[int, int, int]]) -> list[tuple[int, np.ndarray]]:
        """One step: rows of (slot, token, pos), each slot at most once → (argmax, logits)
        per row, in order."""
        check_rows(rows, self.slots, self.context, self.vocab)
        n = len(rows)
        p = self.programs["decode"]
        for t, (slot, token, pos) in enumerate(rows):
            p.ids[t], p.positions[t], p.seq_slots[t] = token, pos, slot
        p.ctx[p.abi.slot("n")] = n
        p.ctx[p.abi.slot("pos")] = 0
        self._call("decode", p, n)
        tokens = p.output(0, np.int32)[:n]
        logits = p.output(1, np.float32).reshape(-1, self.vocab)
        return [(int(tokens[t]), logits[t].copy()) for t in range(n)]

    def release(self, slot: int) -> None:
        """Nothing to clear: a sequence's attention reads only the rows it wrote (see
        `NativeEngine.reset`)."""
        check_span(slot, 0, 1, self.slots, self.context)

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()
