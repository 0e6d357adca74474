"""The prediction a run report carries is for the run as it ran: on local ranks whose links
are simulated slow, where the links' delays (not this machine's speed) make a token's time.

The fastest of the run's steps is compared (the simulated link holds every message for its
time, so no step can beat the link; a step another process delayed says nothing of the
model).  A hop is within 15% of its prediction.  A token is never more than 15% faster than
predicted; it may be slower by up to half, since every receive that waits for a shaped
message can lose a time slice when another process wants the CPU (on a quiet machine the
benchmark `benchmarks/predictions.py` shows the token within a few percent)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckeir
from ckeir.ranks import run_local
from ckeir.runtime.machine import run_prediction
from ckeir.runtime.transport.base import LinkModel

ROOT = Path(__file__).resolve().parents[2]
# 1 MB/s, 8 ms: ~17 ms a token, of which the kernels take ~0.1 ms.  (Below the local
# transport's spin time, LINK_SPIN_S: a receive that waits longer sleeps in naps.)
SLOW = LinkModel.uniform(bandwidth=1e6, latency=8e-3)


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
    period = min(b[3] - a[3] for a, b in zip(sends, sends[1:], strict=False))
    assert 0.85 <= period / pred.decode_seconds_per_token <= 1.5, (period, pred.basis)
    hop = min(e[4] for e in sends)
    predicted_hop = pred.hop_seconds(0, sends[0][1], sends[0][2])
    assert hop / predicted_hop == pytest.approx(1.0, abs=0.15), (hop, predicted_hop)
    assert pred.basis["links"] == "simulated"


def test_plan_for_this_machine_is_the_run_prediction():
    """`ckec plan` predicts for the declared cluster, and with this machine's figures the
    same decode step a run report predicts (one definition of the prediction)."""
    from ckeir.reports.plan import plan_report
    from ckeir.runtime.machine import this_machine

    prog = ckeir.compile(ROOT / "specs" / "tiny.cke", backend="reference")
    declared = plan_report(prog)
    assert declared["predicted_for"] == "declared cluster"
    here = plan_report(prog, this_machine(prog, SLOW))
    assert here["predicted_for"]["links"] == "simulated"
    decode = here["phases"]["decode"]["predicted_seconds"]
    assert decode == pytest.approx(run_prediction(prog, 1, SLOW).decode_seconds_per_token)
    # the slow link's two delays a token (the hop and the token coming back) dominate
    assert decode > 2 * 8e-3 > declared["phases"]["decode"]["predicted_seconds"]


@pytest.mark.slow
def test_prediction_of_native_collectives_over_a_slow_simulated_link():
    """Tensor parallel on local ranks runs its collectives in native code, one call per
    token, also over a simulated link: the prediction says so, costs each collective at its
    link's time plus what the native exchange was measured to cost on this machine (not the
    Python transport's call), and the run's token period is held to it as above."""
    prog = ckeir.compile(ROOT / "specs" / "mha.cke", backend="reference")
    out = run_local(prog, [1, 2, 3], 12, links=SLOW)
    st = out["stats"]
    decoded = st["generated_tokens"] - 1
    pred = run_prediction(prog, st["prompt_tokens"] + decoded // 2, SLOW)
    assert pred.basis["collectives"] == "native (one call per token)"
    first = out["ranks"][0]
    natives = [e for e in first["events"] if e[0] == "native"]
    assert len(natives) == 1 + decoded  # prefill, then one call per token
    collectives = [e for e in first["events"] if e[0] in ("allreduce", "allgather")]
    per_token = len(collectives) // (1 + decoded)
    assert set(pred.basis["collective_seconds"]) and per_token == 2 * 2 + 1
    assert all(0 < s < SLOW.default.latency for s in pred.basis["collective_seconds"].values())
    period = min(b[3] - a[3] for a, b in zip(natives[1:], natives[2:], strict=False))
    assert 0.85 <= period / pred.decode_seconds_per_token <= 1.5, (period, pred.basis)
