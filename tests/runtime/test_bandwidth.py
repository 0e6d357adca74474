"""The bandwidth probe: it reads what it is given, and its figure is remembered per host."""

from ckeir.runtime import bandwidth


def test_probe_and_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    assert bandwidth.read_bandwidth(1) is None  # nothing remembered yet
    bw = bandwidth.measure_read_bandwidth(1, nbytes=8 << 20, repeat=2)
    assert 1e8 < bw < 1e13
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 12.5e9)
    assert bandwidth.read_bandwidth(1, measure=True) == 12.5e9
    assert bandwidth.read_bandwidth(1) == 12.5e9  # remembered
    assert bandwidth.read_bandwidth(2) is None  # per thread count
