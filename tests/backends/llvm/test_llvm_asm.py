"""The hot loops are hand-vectorized: packed FMAs on the ISA's widest registers."""

from __future__ import annotations

import re

import pytest

from ckeir.backends.llvm import kernels as K

REGS = {"generic": "xmm", "avx2": "ymm", "avx512": "zmm"}


@pytest.mark.parametrize(
    "make",
    [lambda h: K.matmul(576, 576, (64, 256), h), lambda h: K.attention(9, 3, 64, 128, h)],
    ids=["matmul", "attention"],
)
def test_packed_fma_on_widest_registers(host, run_kernel, make):
    asm = run_kernel.compile(make(host), host).asm()
    fmas = re.findall(r"\bvfmadd\w*ps\s+([^\n]*)", asm)
    if host.isa == "generic":  # SSE has no FMA: packed multiplies and adds instead
        assert not fmas and re.search(r"\bmulps\b", asm) and "ymm" not in asm and "zmm" not in asm
        return
    assert len(fmas) >= 16
    assert all(REGS[host.isa] in operands for operands in fmas)
    if host.isa == "avx2":
        assert "zmm" not in asm
