"""The machine a prediction is for: its figures are measured once and remembered, and
measured again, beside the earlier ones, inside `machine.measuring_again` (a benchmark's
rounds), the prediction taking the best of them."""

from __future__ import annotations

import json

from ckeir import cache
from ckeir.backends.llvm.host import detect_host
from ckeir.runtime import bandwidth, machine


def measurements(name: str, host) -> list[float]:
    raw = cache.read(bandwidth.record_path(name, host))
    return [m["value"] for m in json.loads(raw)["measurements"]]


def test_figures_are_remembered_then_measured_again_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    host = detect_host()
    first = machine.dispatch_seconds(1, host)
    assert machine.dispatch_seconds(1, host) == first  # remembered: not measured again
    assert len(measurements("pool-dispatch-1thr", host)) == 1
    with machine.measuring_again():
        machine.dispatch_seconds(1, host)
        machine.dispatch_seconds(1, host)
    seen = measurements("pool-dispatch-1thr", host)
    assert len(seen) == 3
    assert machine.dispatch_seconds(1, host) == min(seen)  # a cost: the best is the least
    assert len(measurements("pool-dispatch-1thr", host)) == 3


def test_a_chunked_matmul_is_timed_with_the_kernel_it_runs():
    """A matmul that sums K in chunks (`k_chunk`: tensor parallelism's row-parallel
    matmuls, on one rank too) is costed at its own kernel, not the plain one of its shape:
    the bench runs it, and a later group member's kernel leaves each chunk's sums apart,
    which add up to the plain kernel's result."""
    import numpy as np

    from ckeir.backends.llvm.pool import Pool

    host = detect_host()
    shape = (64, 128)
    plain = machine._KernelBench("q8_0/q8_0", host, 1, 1, shape, shape)
    folded = machine._KernelBench("q8_0/q8_0", host, 1, 1, shape, shape, chunk=64)
    apart = machine._KernelBench("q8_0/q8_0", host, 1, 1, shape, shape, chunk=64, separate=True)
    with Pool(1, host) as pool:
        for bench in (plain, folded, apart):
            assert bench.seconds_per_call(pool) > 0
    assert apart.out.shape == (2, 64)
    assert not np.allclose(apart.out[0], plain.out[0])  # chunk 0's sums alone
    np.testing.assert_allclose(apart.out.sum(0), plain.out[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(folded.out[0], plain.out[0], rtol=1e-4, atol=1e-3)
