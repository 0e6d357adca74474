"""`ckec serve` starting and stopping: SIGTERM ends it cleanly (status 0) even with a stream
running, which ends; a schedule it cannot serve is refused with the reason before it
listens, no traceback."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from cli_runner import ckec
from server import Server
from smollm2 import SPEC, needs_smollm2

TINY = Path(__file__).resolve().parents[2] / "specs" / "tiny.cke"


@needs_smollm2
@pytest.mark.slow
def test_sigterm_stops_cleanly_with_a_stream_running():
    server = Server(SPEC, "--parallel", "2").wait_ready()
    got = []
    with server.client() as client:
        stream = client.completions.create(
            model="smollm2", prompt="Once upon a time", max_tokens=4000, stream=True
        )
        first = threading.Event()

        def read():
            try:
                for chunk in stream:
                    got.append(chunk.choices[0].finish_reason if chunk.choices else None)
                    first.set()
            except Exception as e:  # noqa: BLE001 - the connection may be cut: that ends it too
                got.append(e)
            finally:
                first.set()

        reader = threading.Thread(target=read)
        reader.start()
        first.wait(300)
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(120)
        reader.join(120)
    out, err = server.proc.communicate()
    assert code == 0, err
    assert "Traceback" not in err
    assert not reader.is_alive() and len(got) < 4000  # the stream ended with the server


def test_several_ranks_without_a_batch_are_refused():
    server = Server(TINY)
    code = server.proc.wait(300)
    out, err = server.proc.communicate()
    assert code == 1, err
    assert "runs on 2 ranks with batch 1" in err and "give the schedule `batch N`" in err
    assert "Traceback" not in err and "listening" not in err


def test_a_bad_spec_is_refused_before_listening(tmp_path):
    bad = tmp_path / "bad.cke"
    bad.write_text("model m { family llama\n")
    server = Server(bad)
    code = server.proc.wait(120)
    out, err = server.proc.communicate()
    assert code == 1 and "bad.cke:" in err and "listening" not in err


def test_an_address_in_use_is_refused_before_loading(tmp_path):
    import socket

    from widths import TWO_CORES_SPEC

    spec = tmp_path / "m.cke"
    spec.write_text(TWO_CORES_SPEC)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = ckec("serve", spec, "--port", port, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "loading" not in r.stderr
