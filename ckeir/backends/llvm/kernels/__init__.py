"""Generators of specialized LLVM IR kernels, one calling convention for all.

Every kernel is

    define internal void @NAME(ptr %a0, ..., ptr %aK, i64 %n, i64 %pos, i32 %tid, i32 %nth)

with the op's buffers as pointers (inputs, then output; row-major contiguous f32 unless
stated), `n` token rows in this call, `pos` the sequence position of row 0, and `tid`/`nth` read
as (part, parts): the kernel does part `tid` of the op cut into `nth` parts and never
synchronizes.  Any thread may run any part, in any order; the scheduler
(`backends.llvm.schedule`) hands the parts out and waits for an op's last part before the
next op starts.
Shapes are Python ints baked into the IR; `Kernel.name` encodes them (plus the vector width).

To build a module, `module_ir([k1, k2, barrier(), text...])` joins definitions and
deduplicates `declare`s; `kernel_entry_ir(k)` adds `void @entry(ptr ctx, i32 tid, i32 nth)`
reading the kernel's arguments from a context array (`entry_ctx`), the shape `pool.run` calls.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence

from ckeir.backends.llvm.kernels.attention import attention
from ckeir.backends.llvm.kernels.common import Kernel
from ckeir.backends.llvm.kernels.elementwise import (
    add,
    argmax,
    argmax_rows,
    embed,
    kv_store,
    kv_store_rows,
    rmsnorm,
    rope,
    silu_mul,
)
from ckeir.backends.llvm.kernels.matmul import matmul, matmul_tile
from ckeir.backends.llvm.kernels.quant_matmul import qmatmul
from ckeir.backends.llvm.kernels.sync import BARRIER, BARRIER_STATE_BYTES, barrier
from ckeir.errors import BackendError

__all__ = [
    "BARRIER",
    "BARRIER_STATE_BYTES",
    "Kernel",
    "add",
    "argmax",
    "argmax_rows",
    "attention",
    "barrier",
    "embed",
    "entry_ctx",
    "kernel_entry_ir",
    "kv_store",
    "kv_store_rows",
    "matmul",
    "matmul_tile",
    "module_ir",
    "rmsnorm",
    "rope",
    "silu_mul",
    "weight_matmul",
]


def module_ir(parts: Iterable[Kernel | str]) -> str:
    """One module's text from kernels (each defined once, by name) and raw IR snippets."""
    kernels: dict[str, Kernel] = {}
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif part.name not in kernels:
            kernels[part.name] = part
        elif kernels[part.name].ir != part.ir:
            raise BackendError(f"two different kernels are both named @{part.name}")
    declares = sorted({d for k in kernels.values() for d in k.declares})
    return "\n".join([*declares, "", *(k.ir for k in kernels.values()), *texts]) + "\n"


def kernel_entry_ir(kernel: Kernel, name: str = "entry") -> str:
    """`define void @name(ptr %ctx, i32 %tid, i32 %nth)` calling `kernel` with the arguments
    in ctx: i64 words [ptr a0, ..., ptr aK, n, pos] (see `entry_ctx`)."""
    nptr = len(kernel.args)
    lines = [f"define void @{name}(ptr %ctx, i32 %tid, i32 %nth) nounwind {{"]
    for i in range(nptr + 2):
        lines.append(f"  %p{i} = getelementptr inbounds i64, ptr %ctx, i64 {i}")
        lines.append(f"  %v{i} = load {'ptr' if i < nptr else 'i64'}, ptr %p{i}, align 8")
    args = [f"ptr %v{i}" for i in range(nptr)] + [
        f"i64 %v{nptr}",
        f"i64 %v{nptr + 1}",
        "i32 %tid",
        "i32 %nth",
    ]
    lines += [f"  call void @{kernel.name}({', '.join(args)})", "  ret void", "}", ""]
    return "\n".join(lines)


def entry_ctx(pointers: Sequence[int], n: int, pos: int) -> ctypes.Array:
    """The context array `kernel_entry_ir` reads: buffer addresses, then n and pos."""
    words = (ctypes.c_uint64 * (len(pointers) + 2))(*pointers, n, pos)
    return words


def weight_matmul(
    fmt: str, act: str | None, n: int, k: int, tile, host, rowwise: bool = False
) -> Kernel:
    """The kernel a `cke.matmul` with `fmt` weights (N x K) runs: int8 dot products on Q8_0
    activations when `act` is q8_0, else float activations; `rowwise` (batched decode):
    every token row summed as a one-row call sums it.  The lowering and the machine model's
    kernel measurements both take it from here."""
    if act == "q8_0":
        return qmatmul(fmt, n, k, tuple(tile), host, rowwise=rowwise)
    return matmul(n, k, tuple(tile), host, fmt=fmt, rowwise=rowwise)
