"""The host CPU as the native backend sees it: ISA level, vector width, caches, cores.

`detect_host()` asks LLVM for the CPU name and features and reads the cache sizes from
sysfs.  `CKEIR_ISA=generic|avx2|avx512` (or the `isa` argument) narrows the features handed
to LLVM, so the narrower code paths can be compiled and tested on a wider machine:

- `avx512`: everything the host has (requires avx512f);
- `avx2`:   drops AVX-512 (and AMX / AVX10), keeps AVX2 + FMA (requires them);
- `generic`: drops every AVX-family feature (SSE only, 128-bit vectors).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import attrs
import llvmlite.binding as llvm

from ckeir.errors import BackendError

ISA_LEVELS = ("generic", "avx2", "avx512")

# Feature-name prefixes that need AVX-512 state (dropped below `avx512`) and that need
# any AVX state (dropped at `generic`).
_AVX512_PREFIXES = ("avx512", "avx10", "amx", "evex512")
_AVX_PREFIXES = (
    *_AVX512_PREFIXES,
    "avx",
    "fma",
    "f16c",
    "vaes",
    "vpclmulqdq",
    "xop",
    "sha512",
    "sm3",
    "sm4",
    "gfni",
)

_SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
_FALLBACK_CACHES = {"l1d": 32 * 1024, "l2": 1024 * 1024, "l3": 8 * 1024 * 1024}


@attrs.frozen
class HostCPU:
    """What the kernels are specialized for (after any ISA narrowing)."""

    name: str  # LLVM CPU name, e.g. "znver4"
    features: frozenset[str]  # enabled feature names, without the "+"
    all_features: tuple[str, ...]  # every feature LLVM reported, to spell out "-feat" too
    isa: str  # "generic" | "avx2" | "avx512"
    l1d: int  # bytes, per core
    l2: int  # bytes, per core
    l3: int  # bytes, shared
    cores: int  # CPUs this process may run on

    @property
    def vector_bits(self) -> int:
        if "avx512f" in self.features:
            return 512
        if {"avx2", "fma"} <= self.features:
            return 256
        return 128

    @property
    def vector_width(self) -> int:
        """f32 lanes in one vector register."""
        return self.vector_bits // 32

    @property
    def has_vnni(self) -> bool:
        return "avx512vnni" in self.features

    @property
    def has_fma(self) -> bool:
        return "fma" in self.features

    def llvm_features_string(self) -> str:
        """The `features=` string for `Target.create_target_machine`, every feature explicit."""
        return ",".join(("+" if f in self.features else "-") + f for f in self.all_features)

    def narrowed(self, isa: str) -> HostCPU:
        """This CPU restricted to the ISA level `isa` (an error if the host lacks it)."""
        if isa not in ISA_LEVELS:
            raise BackendError(
                f"unknown ISA level {isa!r}", hint=f"use one of {', '.join(ISA_LEVELS)}"
            )
        feats = self.features
        if isa == "avx512" and "avx512f" not in feats:
            raise BackendError(f"CKEIR_ISA=avx512 but the host CPU {self.name} lacks avx512f")
        if isa == "avx2" and not {"avx2", "fma"} <= feats:
            raise BackendError(f"CKEIR_ISA=avx2 but the host CPU {self.name} lacks avx2/fma")
        drop = {"avx512": (), "avx2": _AVX512_PREFIXES, "generic": _AVX_PREFIXES}[isa]
        kept = frozenset(f for f in feats if not f.startswith(drop))
        return attrs.evolve(self, features=kept, isa=isa)


def _widest_isa(features: frozenset[str]) -> str:
    if "avx512f" in features:
        return "avx512"
    if {"avx2", "fma"} <= features:
        return "avx2"
    return "generic"


def _read_caches(root: Path = _SYSFS_CACHE) -> dict[str, int]:
    sizes = dict(_FALLBACK_CACHES)
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or level not in (1, 2, 3):
            continue
        sizes["l1d" if level == 1 else f"l{level}"] = size
    return sizes


def _parse_size(text: str) -> int:
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if text and text[-1].upper() in mult:
        return int(text[:-1]) * mult[text[-1].upper()]
    return int(text)


def usable_cpu_ids() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity), in order.  Where the affinity cannot
    be read (not Linux), every CPU the machine has."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = range(os.cpu_count() or 1)
    return tuple(sorted(cpus)) or (0,)


def usable_cpus() -> int:
    """How many CPUs this process may run on: the one CPU count of ckeir (thread pools,
    ranks per machine, whether waiters outnumber CPUs)."""
    return len(usable_cpu_ids())


@functools.cache
def native_host() -> HostCPU:
    """The host CPU with every feature it has (no narrowing)."""
    fmap = llvm.get_host_cpu_features()
    all_feats = tuple(sorted(fmap))
    feats = frozenset(f for f in all_feats if fmap[f])
    caches = _read_caches()
    return HostCPU(
        name=llvm.get_host_cpu_name(),
        features=feats,
        all_features=all_feats,
        isa=_widest_isa(feats),
        l1d=caches["l1d"],
        l2=caches["l2"],
        l3=caches["l3"],
        cores=usable_cpus(),
    )


def detect_host(isa: str | None = None) -> HostCPU:
    """The host CPU, narrowed to `isa` or `$CKEIR_ISA` when given (cached per level)."""
    isa = isa or os.environ.get("CKEIR_ISA") or None
    return _narrowed_host(isa)


@functools.cache
def _narrowed_host(isa: str | None) -> HostCPU:
    host = native_host()
    return host if isa is None or isa == host.isa else host.narrowed(isa)
