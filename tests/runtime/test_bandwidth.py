"""The bandwidth probe: it reads what it is given, and its figure is remembered per host; a
damaged or nonsense record is discarded with a warning and measured again."""

import json

import pytest

from ckeir import cache
from ckeir.backends.llvm.host import detect_host
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


RECORDS = {
    "not-json": b"{bytes_per_second: 1e10",
    "not-an-object": b"[12.5e9]",
    "missing-figure": b'{"threads": 1}',
    "string": b'{"bytes_per_second": "fast"}',
    "bool": b'{"bytes_per_second": true}',
    "nan": b'{"bytes_per_second": NaN}',
    "infinite": b'{"bytes_per_second": Infinity}',
    "negative": b'{"bytes_per_second": -3e10}',
    "zero": b'{"bytes_per_second": 0}',
    "absurd": b'{"bytes_per_second": 1e300}',
}


@pytest.mark.parametrize("content", list(RECORDS.values()), ids=list(RECORDS))
def test_an_unusable_record_is_measured_again(content, tmp_path, monkeypatch, capsys):
    """A record whose checksum holds but whose figure is nonsense is not reported against:
    it is discarded with one warning, measured again and rewritten."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 12.5e9)
    path = bandwidth._record_path(detect_host(), 1)
    cache.write_atomic(path, content)
    assert bandwidth.read_bandwidth(1) == 12.5e9
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: discarded a damaged cache entry {path} (")
    assert json.loads(cache.read(path))["bytes_per_second"] == 12.5e9
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 1 / 0)
    assert bandwidth.read_bandwidth(1) == 12.5e9  # remembered again, not measured
    assert capsys.readouterr().err == ""


def test_a_damaged_record_is_measured_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 12.5e9)
    assert bandwidth.read_bandwidth(1, measure=True) == 12.5e9
    path = bandwidth._record_path(detect_host(), 1)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1  # a digit of measured_at
    path.write_bytes(raw)
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 13e9)
    assert bandwidth.read_bandwidth(1) == 13e9
    assert "(checksum mismatch)" in capsys.readouterr().err
    assert bandwidth.read_bandwidth(1) == 13e9
