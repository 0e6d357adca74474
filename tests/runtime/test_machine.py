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
