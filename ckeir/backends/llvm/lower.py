"""lower-llvm: one native entry per `cke.func`, calling specialized kernels op by op.

The entry is `void @cke_<phase>(ptr %ctx, i32 %tid, i32 %nth)`.  Every thread of the pool runs
it; each kernel call does the thread's share of one op, and an atomic barrier separates
dependent ops.  `%ctx` is an array of 8-byte slots the runtime fills (`ProgramABI` says which
slot holds what): the arena base, the row count, the position, the barrier state, the inputs,
the KV caches, and one pointer per weight.  Intermediates live at their plan-memory offsets.
"""

from __future__ import annotations

import attrs

from ckeir.backends.llvm import kernels as K
from ckeir.backends.llvm.host import HostCPU
from ckeir.backends.llvm.kernels.common import FunctionWriter, Kernel
from ckeir.errors import BackendError
from ckeir.ir.core import Operation, OpResult
from ckeir.ir.types import ShapedType, element_format, nbytes
from ckeir.passes.manager import Pass, PassContext, funcs, register_pass

FIXED_SLOTS = ("arena", "n", "pos", "barrier", "ids", "kcache", "vcache")


@attrs.frozen
class ProgramABI:
    """What the runtime must put in each `%ctx` slot of one program, and where outputs are."""

    symbol: str
    phase: str
    slots: tuple[str, ...]  # FIXED_SLOTS, then "weight:<name>" per weight
    arena_bytes: int
    max_tokens: int
    outputs: tuple[tuple[int, int], ...]  # (arena offset, bytes) of each returned value

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
    def __init__(self, func: Operation, host: HostCPU):
        self.func, self.host = func, host
        self.kernels: dict[str, Kernel] = {}
        self.block = func.regions[0].entry
        self.weights = [op.attr("name") for op in self.block.ops if op.name == "cke.weight"]
        self.slots = FIXED_SLOTS + tuple(f"weight:{w}" for w in self.weights)
        self.sym = f"cke_{func.attr('sym_name')}"
        self.f = FunctionWriter(
            self.sym,
            [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")],
            linkage="dso_local",
            attributes="nounwind",
        )
        self.ptrs: dict[object, str] = {}

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
    def run(self) -> str:
        f = self.f
        arena = self.slot_ptr("arena")
        self.n, self.pos = self.slot_i64("n"), self.slot_i64("pos")
        self.barrier = self.slot_ptr("barrier")
        ids, kc, vc = (self.slot_ptr(s) for s in ("ids", "kcache", "vcache"))
        args = self.block.args
        self.ptrs.update({args[0]: ids, args[2]: kc, args[3]: vc})
        ops = [op for op in self.block.ops if op.name not in ("cke.weight", "mem.arena")]
        for op in self.block.ops:
            if op.name == "cke.weight":
                self.ptrs[op.results[0]] = self.slot_ptr(f"weight:{op.attr('name')}")
            elif op.results and op.attr("offset") is not None:
                self.ptrs[op.results[0]] = f(
                    f"getelementptr inbounds i8, ptr {arena}, i64 {op.attr('offset')}", "buf"
                )
            elif op.results and op.name not in ("cke.weight",):
                raise BackendError(
                    f"lower-llvm: {op.name} has no arena offset (run plan-memory first)"
                )
        for i, op in enumerate(ops):
            if op.name == "cke.return":
                break
            LOWER[op.name](self, op)
            if i + 1 < len(ops) - 1:  # no barrier needed after the last op before return
                self.sync()
        return f.finish()

    def rows(self, v) -> str:
        t = v.type
        return str(t.shape[0]) if isinstance(t, ShapedType) and t.shape[0] is not None else self.n

    def call(self, kernel: Kernel, buffers: list[str], rows: str) -> None:
        self.kernels.setdefault(kernel.name, kernel)
        args = [("ptr", b) for b in buffers]
        args += [("i64", rows), ("i64", self.pos), ("i32", "%tid"), ("i32", "%nth")]
        self.f.call("void", kernel.name, args)

    def sync(self) -> None:
        k = K.barrier()
        self.kernels.setdefault(k.name, k)
        self.f.call("void", k.name, [("ptr", self.barrier), ("i32", "%nth")])

    def cache_layer(self, cache: str, op: Operation, operand: int) -> str:
        c = op.operands[operand].type
        layer_bytes = c.shape[1] * c.shape[2] * 4
        return self.f(
            f"getelementptr inbounds i8, ptr {cache}, i64 {op.attr('layer') * layer_bytes}", "layer"
        )


def _io(low: _Lowering, op: Operation) -> list[str]:
    return [low.value_ptr(v) for v in op.operands] + [low.value_ptr(op.results[0])]


def _dims(v) -> tuple[int, ...]:
    return tuple(v.type.shape)


def _lower_embed(low: _Lowering, op: Operation) -> None:
    v, d = _dims(op.operands[1])
    fmt = element_format(op.operands[1].type.element).name
    if fmt != "f32":
        raise BackendError(
            f"lower-llvm: no native embedding lookup in {fmt} tables yet", loc=op.loc
        )
    low.call(K.embed(v, d, low.host), _io(low, op), low.rows(op.operands[0]))


def _lower_rmsnorm(low: _Lowering, op: Operation) -> None:
    d = _dims(op.operands[1])[0]
    low.call(K.rmsnorm(d, op.attr("eps"), low.host), _io(low, op), low.rows(op.operands[0]))


def _lower_matmul(low: _Lowering, op: Operation) -> None:
    n, k = _dims(op.operands[1])
    tile = tuple(op.attr("tile") or (16, k))
    fmt = element_format(op.operands[1].type.element).name
    low.call(K.matmul(n, k, tile, low.host, fmt=fmt), _io(low, op), low.rows(op.operands[0]))


def _lower_rope(low: _Lowering, op: Operation) -> None:
    width = _dims(op.operands[0])[1]
    hd = op.attr("head_dim")
    kern = K.rope(width // hd, hd, op.attr("theta"), op.attr("style"), low.host)
    io = [low.value_ptr(op.operands[0]), low.value_ptr(op.results[0])]
    low.call(kern, io, low.rows(op.operands[0]))


def _lower_attention(low: _Lowering, op: Operation) -> None:
    q, k, v, kc, vc = (low.value_ptr(x) for x in op.operands[:5])
    kc, vc = low.cache_layer(kc, op, 3), low.cache_layer(vc, op, 4)
    context, kvd = _dims(op.operands[3])[1:]
    rows = low.rows(op.operands[0])
    low.call(K.kv_store(kvd, context, low.host), [k, v, kc, vc], rows)
    low.sync()
    kern = K.attention(
        op.attr("heads"), op.attr("kv_heads"), op.attr("head_dim"), context, low.host
    )
    low.call(kern, [q, kc, vc, low.value_ptr(op.results[0])], rows)


def _lower_elementwise(gen):
    def lower(low: _Lowering, op: Operation) -> None:
        d = _dims(op.operands[0])[1]
        low.call(gen(d, low.host), _io(low, op), low.rows(op.operands[0]))

    return lower


def _lower_last_token(low: _Lowering, op: Operation) -> None:
    f = low.f
    row_bytes = nbytes(op.results[0].type)
    with f.if_(f("icmp eq i32 %tid, 0", "first")):
        last = f(f"mul i64 {f(f'sub i64 {low.rows(op.operands[0])}, 1')}, {row_bytes}", "off")
        src = f(f"getelementptr inbounds i8, ptr {low.value_ptr(op.operands[0])}, i64 {last}")
        f.memcpy(low.value_ptr(op.results[0]), src, row_bytes)


def _lower_argmax(low: _Lowering, op: Operation) -> None:
    v = _dims(op.operands[0])[1]
    low.call(K.argmax(v, low.host), _io(low, op), low.rows(op.operands[0]))


LOWER = {
    "cke.embed": _lower_embed,
    "cke.rmsnorm": _lower_rmsnorm,
    "cke.matmul": _lower_matmul,
    "cke.rope": _lower_rope,
    "cke.attention": _lower_attention,
    "cke.silu_mul": _lower_elementwise(K.silu_mul),
    "cke.add": _lower_elementwise(K.add),
    "cke.last_token": _lower_last_token,
    "cke.argmax": _lower_argmax,
}


def _abi(low: _Lowering) -> ProgramABI:
    func = low.func
    ret = low.block.terminator
    outputs = []
    for v in ret.operands:
        if not isinstance(v, OpResult) or v.op.attr("offset") is None:
            raise BackendError("lower-llvm: a returned value is not in the arena")
        outputs.append((v.op.attr("offset"), nbytes(v.type)))
    return ProgramABI(
        low.sym,
        func.attr("phase"),
        low.slots,
        func.attr("arena_bytes", 0),
        func.attr("max_tokens", 1),
        tuple(outputs),
    )


def lower_module(module: Operation, host: HostCPU) -> LoweredModule:
    """LLVM IR text for every program of the module, and each program's ABI."""
    kernels: dict[str, Kernel] = {}
    entries, programs, declares = [], {}, set()
    for func in funcs(module):
        for op in func.regions[0].entry.ops:
            if op.name not in LOWER and op.name not in ("cke.weight", "mem.arena", "cke.return"):
                raise BackendError(f"lower-llvm: no lowering for '{op.name}'", loc=op.loc)
        low = _Lowering(func, host)
        entries.append(low.run())
        kernels.update(low.kernels)
        declares |= low.f.declares
        programs[func.attr("sym_name")] = _abi(low)
    for k in kernels.values():
        declares |= k.declares
    text = "\n".join(sorted(declares) + [k.ir for k in kernels.values()] + entries)
    return LoweredModule(text, programs)


@register_pass
class LowerLLVM(Pass):
    name = "lower-llvm"
    summary = "one native entry per program, calling shape-specialized kernels (llvmlite)"

    def apply(self, module: Operation, ctx: PassContext, rewriter) -> None:
        from ckeir.backends.llvm.host import detect_host

        host = ctx.options.get("host") or detect_host(ctx.options.get("isa"))
        ctx.artifacts["llvm"] = lower_module(module, host)
