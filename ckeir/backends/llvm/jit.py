"""LLVM IR text → machine code in this process (MCJIT), with a disk cache of object code.

`compile_ir(text)` parses and verifies the module, optimizes it with the new pass manager
at O3 for the host CPU (see `host.py`), and JIT-links it.  The object code is cached on
disk under `$CKEIR_CACHE_DIR` (default `~/.cache/ckeir`), keyed by the sha256 of the module
text, CPU name, feature string, llvmlite version and opt level: a second compile of the same
text only parses it (milliseconds) and loads the cached object through MCJIT's object-cache
hooks, skipping optimization and code generation.  An object is loaded only after its
checksum and key are verified (`ckeir.cache`); a damaged one is recompiled and rewritten.

External symbols (`cos`, `sin`, `syscall`, `sched_yield`, `memcpy`) resolve from the
process, which has libc and libm loaded; libgcc_s is loaded for compiler builtins.
"""

from __future__ import annotations

import ctypes.util
import functools
import hashlib
import time

import llvmlite
import llvmlite.binding as llvm

from ckeir import cache
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.errors import BackendError


@functools.cache
def _init_llvm() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # Compiler builtins LLVM may call (f16 conversions, 128-bit division, ...): MCJIT looks
    # them up in the process, where libgcc_s is not necessarily loaded.
    # By soname first: dlopen finds it without ctypes.util.find_library's ldconfig
    # subprocess, which is slow on a busy machine and ran again in every spawned rank.
    try:
        llvm.load_library_permanently("libgcc_s.so.1")
    except RuntimeError:
        lib = ctypes.util.find_library("gcc_s")
        if lib:
            try:
                llvm.load_library_permanently(lib)
            except RuntimeError:
                pass


def target_machine(host: HostCPU, opt: int = 3) -> llvm.TargetMachine:
    _init_llvm()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=host.name,
        features=host.llvm_features_string(),
        opt=opt,
        reloc="default",
        codemodel="jitdefault",
        jit=True,
    )


def cache_key(module_text: str, host: HostCPU, opt: int) -> str:
    h = hashlib.sha256()
    for part in (
        module_text,
        host.name,
        host.llvm_features_string(),
        llvmlite.__version__,
        str(opt),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _parse(text: str) -> llvm.ModuleRef:
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as e:
        raise BackendError(f"LLVM rejected the generated IR: {_first_lines(str(e))}") from e
    return mod


def _optimize(mod: llvm.ModuleRef, tm: llvm.TargetMachine, opt: int) -> None:
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


def _first_lines(msg: str, n: int = 6) -> str:
    lines = msg.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


class CompiledModule:
    """Machine code for one LLVM module, alive as long as this object is."""

    def __init__(self, text: str, host: HostCPU, opt: int, use_cache: bool = True):
        self.text = text
        self.host = host
        self.opt = opt
        self.key = cache_key(text, host, opt)
        self.timings: dict[str, float] = {}
        self._tm = target_machine(host, opt)
        path = cache.cache_dir() / f"{self.key}.o"
        # `cache.read` checks the entry's checksum and key: a damaged object reads as a miss
        # and is rebuilt, never handed to MCJIT (which aborts or runs the damaged code).
        cached = cache.read(path, self.key) if use_cache else None
        self.cache_hit = cached is not None

        t0 = time.perf_counter()
        mod = _parse(text)
        t1 = time.perf_counter()
        if not self.cache_hit:
            _optimize(mod, self._tm, opt)
        t2 = time.perf_counter()
        try:
            self._engine = llvm.create_mcjit_compiler(mod, self._tm)
            self._engine.set_object_cache(
                notify_func=(
                    (lambda _m, obj: cache.write_atomic(path, obj, self.key)) if use_cache else None
                ),
                getbuffer_func=lambda _m: cached,
            )
            self._engine.finalize_object()
            self._engine.run_static_constructors()
        except RuntimeError as e:
            raise BackendError(f"LLVM code generation failed: {_first_lines(str(e))}") from e
        t3 = time.perf_counter()
        self._optimized: llvm.ModuleRef | None = None
        self.timings.update(parse=t1 - t0, opt=t2 - t1, codegen=t3 - t2, total=t3 - t0)

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:
            raise BackendError(f"no function @{name} in the compiled module")
        return addr

    def _optimized_module(self) -> llvm.ModuleRef:
        # The engine owns the module it compiled (and on a cache hit it was never optimized):
        # build a separate optimized copy on demand, for --emit=llvm/asm.
        if self._optimized is None:
            mod = _parse(self.text)
            _optimize(mod, self._tm, self.opt)
            self._optimized = mod
        return self._optimized

    def optimized_ir(self) -> str:
        return str(self._optimized_module())

    def asm(self) -> str:
        return self._tm.emit_assembly(self._optimized_module())


def compile_ir(
    module_text: str, host: HostCPU | None = None, opt: int = 3, use_cache: bool = True
) -> CompiledModule:
    """Compile LLVM IR text for `host` (default: `detect_host()`) and JIT-link it."""
    return CompiledModule(module_text, host or detect_host(), opt, use_cache)
