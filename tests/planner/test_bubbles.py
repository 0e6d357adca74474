"""The bubbles of a pipelined decode, with and without micro-batches in flight
(`planner.bubbles`), and `ckec plan` showing both for a batched pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import ckec

import ckeir
from ckeir.planner import bubbles
from ckeir.planner.predict import Prediction
from ckeir.reports.plan import plan_report

ROOT = Path(__file__).resolve().parents[2]
PIPE4 = ROOT / "specs" / "tiny-pipeline-batch4.cke"  # 2 stages of one node, batch 4


def prediction(latency: float, stages: tuple[float, ...]) -> Prediction:
    return Prediction(latency, stages, {}, {}, (), {}, {})


def test_one_step_of_the_whole_batch_leaves_each_stage_idle_for_the_others():
    b = bubbles.one_batch(prediction(4.2e-3, (1e-3, 3e-3)), batch=4)
    assert (b.micro_batches, b.rows, b.period) == (1, 4, 4.2e-3)
    assert b.idle == pytest.approx((3.2e-3, 1.2e-3))
    assert b.tokens_per_second == pytest.approx(4 / 4.2e-3)


def test_micro_batches_in_flight_fill_the_busiest_stage():
    # two micro-batches of 2 rows: stage times 0.6 and 1.8 ms, 2.6 ms to go through both
    b = bubbles.in_flight(prediction(2.6e-3, (0.6e-3, 1.8e-3)), batch=4, m=2)
    assert b.busy == pytest.approx((1.2e-3, 3.6e-3))
    assert b.period == pytest.approx(3.6e-3)  # stage 1 works all the time
    assert b.idle == pytest.approx((2.4e-3, 0.0))
    assert b.idle_fraction(1) == 0.0


def test_a_micro_batch_that_cannot_fill_the_stages_waits_for_its_way_round():
    # fast stages, a slow link: 5 ms to go round, 2 x 1 ms of work per stage
    b = bubbles.in_flight(prediction(5e-3, (1e-3, 1e-3)), batch=2, m=2)
    assert b.period == 5e-3 and b.idle == pytest.approx((3e-3, 3e-3))


@pytest.mark.parametrize(("stages", "batch", "want"), [(2, 4, (2, 2)), (2, 1, (1, 1)),
                                                       (3, 4, (3, 2)), (4, 2, (2, 1))])  # fmt: skip
def test_as_many_micro_batches_as_stages_when_the_batch_has_the_rows(stages, batch, want):
    assert bubbles.micro_batches(stages, batch) == want


def test_plan_report_gives_a_batched_pipeline_both_periods():
    report = plan_report(ckeir.compile(PIPE4, backend="reference"))
    b = report["phases"]["decode"]["bubbles"]
    one, fly = b["one_batch"], b["micro_batches"]
    assert (one["micro_batches"], one["rows"], fly["micro_batches"], fly["rows"]) == (1, 4, 2, 2)
    assert len(one["busy_seconds"]) == len(fly["idle_seconds"]) == 2
    assert one["period_seconds"] == report["phases"]["decode"]["predicted_seconds"]
    assert "bubbles" not in report["phases"]["prefill"]
    shorter = 2 if fly["period_seconds"] < one["period_seconds"] else 1
    assert b["in_flight"] == shorter


def test_ckec_plan_prints_the_two_periods():
    r = ckec("plan", PIPE4, env={"COLUMNS": "160"})
    assert r.returncode == 0, r.stderr
    assert "decode bubbles per period" in r.stdout
    assert "one step of 4 rows: busy / idle" in r.stdout
    assert "2 micro-batches of 2 rows in flight: busy / idle" in r.stdout
