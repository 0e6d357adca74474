"""lower-llvm: one native entry per `cke.func`, calling specialized kernels op by op.

The entry is `void @cke_<phase>(ptr %ctx, i32 %tid, i32 %nth)`.  Every thread of the pool runs
it; each kernel call does the thread's share of one op, and an atomic barrier separates
dependent ops.  `%ctx` is an array of 8-byte slots the runtime fills (`ProgramABI` says which
slot holds what): the arena base, the row count, the position, the barrier state, the inputs,
the KV caches, and one pointer per weight.  Intermediates live at their plan-memory offsets.

A batched decode func (`slots = B`: each row one sequence's token) has two slots more
(BATCHED_SLOTS): each row's position (i64) and each row's sequence slot (i32); its caches
are slot-major (B, L, C, KVD), and its kernels are the per-row ones (rowwise matmuls,
rope at each row's position, KV store and attention in each row's slot, argmax per row),
so each row computes what its sequence's one-row decode computes.

A program with `dist.*` ops is cut into native segments at them (`ProgramABI.steps`: the
runtime runs the communication between segments).  One whose communication is all
collectives also gets a *fused* entry, `@cke_<func>_fused`, the whole program in one call:
its allreduces and allgathers run in native code (`kernels.collective`) over the local
transport's shared memory, which the `comm` slot points at.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from pathlib import Path

import attrs

from ckeir import cache
from ckeir.backends.llvm import kernels as K
from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels import collective as C
from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel
from ckeir.backends.llvm.kernels.elementwise import gelu_mul, scale
from ckeir.backends.llvm.kernels.quant_embed import qembed
from ckeir.backends.llvm.kernels.transfer import q8_0_dequantize, q8_0_quantize, q8_0_requant
from ckeir.backends.llvm.lower_attention import lower_attention
from ckeir.backends.llvm.schedule import Scheduler
from ckeir.errors import BackendError
from ckeir.formats import Q8_0, QUANT_FORMATS
from ckeir.ir.core import Operation, OpResult
from ckeir.ir.types import ShapedType, element_format, nbytes
from ckeir.passes.manager import Pass, PassContext, funcs, register_pass
from ckeir.planner.cost import allreduce_slots, message_bytes

# The fused entry (a whole program: thousands of calls and branches in one function) is not
# optimized: it only calls kernels, and O3's loop and dominator passes grow superlinearly on a
# function that size (SmolLM2's two fused entries took O3 from 18 s to 170 s for a rank).
ENTRY_ATTRIBUTES = "nounwind noinline optnone"

FIXED_SLOTS = ("arena", "n", "pos", "barrier", "ids", "kcache", "vcache", "comm")
BATCHED_SLOTS = ("positions", "seq_slots")  # a batched decode func's per-row arrays


@attrs.frozen
class Step:
    """One step of a program: a native segment, or a communication between segments.
    Byte counts are per token row; `rows` is None when the row count is known at run time.

    A send/recv moves `wire_row_bytes` per row from `src` / into `dst`: the value itself
    (f32), or its Q8_0 staging buffer, which the native segment before a send fills
    (quantize) and the one after a recv reads (dequantize).  `ir_bytes` is what the IR
    states the message carries at `ir_rows` rows (its func's bound): the runtime holds
    every transfer to it."""

    kind: str  # native | send | recv | allreduce | allgather
    symbol: str = ""
    src: int = -1  # arena offsets
    dst: int = -1
    row_bytes: int = 0  # of the value in the arena
    rows: int | None = None
    peer: int = -1
    group: tuple[int, ...] = ()
    format: str = "f32"  # how a send/recv's rows travel (q8_0: GGML blocks)
    sizes: tuple[int, ...] = ()  # allgather: each rank's width, in group order
    wire_row_bytes: int = 0  # on the wire
    op: str = ""  # the dist.* op it runs
    ir_bytes: int = 0
    ir_rows: int = 1
    # allreduce of a matmul reduced in chunks: each member's message holds `slots` chunk
    # sums ([slots, rows, width], from a buffer past the func's own), folded in order
    slots: int = 1

    def row_count(self, n: int) -> int:
        return n if self.rows is None else self.rows

    def nbytes(self, n: int) -> int:
        return self.row_bytes * self.row_count(n)

    def wire_bytes(self, n: int) -> int:
        return self.wire_row_bytes * self.row_count(n)

    def ir_agrees(self, n: int, moved: int) -> bool:
        """Whether `moved` bytes for n rows are the IR's bytes for that many rows."""
        return moved * self.ir_rows == self.ir_bytes * self.row_count(n)


@attrs.frozen
class _Staged:
    """A kernel call a Q8_0 send or recv adds to a native segment: `quantize` a value into its
    staging buffer at `offset` (before the send), or `dequantize` a received one out of it."""

    kind: str  # quantize | dequantize
    value: object  # the sent value, or the recv's result
    offset: int


@attrs.frozen
class ProgramABI:
    """What the runtime must put in each `%ctx` slot of one program, the steps to run, and
    where the outputs are."""

    symbol: str
    phase: str
    rank: int
    slots: tuple[str, ...]  # FIXED_SLOTS, then "weight:<name>" per weight
    arena_bytes: int  # the func's arena, then the Q8_0 staging buffers of its messages
    max_tokens: int
    outputs: tuple[tuple[int, int], ...]  # (arena offset, bytes) of each returned value
    steps: tuple[Step, ...] = ()
    # weight slot -> (row0, row1, col0, col1, block, block bytes): the rank's slice of the
    # full tensor, in elements (columns in whole blocks for quantized formats)
    shards: dict = attrs.field(factory=dict)
    # the K (and V) cache the runtime allocates: (L, C, KVD), or (rows, KVD) when plan-memory
    # packed it (`kv_rows`), slot-major (a leading B) for a batched decode program
    cache_shape: tuple[int, ...] = ()
    # The whole program in one entry whose collectives run in native code over the local
    # transport's shared memory (`kernels.collective`; the `comm` slot says where), or ""
    # when its communication cannot: `steps` without the native ones, in order, are the
    # collectives it runs (a step's index there is its record in the comm block).
    fused: str = ""
    context: int = 0  # positions a sequence may reach (the cache's logical C)

    @property
    def comm_steps(self) -> tuple[Step, ...]:
        return tuple(st for st in self.steps if st.kind != "native")

    def slot(self, name: str) -> int:
        return self.slots.index(name)

    @property
    def weights(self) -> tuple[str, ...]:
        return tuple(s.split(":", 1)[1] for s in self.slots if s.startswith("weight:"))


@attrs.frozen
class LoweredModule:
    text: str
    programs: dict[str, ProgramABI]


class _Lowering:
    """Lowers one `cke.func` into native segments split at its `dist.*` ops."""

    def __init__(self, func: Operation, host: HostCPU):
        self.func, self.host = func, host
        self.kernels: dict[str, Kernel] = {}
        self.block = func.regions[0].entry
        self.weight_ops = [op for op in self.block.ops if op.name == "cke.weight"]
        self.batched = func.attr("slots") is not None
        fixed = FIXED_SLOTS + (BATCHED_SLOTS if self.batched else ())
        self.slots = fixed + tuple(_slot_name(op) for op in self.weight_ops)
        self.sym = f"cke_{func.attr('sym_name')}"
        self.entries: list[str] = []
        self.declares: set[str] = set()
        self.steps: list[Step] = []
        self.fused = ""

    # -- ctx slots --------------------------------------------------------------------------
    def slot_ptr(self, name: str) -> str:
        p = self.f.gep("%ctx", self.slots.index(name), "i64")
        return self.f.load("ptr", p, 8)

    def slot_i64(self, name: str) -> str:
        return self.f.load("i64", self.f.gep("%ctx", self.slots.index(name), "i64"), 8)

    def value_ptr(self, v) -> str:
        if v in self.ptrs:
            return self.ptrs[v]
        raise BackendError(f"lower-llvm: no buffer for {v!r}")

    # -- the program ------------------------------------------------------------------------
    def run(self) -> None:
        for op in self.block.ops:
            if op.results and op.name != "cke.weight" and op.attr("offset") is None:
                raise BackendError(
                    f"lower-llvm: {op.name} has no arena offset (run plan-memory first)"
                )
        self.staging_top = _aligned(self.func.attr("arena_bytes", 0))
        self.staged: dict = {}  # sent value -> its Q8_0 staging offset (one for any peers)
        self.chunked: dict = {}  # partial matmul result -> (offset, slots) of its chunk sums
        self.scratch_at: dict[str, tuple[int, int]] = {}  # key -> (offset, bytes)
        segment: list[Operation | _Staged] = []
        for op in self.block.ops:
            if op.name in ("cke.weight", "mem.arena"):
                continue
            if not (op.name.startswith("dist.") or op.name == "cke.return"):
                segment.append(op)
                continue
            step = None if op.name == "cke.return" else self.comm(op, segment)
            if segment:
                self.native(segment)
                segment = []
            if step is not None:
                self.steps.append(step)
                if step.kind == "recv" and step.format != "f32":
                    segment.append(_Staged("dequantize", op.results[0], step.dst))
        if segment:
            self.native(segment)
        if self.fusable():
            self.fused = f"{self.sym}_fused"
            self.entry([op for op in self.block.ops if op.name not in NOT_LOWERED], self.fused)

    def fusable(self) -> bool:
        """Whether the program can run as one entry with native collectives: it has some,
        and no other communication (sends and receives stay steps); an allgather's value
        has one row (its slices travel padded to the widest, one row each)."""
        dist = [op for op in self.block.ops if op.name.startswith("dist.")]
        return bool(dist) and all(
            op.name in LOWER_COLLECTIVE
            and (op.name != "dist.allgather" or op.results[0].type.shape[0] == 1)
            for op in dist
        )

    def comm(self, op: Operation, segment: list) -> Step:
        """The step of a dist.* op; a Q8_0 message travels through a staging buffer, which
        a send has the segment before it fill (once per value, whatever its peers)."""
        step = _comm_step(op, self.func.attr("max_tokens", 1))
        if step.slots > 1:  # the matmul writes its chunk sums there (see _lower_matmul)
            at = self.staging(step)
            self.chunked[op.operands[0]] = (at, step.slots)
            return attrs.evolve(step, src=at)
        if step.format == "f32":
            return step
        if step.kind == "recv":
            return attrs.evolve(step, dst=self.staging(step))
        value = op.operands[0]
        if value not in self.staged:
            self.staged[value] = self.staging(step)
            segment.append(_Staged("quantize", value, self.staged[value]))
        return attrs.evolve(step, src=self.staged[value])

    def scratch(self, key: str, nbytes: int) -> str:
        """A pointer to `nbytes` of arena space past the func's buffers, for a kernel's own
        temporary data; one block per `key` (ops run one after another, so ops of one kind
        share it)."""
        if key not in self.scratch_at or self.scratch_at[key][1] < nbytes:
            self.scratch_at[key] = (self.staging_top, nbytes)
            self.staging_top = _aligned(self.staging_top + nbytes)
        at = self.scratch_at[key][0]
        return self.f(f"getelementptr inbounds i8, ptr {self.arena}, i64 {at}", "scratch")

    def staging(self, step: Step) -> int:
        """Arena space past the func's buffers for one message's Q8_0 blocks at its bound."""
        at = self.staging_top
        self.staging_top = _aligned(at + step.wire_row_bytes * step.ir_rows)
        return at

    def native(self, ops: list[Operation]) -> None:
        """One entry `void @cke_<func>_s<k>(ptr ctx, i32 tid, i32 nth)` running `ops`."""
        k = sum(1 for st in self.steps if st.kind == "native")
        symbol = (
            self.sym
            if k == 0 and not any(o.name.startswith("dist.") for o in self.block.ops)
            else f"{self.sym}_s{k}"
        )
        self.entry(ops, symbol)
        self.steps.append(Step("native", symbol=symbol))

    def entry(self, ops: list, symbol: str) -> None:
        """The entry `void @<symbol>(ptr ctx, i32 tid, i32 nth)` running `ops`: model ops,
        Q8_0 staging calls and (in the fused entry) collectives, a sync between each two."""
        self.collectives = 0  # collectives lowered so far: the next one's record index
        self.f = FunctionWriter(
            symbol,
            [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")],
            linkage="dso_local",
            attributes=ENTRY_ATTRIBUTES if symbol == self.fused else "nounwind",
        )
        f = self.f
        # the scheduler first: a thread joins a run before it reads what changes between runs
        self.schedule = Scheduler(f, self.slot_ptr("barrier"), self.kernels)
        self.arena = arena = self.slot_ptr("arena")
        self.n, self.pos = self.slot_i64("n"), self.slot_i64("pos")
        args = self.block.args
        self.ptrs = {
            args[0]: self.slot_ptr("ids"),
            args[2]: self.slot_ptr("kcache"),
            args[3]: self.slot_ptr("vcache"),
        }
        if self.batched:
            self.ptrs[args[1]] = self.slot_ptr("positions")
            self.ptrs[args[4]] = self.slot_ptr("seq_slots")
        for w in self.weight_ops:
            self.ptrs[w.results[0]] = self.slot_ptr(_slot_name(w))
        for op in self.block.ops:
            if op.results and op.attr("offset") is not None:
                self.ptrs[op.results[0]] = f(
                    f"getelementptr inbounds i8, ptr {arena}, i64 {op.attr('offset')}", "buf"
                )
        for i, op in enumerate(ops):
            if isinstance(op, _Staged):
                self.lower_staged(op, arena)
            elif op.name in LOWER_COLLECTIVE:
                LOWER_COLLECTIVE[op.name](self, op)
            else:
                LOWER[op.name](self, op)
            if i + 1 < len(ops):  # the caller waits for every thread at the end anyway
                self.sync()
        self.entries.append(f.finish())
        self.declares |= f.declares

    def lower_staged(self, item: _Staged, arena: str) -> None:
        width = _dims(item.value)[-1]
        if width % Q8_0.block:
            raise BackendError(f"lower-llvm: rows of {width} cannot travel as q8_0 blocks")
        staging = self.f(f"getelementptr inbounds i8, ptr {arena}, i64 {item.offset}", "stage")
        value = self.value_ptr(item.value)
        if item.kind == "quantize":
            self.call(q8_0_quantize(width, self.host), [value, staging], self.rows(item.value))
        else:
            self.call(q8_0_dequantize(width, self.host), [staging, value], self.rows(item.value))

    def rows(self, v) -> str:
        t = v.type
        return str(t.shape[0]) if isinstance(t, ShapedType) and t.shape[0] is not None else self.n

    def call(self, kernel: Kernel, buffers: list[str], rows: str) -> None:
        args = [("ptr", b) for b in buffers]
        self.schedule.call(kernel, [*args, ("i64", rows), ("i64", self.pos)])

    def sync(self) -> None:
        self.schedule.sync()

    def cache_layer(self, cache: str, op: Operation, operand: int) -> str:
        """The op's layer in `cache` ((L, C, KVD), or slot 0's of a slot-major cache; in a
        packed cache (plan-memory's `kv_row`), its extent's first row)."""
        c = op.operands[operand].type
        row = op.attr("kv_row", op.attr("layer") * c.shape[-2])
        return self.f(
            f"getelementptr inbounds i8, ptr {cache}, i64 {row * c.shape[-1] * 4}", "layer"
        )


def _io(low: _Lowering, op: Operation) -> list[str]:
    return [low.value_ptr(v) for v in op.operands] + [low.value_ptr(op.results[0])]


def _dims(v) -> tuple[int, ...]:
    return tuple(v.type.shape)


def _lower_embed(low: _Lowering, op: Operation) -> None:
    v, d = _dims(op.operands[1])
    fmt = element_format(op.operands[1].type.element).name
    kern = K.embed(v, d, low.host) if fmt == "f32" else qembed(fmt, v, d, low.host)
    low.call(kern, _io(low, op), low.rows(op.operands[0]))
    factor = op.attr("scale")
    if factor is not None:  # Gemma's sqrt(hidden), on the rows just gathered
        low.sync()
        out = low.value_ptr(op.results[0])
        low.call(scale(d, factor, low.host), [out, out], low.rows(op.operands[0]))


def _lower_rmsnorm(low: _Lowering, op: Operation) -> None:
    """Row by row; with head_dim, as rows of one head each (a row of H heads is H rows)."""
    d = _dims(op.operands[1])[0]
    rows = low.rows(op.operands[0])
    if op.attr("head_dim") is not None:
        rows = low.f.mul(rows, _dims(op.operands[0])[1] // d)
    low.call(K.rmsnorm(d, op.attr("eps"), low.host), _io(low, op), rows)


def _lower_matmul(low: _Lowering, op: Operation) -> None:
    n, k = _dims(op.operands[1])
    tile = tuple(op.attr("tile") or (16, k))
    fmt = element_format(op.operands[1].type.element).name
    chunk = op.attr("k_chunk")
    if chunk is None:
        kern = K.weight_matmul(fmt, op.attr("act"), n, k, tile, low.host, low.batched)
        low.call(kern, _io(low, op), low.rows(op.operands[0]))
        return
    if op.attr("act") != "q8_0" or fmt not in QUANT_FORMATS:
        raise BackendError(
            f"lower-llvm: k_chunk needs int8 activations (act = q8_0) on block weights; this "
            f"matmul has {op.attr('act') or 'f32'} activations and {fmt} weights",
            loc=op.loc,
        )
    # a later member of a row-parallel matmul's group delivers its chunk sums unfolded
    group = low.func.attr("group", ())
    separate = op.attr("tp") == "partial" and low.func.attr("rank", 0) != group[0]
    rows = low.rows(op.operands[0])
    io = _io(low, op)
    if op.results[0] in low.chunked:
        at, slots = low.chunked[op.results[0]]
        io[-1] = low.f(f"getelementptr inbounds i8, ptr {low.arena}, i64 {at}", "chunks")
        mine = k // chunk if separate else 1
        if separate and mine < slots:  # the unused slots travel as zeros
            with low.schedule.once():
                used = low.f.mul(rows, mine * n * 4)
                low.f.intrinsic(
                    "void",
                    "llvm.memset.p0.i64",
                    [("ptr", low.f.gep(io[-1], used, "i8")), ("i8", "0")]
                    + [("i64", low.f.mul(rows, (slots - mine) * n * 4)), ("i1", "false")],
                )
            low.sync()
    kern = K.qmatmul(fmt, n, k, tile, low.host, chunk, separate, low.batched)
    low.call(kern, io, rows)


def _lower_rope(low: _Lowering, op: Operation) -> None:
    width = _dims(op.operands[0])[1]
    hd = op.attr("head_dim")
    kern = K.rope(width // hd, hd, op.attr("theta"), op.attr("style"), low.host, low.batched)
    io = [low.value_ptr(op.operands[0]), low.value_ptr(op.results[0])]
    if low.batched:  # each row at its own position
        io.insert(1, low.value_ptr(op.operands[1]))
    low.call(kern, io, low.rows(op.operands[0]))


def _lower_elementwise(gen):
    def lower(low: _Lowering, op: Operation) -> None:
        d = _dims(op.operands[0])[1]
        low.call(gen(d, low.host), _io(low, op), low.rows(op.operands[0]))

    return lower


def _lower_last_token(low: _Lowering, op: Operation) -> None:
    f = low.f
    row_bytes = nbytes(op.results[0].type)
    with low.schedule.once():
        last = f(f"mul i64 {f(f'sub i64 {low.rows(op.operands[0])}, 1')}, {row_bytes}", "off")
        src = f(f"getelementptr inbounds i8, ptr {low.value_ptr(op.operands[0])}, i64 {last}")
        f.memcpy(low.value_ptr(op.results[0]), src, row_bytes)


def _lower_requant(low: _Lowering, op: Operation) -> None:
    width = _dims(op.operands[0])[1]
    low.call(q8_0_requant(width, low.host), _io(low, op), low.rows(op.operands[0]))


def _lower_argmax(low: _Lowering, op: Operation) -> None:
    v = _dims(op.operands[0])[1]
    kern = K.argmax_rows(v, low.host) if low.batched else K.argmax(v, low.host)
    low.call(kern, _io(low, op), low.rows(op.operands[0]))


LOWER = {
    "cke.embed": _lower_embed,
    "cke.rmsnorm": _lower_rmsnorm,
    "cke.matmul": _lower_matmul,
    "cke.rope": _lower_rope,
    "cke.attention": lower_attention,
    "cke.silu_mul": _lower_elementwise(K.silu_mul),
    "cke.gelu_mul": _lower_elementwise(gelu_mul),
    "cke.add": _lower_elementwise(K.add),
    "cke.last_token": _lower_last_token,
    "cke.argmax": _lower_argmax,
    "cke.requant": _lower_requant,
}


def _helper(low: _Lowering, kernel, ret: str, args: list[tuple[str, str]]) -> str | None:
    """Call one of `kernels.collective`'s single-threaded helpers with the comm block."""
    low.kernels.setdefault(kernel.name, kernel)
    return low.f.call(ret, kernel.name, [("ptr", low.slot_ptr("comm")), *args])


def _exchange(low: _Lowering, op: Operation, src: str, nbytes: str, pad: str, tag: int) -> None:
    """On one thread: send `nbytes` of `src` (and `pad` zero bytes) to every other member of
    the op's group, then wait for each member's message of the same size; every thread goes
    on once they are all in (the messages stay in their slots until `_release`)."""
    step = str(low.collectives)
    me = low.func.attr("rank", 0)
    total = low.f.add(nbytes, pad)
    with low.schedule.once():
        _helper(
            low, C.record_helper(), "void", [("i64", step), ("i64", str(C.R_T0)), ("i64", "-1")]
        )
        for p in op.attr("group"):
            if p != me:
                args = [("i64", str(p)), ("ptr", src), ("i64", nbytes), ("i64", pad)]
                _helper(low, C.send_helper(), "void", [*args, ("i64", str(tag)), ("i64", step)])
        for p in op.attr("group"):
            if p != me:
                args = [("i64", str(p)), ("i64", total), ("i64", str(tag)), ("i64", step)]
                _helper(low, C.await_helper(), "void", args)
    low.sync()


def _release(low: _Lowering, op: Operation, sent: str) -> None:
    """On one thread, once every thread is done with the messages: hand the slots back and
    record the step's end and bytes (per message sent, and received in all)."""
    step = str(low.collectives)
    me = low.func.attr("rank", 0)
    others = [p for p in op.attr("group") if p != me]
    low.sync()
    with low.schedule.once():
        for p in others:
            _helper(low, C.consume_helper(), "void", [("i64", str(p))])
        received = low.f.mul(sent, len(others))
        for field, value in ((C.R_SENT, sent), (C.R_RECEIVED, received), (C.R_T1, "-1")):
            _helper(
                low, C.record_helper(), "void", [("i64", step), ("i64", str(field)), ("i64", value)]
            )
    low.collectives += 1


def _member_data(low: _Lowering, op: Operation, own: str) -> list[str]:
    """Each member's part, in group order: this rank's `own` buffer, the others' slots."""
    me = low.func.attr("rank", 0)
    return [
        own if p == me else _helper(low, C.data_helper(), "ptr", [("i64", str(p))])
        for p in op.attr("group")
    ]


def _lower_allreduce(low: _Lowering, op: Operation) -> None:
    """Every member sends its whole buffer to every other and sums the members' buffers in
    group order, ((x0 + x1) + x2) ...: the bits of the transport's allreduce, on every member."""
    width = _dims(op.operands[0])[-1]
    rows = low.rows(op.operands[0])
    src, dst = low.value_ptr(op.operands[0]), low.value_ptr(op.results[0])
    slots = 1
    if op.operands[0] in low.chunked:
        at, slots = low.chunked[op.operands[0]]
        src = low.f(f"getelementptr inbounds i8, ptr {low.arena}, i64 {at}", "chunks")
    nbytes = low.f.mul(rows, slots * width * 4)
    _exchange(low, op, src, nbytes, "0", C.C_TAG_ALLREDUCE)
    parts = _member_data(low, op, src)
    # the fold: member 0's (folded) sum, then every later member's chunk sums in K order
    terms = [parts[0]] + [
        part if s == 0 else low.f.gep(part, low.f.mul(rows, s * width))
        for part in parts[1:]
        for s in range(slots)
    ]
    add = K.add(width, low.host)
    low.call(add, [terms[0], terms[1], dst], rows)
    for term in terms[2:]:  # in place, elementwise: each element's sums in order
        low.sync()
        low.call(add, [dst, term, dst], rows)
    _release(low, op, nbytes)


def _lower_allgather(low: _Lowering, op: Operation) -> None:
    """Every member sends its one-row slice padded to the widest (what the IR states each
    member puts on the wire) to every other; the slices are copied out in group order."""
    sizes = op.attr("sizes")
    me = op.attr("group").index(low.func.attr("rank", 0))
    src, dst = low.value_ptr(op.operands[0]), low.value_ptr(op.results[0])
    widest = max(sizes)
    _exchange(low, op, src, str(4 * sizes[me]), str(4 * (widest - sizes[me])), C.C_TAG_ALLGATHER)
    parts = _member_data(low, op, src)
    with low.schedule.once():
        at = 0
        for part, width in zip(parts, sizes, strict=True):
            low.f.memcpy(low.f.gep(dst, at), part, 4 * width)
            at += width
    _release(low, op, str(4 * widest))


LOWER_COLLECTIVE = {"dist.allreduce": _lower_allreduce, "dist.allgather": _lower_allgather}


def _slot_name(w: Operation) -> str:
    shard = w.attr("shard")
    return f"weight:{w.attr('name')}" + ("@" + ",".join(map(str, shard)) if shard else "")


def _aligned(offset: int) -> int:
    return -(-offset // 64) * 64


def _row_bytes(t, fmt: str = "f32") -> int:
    """Bytes of one row of a value of type `t` sent in format `fmt` (`cost.message_bytes`,
    the one definition of a message's size, for one row of a `?`-row type)."""
    return message_bytes(t.with_shape((None, *t.shape[1:])), fmt, tokens=1)


def _comm_step(op: Operation, max_tokens: int) -> Step:
    """The step that runs one dist.* op (a send's source and a recv's destination are the
    value's arena buffer; the caller moves Q8_0 messages to staging buffers)."""
    t = (op.operands or op.results)[0].type
    fmt = op.attr("format", "f32")
    common = dict(
        row_bytes=_row_bytes(t),
        wire_row_bytes=_row_bytes(t, fmt),
        rows=t.shape[0],
        format=fmt,
        op=op.name,
        ir_bytes=op.attr("bytes", 0),
        ir_rows=max_tokens if t.shape[0] is None else t.shape[0],
    )
    if op.name == "dist.send":
        return Step("send", src=op.operands[0].op.attr("offset"), peer=op.attr("peer"), **common)
    if op.name == "dist.recv":
        return Step("recv", dst=op.attr("offset"), peer=op.attr("peer"), **common)
    if op.name == "dist.allreduce":  # chunk-sum slots: the IR's bytes say how many
        slots = allreduce_slots(op.attr("bytes", 0), common["row_bytes"] * common["ir_rows"])
        common.update(
            row_bytes=slots * common["row_bytes"],
            wire_row_bytes=slots * common["wire_row_bytes"],
            slots=slots,
        )
    return Step(
        op.name.split(".")[1],
        src=op.operands[0].op.attr("offset"),
        dst=op.attr("offset"),
        group=tuple(op.attr("group")),
        sizes=tuple(op.attr("sizes") or ()),
        **common,
    )


def _abi(low: _Lowering) -> ProgramABI:
    func = low.func
    outputs = []
    for v in low.block.terminator.operands:
        if not isinstance(v, OpResult) or v.op.attr("offset") is None:
            raise BackendError("lower-llvm: a returned value is not in the arena")
        outputs.append((v.op.attr("offset"), nbytes(v.type, func.attr("max_tokens", 1))))
    shards = {}
    for w in low.weight_ops:
        if w.attr("shard"):
            fmt = element_format(w.results[0].type.element)
            shards[_slot_name(w)] = (*w.attr("shard"), fmt.block, fmt.block_bytes)
    return ProgramABI(
        low.sym,
        func.attr("phase"),
        func.attr("rank", 0),
        low.slots,
        low.staging_top,
        func.attr("max_tokens", 1),
        tuple(outputs),
        tuple(low.steps),
        shards,
        cache_shape(func),
        low.fused,
        low.block.args[2].type.shape[-2],
    )


def cache_shape(func: Operation) -> tuple[int, ...]:
    """The shape of the func's K (and V) cache as allocated (see `ProgramABI.cache_shape`)."""
    shape = tuple(func.regions[0].entry.args[2].type.shape)
    rows = func.attr("kv_rows")
    return shape if rows is None else (*shape[:-3], rows, shape[-1])


def lower_module(module: Operation, host: HostCPU, rank: int | None = None) -> LoweredModule:
    """LLVM IR text for the programs of the module (those of `rank`, if given), and each
    program's ABI."""
    kernels: dict[str, Kernel] = {}
    entries, programs, declares = [], {}, set()
    for func in funcs(module):
        if rank is not None and func.attr("rank", 0) != rank:
            continue
        for op in func.regions[0].entry.ops:
            if (
                op.name not in LOWER
                and op.name not in NOT_LOWERED
                and not op.name.startswith("dist.")
            ):
                raise BackendError(f"lower-llvm: no lowering for '{op.name}'", loc=op.loc)
        low = _Lowering(func, host)
        low.run()
        entries += low.entries
        kernels.update(low.kernels)
        declares |= low.declares
        programs[func.attr("sym_name")] = _abi(low)
    for k in kernels.values():
        declares |= k.declares
    text = "\n".join(sorted(declares) + [k.ir for k in kernels.values()] + entries)
    return LoweredModule(text, programs)


NOT_LOWERED = ("cke.weight", "mem.arena", "cke.return")


@register_pass
class LowerLLVM(Pass):
    name = "lower-llvm"
    summary = "one native entry per program, calling shape-specialized kernels (llvmlite)"

    def apply(self, module: Operation, ctx: PassContext, rewriter) -> None:
        from ckeir.backends.llvm.host import detect_host

        host = ctx.options.get("host") or detect_host(ctx.options.get("isa"))
        ctx.artifacts["llvm"] = lower_module(module, host)


# The sources that shape a lowering (its LLVM IR and the pickled ABI), relative to the
# package: this backend, the IR and op declarations it reads, the block layouts, the
# activation-quantization rule and the message sizes (planner.cost).  A cached lowering
# dies with any change to them.
LOWERING_SOURCES = (
    "backends/llvm",
    "ir",
    "dialects",
    "formats.py",
    "quant.py",
    "planner",
    "limits.py",
)
CKEIR_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def lowering_fingerprint() -> str:
    """A hash of every file in LOWERING_SOURCES (names and contents)."""
    h = hashlib.sha256()
    for rel in LOWERING_SOURCES:
        path = CKEIR_ROOT / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(CKEIR_ROOT).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def lower_module_cached(module: Operation, host: HostCPU, rank: int | None = None):
    """`lower_module`, remembered on disk by the module's text, the rank, the host and the
    source of what shapes a lowering (`LOWERING_SOURCES`), so a warm start skips generating
    kernel IR (about a second for SmolLM2).  Returns (lowered, cache_hit)."""
    from ckeir.ir.printer import print_ir

    key = hashlib.sha256(
        "\n".join(
            [
                print_ir(module),
                str(rank),
                host.name,
                host.llvm_features_string(),
                lowering_fingerprint(),
            ]
        ).encode()
    ).hexdigest()[:40]
    path = cache.cache_dir() / "lowered" / f"{key}.pickle"
    raw = cache.read(path)
    if raw is not None:
        try:
            return pickle.loads(raw), True
        except Exception as e:  # noqa: BLE001 - checks out, yet unusable: rebuilt, with a word
            cache.discard(path, f"not a lowered program: {type(e).__name__}")
    lowered = lower_module(module, host, rank)
    cache.write_atomic(path, pickle.dumps(lowered))
    return lowered, False
