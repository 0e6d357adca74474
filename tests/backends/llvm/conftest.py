"""Fixtures for the native kernels: one object cache per test session, compiled kernels and
thread pools reused across tests, `run_kernel` to call a kernel on numpy arrays, and
`assert_close` to compare with a float64 numpy reference."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from isa_pairs import host_isas

from ckeir.backends.llvm.host import ISA_LEVELS, HostCPU, detect_host
from ckeir.backends.llvm.jit import CompiledModule, compile_ir
from ckeir.backends.llvm.kernels import Kernel, entry_ctx, kernel_entry_ir, module_ir
from ckeir.backends.llvm.pool import Pool


@pytest.fixture(scope="session", autouse=True)
def _object_cache(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CKEIR_CACHE_DIR", str(tmp_path_factory.mktemp("ckeir-cache")))
    mp.delenv("CKEIR_ISA", raising=False)
    yield
    mp.undo()


@pytest.fixture(params=ISA_LEVELS)
def host(request: pytest.FixtureRequest) -> HostCPU:
    if request.param not in host_isas():
        pytest.skip(f"host lacks {request.param}")
    return detect_host(request.param)


class Runner:
    """Compiles each kernel once (with its entry wrapper) and runs it on a pool."""

    def __init__(self) -> None:
        self._modules: dict[tuple[str, str], CompiledModule] = {}
        self._pools: dict[int, Pool] = {}

    def compile(self, kernel: Kernel, host: HostCPU) -> CompiledModule:
        key = (kernel.name, host.isa)
        if key not in self._modules:
            self._modules[key] = compile_ir(module_ir([kernel, kernel_entry_ir(kernel)]), host)
        return self._modules[key]

    def pool(self, nth: int) -> Pool:
        if nth not in self._pools:
            self._pools[nth] = Pool(nth)
        return self._pools[nth]

    def __call__(
        self,
        kernel: Kernel,
        host: HostCPU,
        arrays: list[np.ndarray],
        n: int,
        pos: int = 0,
        nth: int = 1,
    ) -> None:
        assert len(arrays) == len(kernel.args)
        assert all(a.flags.c_contiguous for a in arrays)
        ctx = entry_ctx([a.ctypes.data for a in arrays], n, pos)
        self.pool(nth).run(self.compile(kernel, host).address("entry"), ctypes.addressof(ctx))

    def close(self) -> None:
        for p in self._pools.values():
            p.close()


@pytest.fixture(scope="session")
def run_kernel():
    r = Runner()
    yield r
    r.close()


def _assert_close(
    got: np.ndarray, want: np.ndarray, scale: np.ndarray | None = None, rtol: float = 1e-5
) -> None:
    """|got - want| ≤ rtol * scale; scale defaults to |want| (pass the sum of the terms'
    magnitudes for a dot product, so that cancellation does not count as error)."""
    want = np.asarray(want, dtype=np.float64)
    scale = np.abs(want) if scale is None else np.asarray(scale, dtype=np.float64)
    excess = np.abs(got.astype(np.float64) - want) - rtol * scale
    worst = int(np.argmax(excess))
    assert excess.flat[worst] <= 1e-30, (
        f"{int((excess > 1e-30).sum())} of {excess.size} differ; worst at "
        f"{np.unravel_index(worst, excess.shape)}: got {got.flat[worst]!r}, want {want.flat[worst]!r}"
    )


@pytest.fixture(scope="session")
def assert_close():
    return _assert_close
