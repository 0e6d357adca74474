"""The machine a run uses, measured, and what a run should take on it.

`run_prediction` is the one entry the reports use (one rank, local ranks and MPI alike): the
planner's replay of a decode step (`ckeir.planner.predict`) with every figure measured here
instead of read from the spec —

- the read bandwidth of this machine per thread count (`bandwidth.read_bandwidth`), shared
  between the ranks of a tensor-parallel stage, which stream their weights at once;
- the weight bytes per second of the real matmul kernels a decode step runs, at the
  program's own shapes and tiles, from weights far larger than L3, on the rank's threads;
- the arithmetic rate of the largest of those kernels on a prompt-sized block (prefill);
- the fixed costs: one dispatch of the thread pool (a native segment), one message and one
  all-reduce of a decode row between two local ranks over shared memory from Python, and
  each collective of the programs as local ranks run it in native code (one call per token:
  `native_collectives`, `collective_times`);
- the links as the run simulated them (`--simulate-links`), or none between local ranks.

Every figure is remembered per machine in the disk cache (`bandwidth.remembered`: the best
of the last few, measured again when stale), so the first prediction on a machine measures
for a few seconds and later ones only read."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import os
import time

import attrs
import numpy as np

from ckeir.backends.llvm.host import HostCPU, detect_host, usable_cpus
from ckeir.ir.types import element_format
from ckeir.passes.manager import funcs
from ckeir.planner import cost
from ckeir.planner.predict import OpTime, measured_kind, op_signature, predict
from ckeir.runtime import bandwidth

ROW_BYTES = 576 * 4  # the decode row the transport costs are measured with
MESSAGES = 400  # messages (and all-reduces) timed per transport measurement
PROMPT_ROWS = 64  # rows of the prefill-like block the arithmetic rate is measured on
SWEEPS = 5  # passes over a kernel's weight copies; the best counts


@attrs.frozen
class RunPrediction:
    decode_seconds_per_token: float
    # (lower rank, higher rank) -> the simulated link between them (None: not shaped)
    links: dict = attrs.field(factory=dict)
    basis: dict = attrs.field(factory=dict)  # what the prediction assumed, for the report
    overheads: cost.Overheads = cost.Overheads()  # the transport's and dispatch's own costs

    def hop_seconds(self, a: int, b: int, nbytes: float) -> float:
        """A message of `nbytes` from rank a to rank b (`cost.message_time`): its link's
        time, or the transport's own cost where there is no link or that is longer."""
        link = self.links.get((min(a, b), max(a, b))) or cost.NO_LINK
        return cost.message_time(link, nbytes, self.overheads)


# ---- measuring --------------------------------------------------------------------------------

_REMEASURE = contextvars.ContextVar("remeasure", default=False)


@contextlib.contextmanager
def measuring_again():
    """Inside the block, every figure a prediction uses is measured again and remembered
    beside the earlier ones (the prediction takes the best of the fresh ones): for a
    benchmark that measures its runs in rounds, so that a burst of load from elsewhere
    during one measurement of the machine weighs no more than during one run."""
    token = _REMEASURE.set(True)
    try:
        yield
    finally:
        _REMEASURE.reset(token)


def _remembered(path, measure, **kwargs) -> float:
    """`bandwidth.remembered`, measured again inside `measuring_again`."""
    return bandwidth.remembered(path, measure, refresh=_REMEASURE.get(), **kwargs)


def _best_time(fn, repeat: int = SWEEPS) -> float:
    fn()  # warm-up: pages, caches, the pool's threads
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


FAMILY_SHAPE = (2048, 1024)  # N x K a family's arithmetic rate is measured at
BARRIERS = 1000  # op syncs timed per measurement


class _KernelBench:
    """One matmul kernel with copies of its weights filling 4 x L3 (or `copies`), cycled
    through one `Pool.run` per call: every weight byte comes from DRAM.  The kernel runs as
    a program's entry runs it (`schedule.Scheduler`: its parts claimed by whichever thread
    comes, the call over when thread 0 is), so a thread the OS takes off its CPU costs what
    it costs a decode step, not a whole call's wait for the last thread."""

    def __init__(
        self,
        family: str,
        host: HostCPU,
        rows: int,
        copies: int | None = None,
        shape: tuple[int, int] = FAMILY_SHAPE,
        tile: tuple[int, int] = (64, 256),
        chunk: int = 0,
        separate: bool = False,
    ):
        from ckeir.backends.llvm.jit import compile_ir
        from ckeir.backends.llvm.kernels import BARRIER_STATE_BYTES, module_ir, weight_matmul
        from ckeir.backends.llvm.kernels.quant_matmul import qmatmul
        from ckeir.runtime.weights import quantize_rows

        fmt, act = family.split("/")
        n, k = shape
        rng = np.random.default_rng(0)
        sample = rng.standard_normal((n, k)).astype(np.float32)
        one = sample if fmt == "f32" else quantize_rows(sample, fmt)
        self.nbytes = one.nbytes
        self.copies = copies or max(1, -(-4 * host.l3 // self.nbytes))
        self.w = np.ascontiguousarray(np.tile(one, (self.copies, 1)))
        self.x = rng.standard_normal((rows, k)).astype(np.float32)
        # a chunked kernel (`k_chunk`, see `cost.matmul_shape_kind`) as the program runs it
        slots = k // chunk if separate else 1
        self.out = np.zeros((slots * rows, n), np.float32)
        if chunk:
            kernel = qmatmul(fmt, n, k, tuple(tile), host, chunk, separate)
        else:
            kernel = weight_matmul(fmt, act, n, k, tile, host)
        kernels: dict = {}
        entry = _scheduled_entry(kernel, kernels)
        self.module = compile_ir(module_ir([*kernels.values(), entry]), host)
        self.fn = self.module.address("entry")
        raw = np.zeros(BARRIER_STATE_BYTES + 64, np.uint8)
        self.state = raw[(-raw.ctypes.data) % 64 :]  # one run at a time: one state for all
        x, w, out = self.x.ctypes.data, self.w.ctypes.data, self.out.ctypes.data
        self.ctxs = [
            (ctypes.c_uint64 * 5)(self.state.ctypes.data, x, w + c * self.nbytes, out, rows)
            for c in range(self.copies)
        ]

    def seconds_per_call(self, pool) -> float:
        addrs = [ctypes.addressof(c) for c in self.ctxs]

        def sweep() -> None:
            for a in addrs:
                pool.run(self.fn, a, self_completing=True)

        return _best_time(sweep) / len(addrs)


def _scheduled_entry(kernel, kernels: dict) -> str:
    """`void @entry(ptr ctx, i32 tid, i32 nth)` running one matmul as a program's entry does
    (`schedule.Scheduler`), ctx = [scheduling state, x, weights, out, rows] (i64 words)."""
    from ckeir.backends.llvm.kernels.common import FunctionWriter
    from ckeir.backends.llvm.schedule import Scheduler

    f = FunctionWriter("entry", [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")], linkage="")
    state = f.load("ptr", f.gep("%ctx", 0, "i64"), 8)
    schedule = Scheduler(f, state, kernels)
    x, w, out = (f.load("ptr", f.gep("%ctx", i, "i64"), 8) for i in (1, 2, 3))
    rows = f.load("i64", f.gep("%ctx", 4, "i64"), 8)
    schedule.call(kernel, [("ptr", x), ("ptr", w), ("ptr", out), ("i64", rows), ("i64", "0")])
    return f.finish()


def _tile(op) -> tuple[int, int]:
    """The tile lower-llvm gives a matmul (the tile pass's, else 16 rows of all of K)."""
    n, k = op.operands[1].type.shape
    return tuple(op.attr("tile") or (16, k))


def matmul_rates(kinds: dict, threads: int, host: HostCPU) -> dict[str, float]:
    """`cost.matmul_shape_kind` -> weight bytes/s that kernel, at that shape and the tile
    the program gives it (`kinds[kind]`), streams from DRAM on `threads` threads (measured
    once per machine, remembered)."""
    from ckeir.backends.llvm.pool import Pool

    rates = {}
    for kind, tile in sorted(kinds.items()):
        family, shape = kind.split("@")
        shape, _, how = shape.partition("/c")
        n, k = (int(d) for d in shape.split("x"))
        chunk, separate = int(how.rstrip("s") or 0), how.endswith("s")

        def measure(family=family, n=n, k=k, tile=tile, chunk=chunk, separate=separate) -> float:
            bench = _KernelBench(family, host, 1, None, (n, k), tile, chunk, separate)
            with Pool(threads, host) as pool:
                return bench.nbytes / bench.seconds_per_call(pool)

        chunking = f"-c{how}" if how else ""
        name = (
            f"matmul-{family.replace('/', '-')}-{n}x{k}{chunking}-t{tile[0]}x{tile[1]}-{threads}thr"
        )
        rates[kind] = _remembered(bandwidth.record_path(name, host), measure)
    return rates


def arithmetic_rate(family: str, threads: int, host: HostCPU) -> float:
    """Flop/s of the family's kernel on a PROMPT_ROWS-row block with its weights in cache."""
    from ckeir.backends.llvm.pool import Pool

    def measure() -> float:
        bench = _KernelBench(family, host, rows=PROMPT_ROWS, copies=1)
        n, k = FAMILY_SHAPE
        with Pool(threads, host) as pool:
            return 2.0 * PROMPT_ROWS * n * k / bench.seconds_per_call(pool)

    name = f"gemm{PROMPT_ROWS}-{family.replace('/', '-')}-{threads}thr"
    return _remembered(bandwidth.record_path(name, host), measure, hi=1e18)


OP_COPIES = 48  # copies of an op in the program timed to measure it
ATTENTION_AT = (0, 512)  # cached positions attention is measured at (linear in between)


def _op_program(op, copies: int):
    """`_op_func` in a module of its own."""
    from ckeir.ir.core import module_op

    func, weights = _op_func(op, copies)
    return module_op([func]), weights


def _op_func(op, copies: int, name: str = "bench"):
    """A module of one decode func running `copies` copies of `op` one after another, its
    operands as in the program it comes from: the func's arguments (ids, position, KV
    cache), weights of the same names and types, and activations of the same types, each
    made once by an embedding of a small f32 table.  Returns (module, {weight: type})."""
    from ckeir.ir.core import Block, Builder, Operation, Region, clone
    from ckeir.ir.types import TensorType, f32

    func = op.parent.parent.parent  # block -> region -> func
    entry = func.regions[0].entry
    block = Block([a.type for a in entry.args])
    ids = block.args[0]
    b = Builder(block)
    mapping = dict(zip(entry.args, block.args, strict=True))
    weights: dict = {}
    # the value the func returns: the last copy's result, else (no copies) the first of
    # the activations made, made from the ids by an embedding
    last = _activation(b, ids, TensorType((ids.type.shape[0], 16), f32), weights)
    for v in op.operands:
        if v in mapping:
            continue
        if v.op.name == "cke.weight":
            w = b.insert(clone(v.op))
            mapping[v] = w.result
            weights[v.op.attr("name")] = v.type
            continue
        mapping[v] = _activation(b, ids, v.type, weights)
    for _ in range(copies):
        copy = clone(op, dict(mapping))
        for k in PLACEMENT_ATTRS_TO_DROP:
            copy.attributes.pop(k, None)
        last = b.insert(copy).results[0]
    b.op("cke.return", [last])
    # the program's own signature: a batched decode (`slots`) keeps its per-row arguments
    attributes = {"sym_name": name, "phase": "decode", "max_tokens": func.attr("max_tokens", 1)}
    for key in ("slots", "rank", "group"):  # a batched decode's slots; a rank's place
        if func.attr(key) is not None:
            attributes[key] = func.attr(key)
    return Operation("cke.func", (), (), attributes, [Region([block])]), weights


PLACEMENT_ATTRS_TO_DROP = ("offset", "kv_row", "kv_rows")  # plan-memory lays these out anew


def _activation(b, ids, t, weights: dict):
    """A value of type `t` (a row per id) made from the ids by an embedding of a small
    table."""
    name = f"bench.rows{t.shape[-1]}"
    table = t.with_shape((4, t.shape[-1]))
    weights[name] = table
    w = b.value("cke.weight", [], table, name=name, shape=tuple(table.shape))
    return b.value("cke.embed", [ids, w], t)


def _weight_array(t) -> np.ndarray:
    """Weights for a timed op: ones (f32), zeros (blocks: their scales are zero)."""
    from ckeir.ir.types import nbytes

    if element_format(t.element).name == "f32":
        return np.full(t.shape, 0.5, np.float32)
    rows = t.shape[0] if len(t.shape) == 2 else 1
    return np.zeros((rows, nbytes(t) // rows), np.uint8)


def _bench_program(
    module, weights: dict, threads: int, host: HostCPU, pos: int, rank: int | None = None
):
    """(program, pool) running the module's func (plan-memory, lower-llvm) on one row at
    cached position `pos`; the program's `fused_address` is its fused entry's, if any."""
    from ckeir.backends.llvm.engine import _Program, lazy_zeros
    from ckeir.backends.llvm.jit import compile_ir
    from ckeir.backends.llvm.lower import lower_module
    from ckeir.backends.llvm.pool import Pool
    from ckeir.passes import PassContext, PassManager, Target, parse_pipeline

    PassManager(parse_pipeline("plan-memory")).run(module, PassContext(target=Target()))
    lowered = lower_module(module, host, rank)
    compiled = compile_ir(lowered.text, host)
    (abi,) = lowered.programs.values()
    arrays = {name: _weight_array(t) for name, t in weights.items()}
    kc, vc = lazy_zeros(abi.cache_shape), lazy_zeros(abi.cache_shape)
    entry = abi.symbol if not abi.steps or abi.steps[0].kind != "native" else abi.steps[0].symbol
    prog = _Program(abi, compiled.address(entry), arrays, kc, vc, huge_pages=False)
    prog.fused_address = compiled.address(abi.fused) if abi.fused else 0
    prog.compiled = compiled  # keeps the code alive
    prog.ctx[abi.slot("n")] = 1
    prog.ctx[abi.slot("pos")] = pos
    if prog.batched:  # one row, in slot 0, at `pos`
        prog.positions[0] = pos
    return prog, Pool(threads, host)


def _time_program(module, weights: dict, threads: int, host: HostCPU, pos: int) -> float:
    """Best seconds of one run of the module's func (plan-memory, lower-llvm, a pool)."""
    prog, pool = _bench_program(module, weights, threads, host, pos)
    with pool:
        return _best_time(lambda: pool.run(prog.address, prog.ctx.ctypes.data))


def op_seconds(op, threads: int, host: HostCPU, pos: int = 0) -> float:
    """Seconds one decode call of `op` takes on `threads` threads at cached position `pos`,
    with the sync that follows it: OP_COPIES copies timed in one native entry, less the same
    entry without them (measured once per machine, remembered)."""

    def measure() -> float:
        runs = []
        for copies in (0, OP_COPIES):
            module, weights = _op_program(op, copies)
            runs.append(_time_program(module, weights, threads, host, pos))
        return max(runs[1] - runs[0], 0.0) / OP_COPIES

    digest = hashlib.sha256(op_signature(op).encode()).hexdigest()[:16]
    name = f"op-{op.name.split('.')[-1]}-{digest}-p{pos}-{threads}thr"
    return _remembered(bandwidth.record_path(name, host), measure, best=min, lo=0.0, hi=1.0)


def op_times(programs: dict, threads: int, host: HostCPU) -> dict[str, OpTime]:
    """`op_signature` -> `OpTime` of every op of `programs` (rank -> decode func) that is not
    a matmul: the norms, RoPE, residual adds, SiLU, embedding, argmax, and attention, whose
    time grows with the positions it reads (measured at two, `ATTENTION_AT`)."""
    out: dict[str, OpTime] = {}
    for func in programs.values():
        for op in func.regions[0].entry.ops:
            sig = op_signature(op)
            if not measured_kind(op) or sig in out:
                continue
            if op.name == "cke.attention":
                lo, hi = ATTENTION_AT
                t0, t1 = (op_seconds(op, threads, host, p) for p in (lo, hi))
                out[sig] = OpTime(t0 - lo * (t1 - t0) / (hi - lo), max(t1 - t0, 0.0) / (hi - lo))
            else:
                out[sig] = OpTime(op_seconds(op, threads, host))
    return out


COLLECTIVE_COPIES = 32  # copies of a collective in the program timed to measure it


def native_collectives(programs: dict) -> bool:
    """Whether local ranks run `programs`' collectives in native code, inside one call per
    token (`runtime.distributed`: the transport's `runs_natively`): their communication is
    all collectives, an allgather's value one row, each message one channel slot."""
    from ckeir.runtime.distributed import PYTHON_COLLECTIVES_ENV
    from ckeir.runtime.transport.local import DEFAULT_SLOT_BYTES

    if os.environ.get(PYTHON_COLLECTIVES_ENV, "") not in ("", "0"):
        return False
    dist = [
        op for f in programs.values() for op in f.regions[0].entry.ops if op.name[:5] == "dist."
    ]
    return bool(dist) and all(
        op.name in ("dist.allreduce", "dist.allgather")
        and (op.name == "dist.allreduce" or op.results[0].type.shape[0] == 1)
        and op.attr("bytes", 0) <= DEFAULT_SLOT_BYTES
        and (
            op.name == "dist.allgather"
            or cost.allreduce_is_direct(len(op.attr("group")), op.attr("bytes", 0))
        )
        for op in dist
    )


def collective_times(programs: dict, threads: int, host: HostCPU) -> dict[int, dict[str, OpTime]]:
    """rank -> `op_signature` -> `OpTime` of each of its collectives as local ranks run them
    in native code (`native_collectives`), with every member in: the exchange over shared
    memory, the sums or copies, the records — what a collective adds to its link's time.
    The members' programs hold the same collectives in the same order; each distinct one
    is measured once per machine on ranks of its group (remembered)."""
    out: dict[int, dict[str, OpTime]] = {r: {} for r in programs}
    ops = {
        r: [op for op in f.regions[0].entry.ops if op.name in ("dist.allreduce", "dist.allgather")]
        for r, f in programs.items()
    }
    for r, mine in ops.items():
        for i, op in enumerate(mine):
            group = tuple(op.attr("group"))
            if r != group[0] or not all(g in ops and len(ops[g]) > i for g in group):
                continue
            members = [ops[g][i] for g in group]
            seconds = _collective_seconds(members, threads, host)
            for g, member in zip(group, members, strict=True):
                out[g][op_signature(member)] = OpTime(seconds)
    return out


def _collective_seconds(members: list, threads: int, host: HostCPU) -> float:
    """Seconds of one collective (`members`: its op in each member's program, in group order)
    run natively on len(members) local ranks: COLLECTIVE_COPIES of it in one native call, less
    the same call without them; the slowest member's (measured once, remembered)."""
    from ckeir.ir.core import module_op
    from ckeir.ir.printer import print_ir
    from ckeir.runtime.transport.local import launch_local

    # every member's program in one module (the verifier matches their collectives)
    texts = [
        print_ir(module_op([_op_func(op, copies, f"bench_{i}")[0] for i, op in enumerate(members)]))
        for copies in (0, COLLECTIVE_COPIES)
    ]

    def measure() -> float:
        runs = launch_local(len(members), _collective_probe, args=(texts, threads, host))
        return max((many - none) / COLLECTIVE_COPIES for none, many in runs)

    digest = hashlib.sha256("|".join(op_signature(op) for op in members).encode()).hexdigest()
    name = f"collective-{members[0].name.split('.')[-1]}-{digest[:16]}-{threads}thr"
    return _remembered(bandwidth.record_path(name, host), measure, best=min, lo=0.0, hi=1.0)


def _collective_probe(t, texts: list, threads: int, host: HostCPU) -> tuple[float, float]:
    """On one local rank: best seconds of its program in the bench modules `texts` (without
    and with the copies of the collective), each run as the rank engine runs a program's fused entry (its comm block
    on this transport)."""
    from ckeir.backends.llvm.kernels import collective as C
    from ckeir.ir.parser import parse_ir

    out = []
    for text in texts:
        module = parse_ir(text)
        (func,) = (f for f in funcs(module) if f.attr("rank", 0) == t.rank)
        weights = {
            op.attr("name"): op.results[0].type
            for op in func.regions[0].entry.ops
            if op.name == "cke.weight"
        }
        prog, pool = _bench_program(module, weights, threads, host, 0, t.rank)
        records = np.zeros((max(len(prog.abi.comm_steps), 1), C.RECORD_WORDS), np.int64)
        comm = t.comm_block(records)
        if prog.abi.fused:
            prog.ctx[prog.abi.slot("comm")] = comm.ctypes.data
            prog.address = prog.fused_address
        with pool:
            t.barrier()
            out.append(_best_time(lambda p=prog, pool=pool: pool.run(p.address, p.ctx.ctypes.data)))
            if int(comm[C.C_STATUS]) != C.OK:
                raise RuntimeError(f"the collective probe failed (status {int(comm[C.C_STATUS])})")
        t.barrier()
    return out[0], out[1]


def barrier_seconds(threads: int, host: HostCPU) -> float:
    """What one op of a native segment costs beyond its kernel, as the lowered code runs it
    (`schedule.Scheduler`): claiming its parts (as many as a large op has), counting them
    done and waiting for the last."""
    from ckeir.backends.llvm.jit import compile_ir
    from ckeir.backends.llvm.kernels import BARRIER_STATE_BYTES, module_ir
    from ckeir.backends.llvm.kernels.common import FunctionWriter, finish_kernel, kernel_writer
    from ckeir.backends.llvm.pool import Pool
    from ckeir.backends.llvm.schedule import PARTS_PER_THREAD, Scheduler

    def measure() -> float:
        empty = finish_kernel(kernel_writer("empty_op", 0), ())
        f = FunctionWriter(
            "barriers", [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")], linkage=""
        )
        kernels: dict = {}
        schedule = Scheduler(f, "%ctx", kernels)
        for _ in range(BARRIERS):
            schedule.call(
                empty, [("i64", "0"), ("i64", "0")], parts=str(threads * PARTS_PER_THREAD)
            )
        cm = compile_ir(module_ir([*kernels.values(), f.finish()]), host)
        raw = np.zeros(BARRIER_STATE_BYTES + 64, np.uint8)
        state = raw[(-raw.ctypes.data) % 64 :]
        with Pool(threads, host) as pool:
            entry = cm.address("barriers")
            return (
                _best_time(lambda: pool.run(entry, state.ctypes.data, self_completing=True))
                / BARRIERS
            )

    path = bandwidth.record_path(f"op-sync-{threads}thr", host)
    return _remembered(path, measure, best=min, lo=0.0, hi=1.0)


def dispatch_seconds(threads: int, host: HostCPU) -> float:
    """One `Pool.run` of an empty native function: what each native segment costs."""
    from ckeir.backends.llvm.pool import measure_overhead

    path = bandwidth.record_path(f"pool-dispatch-{threads}thr", host)
    return _remembered(path, lambda: measure_overhead(threads, host=host), best=min, lo=0.0, hi=1.0)


def _transport_probe(t, nbytes: int, messages: int) -> dict:
    """Run on two local ranks: seconds per one-way message and per all-reduce of `nbytes`."""
    buf = np.zeros(nbytes // 4, np.float32)
    peer = 1 - t.rank
    out = {}
    for _ in range(2):  # the first pass warms caches and the peer's wait loop
        t.barrier()
        t0 = time.perf_counter()
        for _ in range(messages):
            if t.rank == 0:
                t.send(buf, peer)
                t.recv(buf, peer)
            else:
                t.recv(buf, peer)
                t.send(buf, peer)
        out["message"] = (time.perf_counter() - t0) / (2 * messages)
        t.barrier()
        t0 = time.perf_counter()
        for _ in range(messages):
            t.allreduce(buf)
        out["collective"] = (time.perf_counter() - t0) / messages
    return out


def transport_seconds(host: HostCPU) -> dict[str, float]:
    """Seconds per message and per all-reduce step of a decode row between two local ranks
    over shared memory (no link delay): the transport's own cost."""
    from ckeir.runtime.transport.local import launch_local

    figures: dict = {}

    def probe() -> dict:
        if not figures:
            figures.update(launch_local(2, _transport_probe, args=(ROW_BYTES, MESSAGES))[0])
        return figures

    return {
        what: _remembered(
            bandwidth.record_path(f"local-{what}-{ROW_BYTES}B", host),
            lambda what=what: probe()[what],
            best=min,
            lo=0.0,
            hi=1.0,
        )
        for what in ("message", "collective")
    }


def read_bandwidths(threads: int, concurrent: int, host: HostCPU) -> dict[int, float]:
    """Read bandwidth on `threads` and on the threads of `concurrent` ranks together."""
    counts = {threads, min(threads * concurrent, max(host.cores, threads))}
    return {
        n: bandwidth.read_bandwidth(n, _REMEASURE.get(), host)
        or bandwidth.read_bandwidth(n, True, host)
        for n in sorted(counts)
    }


# ---- the prediction --------------------------------------------------------------------------


def ranks_threads(prog) -> int:
    """Threads per rank: the program's own on one rank; local ranks share this machine's
    CPUs (as `ckeir.ranks` starts them)."""
    if prog.world_size == 1:
        return prog.threads
    return max(1, usable_cpus() // prog.world_size)


def measured_nodes(prog, programs: dict, plan, threads: int, host: HostCPU) -> tuple[dict, dict]:
    """node name -> NodeModel measured for the rank on it: its matmul families' rates on its
    threads, scaled down by the bandwidth its stage's ranks share when they stream at once,
    and the barrier each op ends with."""
    ops = [op for f in programs.values() for op in f.regions[0].entry.ops]
    matmuls = [op for op in ops if op.name == "cke.matmul"]
    families = [cost.matmul_kind(op) for op in matmuls]
    kinds = {cost.matmul_shape_kind(op): _tile(op) for op in matmuls}
    rates = matmul_rates(kinds, threads, host)
    biggest = max(families, key=families.count, default=None)
    flops = arithmetic_rate(biggest, threads, host) if biggest is not None else 0.0
    barrier = barrier_seconds(threads, host)
    basis = {"matmul_bytes_per_second": rates, "flops": flops, "barrier_seconds": barrier}
    nodes = {}
    for rank in programs:
        together = len(plan.stage_of(rank).ranks)
        bws = read_bandwidths(threads, together, host)
        alone, shared = bws[threads], bws[max(bws)]
        share = min(1.0, shared / (together * alone))
        decl = prog.job.cluster.node(prog.rank_nodes[rank])
        nodes[decl.name] = cost.NodeModel(
            decl.name,
            threads,
            decl.dram,
            alone * share,
            host.l2,
            host.l3,
            flops=flops,
            matmul_bw={kind: rate * share for kind, rate in rates.items()},
            op_overhead=barrier,
        )
        basis[f"rank {rank}"] = {"threads": threads, "read_bandwidth": alone, "shared": share}
    return nodes, basis


def simulated_links(prog, links) -> dict:
    """(rank, rank) -> the cost model's link for each pair the transport shaped."""
    pairs = {}
    for a in prog.rank_nodes:
        for b in prog.rank_nodes:
            if a < b:
                sim = links.link(a, b) if links is not None else None
                pairs[(a, b)] = None if sim is None else cost.LinkModel(sim.bandwidth, sim.latency)
    return pairs


@attrs.frozen
class MachineView:
    """The planner's inputs measured on this machine for the ranks of `prog` started here:
    `predict` replaces `ckeir.planner.predict.predict`'s declared nodes, links and costs."""

    prog: object
    host: HostCPU
    threads: int  # per rank
    links: dict  # (rank, rank) -> cost.LinkModel | None (None: not shaped)
    overheads: cost.Overheads
    basis: dict
    local: bool = False  # local ranks over shared memory (their collectives may run natively)

    def predict(self, plan, programs: dict, tokens: int, context: int):
        nodes, figures = measured_nodes(self.prog, programs, plan, self.threads, self.host)
        self.basis.update(figures)
        times = op_times(programs, self.threads, self.host) if tokens == 1 else {}
        self.basis["op_seconds"] = {sig: t.at(context) for sig, t in times.items()}
        model_links = {k: v or cost.NO_LINK for k, v in self.links.items()}
        prog = self.prog
        over, per_node = self.overheads, {n: dict(times) for n in nodes}
        if self.local and tokens == 1 and native_collectives(programs):
            # one native call per token: no dispatch per segment, and each collective costs
            # its link's time plus what it was measured to cost in native code
            over = attrs.evolve(over, segment=0.0)
            measured = collective_times(programs, self.threads, self.host)
            for rank, sigs in measured.items():
                per_node[prog.rank_nodes[rank]].update(sigs)
                self.basis.setdefault("collective_seconds", {}).update(
                    {sig: t.fixed for sig, t in sigs.items()}
                )
            self.basis["collectives"] = "native (one call per token)"
        return predict(
            plan,
            programs,
            nodes,
            prog.rank_nodes,
            prog.job.cluster,
            tokens,
            context,
            model_links,
            over,
            op_times=per_node,
        )


def this_machine(
    prog, links=None, threads: int | None = None, message_seconds: float | None = None
) -> MachineView:
    """This machine as `prog`'s ranks would use it: `links` is the transport's simulated
    `LinkModel` (None: no link delay, local ranks over shared memory); `threads` per rank
    (default: as the ranks are started); `message_seconds`: the one-way time of a small
    message as the run's own transport measured it (MPI ranks: the clock exchange's
    shortest round trip / 2) instead of local ranks' shared memory, measured here."""
    host = prog.host if getattr(prog, "host", None) is not None else detect_host()
    threads = threads or ranks_threads(prog)
    over = cost.Overheads(segment=dispatch_seconds(threads, host))
    if prog.world_size > 1 and message_seconds is not None:
        # a two-rank all-reduce is one exchange: one message's time each way at once
        over = attrs.evolve(over, message=message_seconds, collective=message_seconds)
    elif prog.world_size > 1:
        t = transport_seconds(host)
        over = attrs.evolve(over, message=t["message"], collective=t["collective"])
    basis = {
        "machine": bandwidth.machine_id(host),
        "cpu": host.name,
        "threads_per_rank": threads,
        "links": "simulated" if links is not None else "none (shared memory)",
        "overheads": attrs.asdict(over),
    }
    local = prog.world_size > 1 and message_seconds is None
    return MachineView(prog, host, threads, simulated_links(prog, links), over, basis, local)


def run_prediction(
    prog,
    context: int,
    links=None,
    threads: int | None = None,
    message_seconds: float | None = None,
) -> RunPrediction:
    """Decode seconds per token at `context` cached tokens for `prog` as it ran on this
    machine (`links`, `threads`, `message_seconds`: as for `this_machine`)."""
    view = this_machine(prog, links, threads, message_seconds)
    programs = {f.attr("rank", 0): f for f in funcs(prog.module) if f.attr("phase") == "decode"}
    plan = prog.placement.get("decode")
    if plan is None or not programs:
        return RunPrediction(0.0, view.links, view.basis, view.overheads)
    pred = view.predict(plan, programs, 1, context)
    return RunPrediction(pred.latency, view.links, view.basis, view.overheads)
