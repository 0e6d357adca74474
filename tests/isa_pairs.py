"""Kernel cases over ISA levels without their full product: every pair of factors met once.

A kernel test compiles one module per (format, shape, ISA level), and compiling is nearly all
of its time.  The product of the three repeats each pair of them: a bug that shows on one ISA
level for one format, or on one ISA level for one shape, needs only that pair.  `rotated`
runs every (format, shape) pair once, on the ISA level (i + j) mod L of format i and shape j
among the L levels this host has; so each format also meets every level (given L shapes or
more) and each shape every level (given L formats or more), at 1/L of the compiles.
"""

from __future__ import annotations

import pytest

from ckeir.backends.llvm.host import ISA_LEVELS, native_host


def host_isas() -> list[str]:
    """The ISA levels this host runs, lowest first."""
    return list(ISA_LEVELS[: ISA_LEVELS.index(native_host().isa) + 1])


def rotated(formats, shapes) -> list:
    """`pytest.param(isa, fmt, *shape)` for every format and shape, the ISA level rotating;
    parametrize with ("host", "fmt", ...shape names) and indirect=["host"]."""
    isas = host_isas()
    cases = []
    for i, fmt in enumerate(formats):
        for j, shape in enumerate(shapes):
            shape = shape if isinstance(shape, tuple) else (shape,)
            cases.append(pytest.param(isas[(i + j) % len(isas)], fmt, *shape))
    return cases
