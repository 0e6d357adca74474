"""The bandwidth probe: it reads what it is given, and its figure is remembered per machine
and thread count; the record states the best of its fresh measurements, is measured again
when stale or beaten by a run, and a damaged or nonsense record is discarded with a warning
and measured again."""

import json

import pytest

from ckeir import cache
from ckeir.backends.llvm.host import detect_host
from ckeir.runtime import bandwidth

DAY = 24 * 3600.0


def test_probe_and_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    assert bandwidth.read_bandwidth(1) is None  # nothing remembered yet
    bw = bandwidth.measure_read_bandwidth(1, nbytes=8 << 20, repeat=2)
    assert 1e8 < bw < 1e13
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 12.5e9)
    assert bandwidth.read_bandwidth(1, measure=True) == 12.5e9
    assert bandwidth.read_bandwidth(1) == 12.5e9  # remembered
    assert bandwidth.read_bandwidth(2) is None  # per thread count


class Probe:
    """A stand-in measurement returning the given figures in turn, counting its calls."""

    def __init__(self, *figures):
        self.figures, self.calls = list(figures), 0

    def __call__(self) -> float:
        self.calls += 1
        return self.figures.pop(0)


def test_the_best_fresh_measurement_counts(tmp_path, monkeypatch):
    """A figure measured under load (lower) does not replace a better one."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    path = tmp_path / "figure.json"
    probe = Probe(30e9, 9e9, 31e9)
    assert bandwidth.remembered(path, probe, now=0.0) == 30e9
    assert bandwidth.remembered(path, probe, now=1.0, refresh=True) == 30e9  # 9e9: loaded
    assert bandwidth.remembered(path, probe, now=2.0) == 30e9 and probe.calls == 2
    assert bandwidth.remembered(path, probe, now=3.0, refresh=True) == 31e9
    costs = Probe(5e-6, 9e-6)
    assert bandwidth.remembered(tmp_path / "cost.json", costs, best=min, lo=0, hi=1) == 5e-6
    assert bandwidth.remembered(tmp_path / "cost.json", costs, best=min, lo=0, hi=1, refresh=True)


def test_the_record_keeps_the_last_few(tmp_path, monkeypatch):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    path = tmp_path / "figure.json"
    probe = Probe(*(1e9 * (i + 1) for i in range(bandwidth.KEEP + 3)))
    for i in range(bandwidth.KEEP + 3):
        bandwidth.remembered(path, probe, now=float(i), refresh=True)
    kept = json.loads(cache.read(path))["measurements"]
    assert len(kept) == bandwidth.KEEP
    assert [m["value"] for m in kept][-1] == 1e9 * (bandwidth.KEEP + 3)


def test_a_stale_figure_is_measured_again(tmp_path, monkeypatch):
    """Older than MAX_AGE_S, a figure is not believed even if it is the best."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    path = tmp_path / "figure.json"
    probe = Probe(40e9, 40e9, 40e9, 20e9)
    for i in range(bandwidth.SAMPLES):
        assert bandwidth.remembered(path, probe, now=float(i), refresh=True) == 40e9
    assert bandwidth.remembered(path, probe, now=bandwidth.MAX_AGE_S - 1) == 40e9
    assert probe.calls == bandwidth.SAMPLES
    assert bandwidth.remembered(path, probe, now=bandwidth.MAX_AGE_S + DAY) == 20e9
    assert probe.calls == bandwidth.SAMPLES + 1


def test_a_young_record_gathers_a_few_samples(tmp_path, monkeypatch):
    """One figure taken while the machine was busy does not stand for a week: until SAMPLES
    are kept, a use an hour after the latest measures again; then the record only reads."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    path = tmp_path / "figure.json"
    probe = Probe(5e9, 30e9, 29e9)
    assert bandwidth.remembered(path, probe, now=0.0) == 5e9  # measured under load
    assert bandwidth.remembered(path, probe, now=60.0) == 5e9  # too soon to measure again
    hour = bandwidth.RESAMPLE_S
    assert bandwidth.remembered(path, probe, now=hour) == 30e9
    assert bandwidth.remembered(path, probe, now=2 * hour) == 30e9
    assert probe.calls == bandwidth.SAMPLES == 3
    assert bandwidth.remembered(path, probe, now=3 * hour) == 30e9 and probe.calls == 3


def test_a_run_faster_than_the_figure_measures_again(tmp_path, monkeypatch):
    """A figure measured under load made a run's CKU exceed 100% of 'the bandwidth': a run
    observed above the figure has it measured again, and the better figure is kept."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    probe = Probe(10e9, 30e9)
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: probe())
    assert bandwidth.read_bandwidth(1, measure=True) == 10e9
    assert bandwidth.read_bandwidth(1, observed=9e9) == 10e9 and probe.calls == 1
    assert bandwidth.read_bandwidth(1, observed=11e9) == 30e9 and probe.calls == 2
    assert bandwidth.read_bandwidth(1) == 30e9


def test_records_are_per_machine(tmp_path, monkeypatch):
    """Two machines of one CPU model (another machine id) keep separate records."""
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    host = detect_host()
    here = bandwidth.record_path("x", host)
    monkeypatch.setattr(bandwidth.socket, "gethostname", lambda: "another-host")
    assert bandwidth.record_path("x", host) != here


RECORDS = {
    "not-json": b"{measurements: [",
    "not-an-object": b"[12.5e9]",
    "missing-figure": b'{"threads": 1}',
    "old-format": b'{"bytes_per_second": 12.5e9, "measured_at": 1}',
    "string": b'{"measurements": [{"value": "fast", "measured_at": 1}]}',
    "bool": b'{"measurements": [{"value": true, "measured_at": 1}]}',
    "nan": b'{"measurements": [{"value": NaN, "measured_at": 1}]}',
    "infinite": b'{"measurements": [{"value": Infinity, "measured_at": 1}]}',
    "negative": b'{"measurements": [{"value": -3e10, "measured_at": 1}]}',
    "zero": b'{"measurements": [{"value": 0, "measured_at": 1}]}',
    "absurd": b'{"measurements": [{"value": 1e300, "measured_at": 1}]}',
    "bad-time": b'{"measurements": [{"value": 1e10, "measured_at": "now"}]}',
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
    assert json.loads(cache.read(path))["measurements"][-1]["value"] == 12.5e9
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 1 / 0)
    assert bandwidth.read_bandwidth(1) == 12.5e9  # remembered again, not measured
    assert capsys.readouterr().err == ""


def test_a_damaged_record_is_measured_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CKEIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 12.5e9)
    assert bandwidth.read_bandwidth(1, measure=True) == 12.5e9
    path = bandwidth._record_path(detect_host(), 1)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1  # a digit of measured_at
    path.write_bytes(raw)
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: 13e9)
    assert bandwidth.read_bandwidth(1) == 13e9
    assert "(checksum mismatch)" in capsys.readouterr().err
    assert bandwidth.read_bandwidth(1) == 13e9


def test_a_run_beating_the_remembered_figure_has_it_measured_again(tmp_path):
    """A run whose CKU exceeds the remembered figure (here planted at 1 MB/s, as if measured
    on a machine the bus was taken from) measures the bandwidth again: the record gains a
    measurement and the report compares against the new figure."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cli_runner import ckec

    env = {"CKEIR_CACHE_DIR": str(tmp_path)}
    host = detect_host()
    paths = {}
    for threads in (1, 2):  # whichever the run uses
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CKEIR_CACHE_DIR", str(tmp_path))
            paths[threads] = bandwidth._record_path(host, threads)
            bandwidth.remembered(paths[threads], lambda: 1e6)
    spec = Path(__file__).resolve().parents[2] / "specs" / "mha.cke"
    report = tmp_path / "r.json"
    r = ckec("run", spec, "--ids", "1,2,3", "-n", "8", "--report", report, "--no-predict", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    threads = rep["ranks"]["0"]["threads"]
    assert rep["bandwidth_source"] == "measured" and rep["bandwidth_bytes_per_second"] > 1e6
    record = json.loads(cache.read(paths[threads]))["measurements"]
    assert [m["value"] for m in record][0] == 1e6 and len(record) == 2
    assert rep["bandwidth_bytes_per_second"] == max(m["value"] for m in record)
