"""The prediction a run report carries is for the run as it ran: on local ranks whose links
are simulated slow, where the link's delays (not this machine's speed) make a token's time,
the predicted decode time per token is within 15% of the time between the tokens the run
sent over its hop, and the hop's predicted time within 15% of what its sends took.  Medians
over the run's steps: a step that another process delayed says nothing of the model."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

import ckeir
from ckeir.ranks import run_local
from ckeir.runtime.machine import run_prediction
from ckeir.runtime.transport.base import LinkModel

ROOT = Path(__file__).resolve().parents[2]
# 1 MB/s, 4 ms: ~9 ms a token, of which the kernels take ~0.1 ms.  (Below the local
# transport's spin time, LINK_SPIN_S: a receive that waits longer sleeps in naps.)
SLOW = LinkModel.uniform(bandwidth=1e6, latency=4e-3)


@pytest.mark.slow
def test_prediction_holds_on_a_slow_simulated_link():
    prog = ckeir.compile(ROOT / "specs" / "tiny.cke", backend="reference")
    out = run_local(prog, [1, 2, 3], 16, links=SLOW)
    st = out["stats"]
    decoded = st["generated_tokens"] - 1
    pred = run_prediction(prog, st["prompt_tokens"] + decoded // 2, SLOW)
    first = out["ranks"][0]
    sends = [e for e in first["events"] if e[0] == "send"]  # (kind, peer, bytes, t0, seconds)
    assert len(sends) == decoded  # the decode pipeline's hop, once a token
    period = statistics.median(b[3] - a[3] for a, b in zip(sends, sends[1:], strict=False))
    assert period / pred.decode_seconds_per_token == pytest.approx(1.0, abs=0.15)
    hop = statistics.median(e[4] for e in sends)
    assert hop / pred.hop_seconds(0, sends[0][1], sends[0][2]) == pytest.approx(1.0, abs=0.15)
    assert pred.basis["links"] == "simulated"
